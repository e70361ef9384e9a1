"""Output-token forecasts for the live router: the fitted hierarchical posterior, or a per-model stand-in.

Both forecasters answer the same question for a batch of queries and a list of models: the predicted output
tokens (mean), their predictive standard deviation, and a central 80% interval (10% and 90% quantiles). Both can
take a model they have never seen (`add_model`), predicting it from its family, and both serialise to plain arrays
plus JSON (see `bandit_sim.router.state`).

- `PosteriorTokens` wraps a `hierarchical.TokenPosterior`: mean of the capped predictive, sd = sqrt(aleatoric +
  epistemic variance), quantiles of the predictive samples (`hierarchical.predict`); a new model is appended with
  `hierarchical.update.add_new_model(n = 0)`, i.e. exactly its family's prior (or the global prior for a new family).
- `StandInTokens` is the simulator's stand-in (`world_from_table` without `pred`): per model the training median of
  output tokens as the mean and the robust spread (q75 - q25) / 1.349 as the sd, plus the 10%/90% quantiles; a new
  model gets the average of its family's statistics (of all models when its family is unknown). It ignores the
  query text, so it costs nothing per query and reproduces the simulator's predicted costs bit for bit.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from hierarchical.features import Standardizer
from hierarchical.fit import TokenPosterior
from hierarchical.predictive import predict
from hierarchical.update import add_new_model

__all__ = ["TokenForecast", "StandInTokens", "PosteriorTokens", "tokens_from_state"]


class TokenForecast(NamedTuple):
    """Predicted output tokens per (query, model); float64 tokens."""

    mean: np.ndarray  # (B, M)
    sd: np.ndarray  # (B, M) predictive standard deviation
    lo: np.ndarray  # (B, M) 10% quantile
    hi: np.ndarray  # (B, M) 90% quantile


def _check_models(known: Sequence[str], models: Sequence[str], who: str) -> None:
    missing = [m for m in models if m not in known]
    if missing:
        raise KeyError(f"{who}: no token forecast for models {missing}; add them with add_model first")


class StandInTokens:
    """Per-model token statistics from a table's training split (the simulator's stand-in forecast)."""

    kind = "stand-in"
    needs_features = False

    def __init__(self, stats: dict[str, np.ndarray], families: dict[str, str]):
        """Per-model statistics and families.

        Args:
          stats: model -> (median, sd, q10, q90) of its output tokens (finite, >= 0).
          families: model -> family name, for every model in `stats` (`add_model` pools a family's statistics).
        Raises:
          ValueError: a model without a family, or statistics that are not 4 finite non-negative numbers (named).
        """
        missing = [m for m in stats if m not in families]
        if missing:
            raise ValueError(f"StandInTokens: no family given for models {missing}")
        self.stats = {}
        for m, v in stats.items():
            a = np.asarray(v, np.float64)
            if a.size != 4 or not np.all(np.isfinite(a)) or np.any(a < 0):
                raise ValueError(f"StandInTokens: model {m!r}: token statistics must be 4 finite numbers >= 0 "
                                 f"(median, sd, q10, q90), got {a.tolist()}")
            self.stats[m] = a.reshape(4)
        self.families = {m: str(f) for m, f in families.items()}

    @classmethod
    def from_table(cls, table, split: str | None = "train") -> "StandInTokens":
        """Statistics of every model's output tokens on a split of a tidy table.

        Args:
          table: tidy routing table (`load_data(...).table`).
          split: rows used ("train" default, as the simulator's stand-in; None = all rows).
        Returns:
          StandInTokens.
        """
        t = table if split is None else table[table["split"] == split]
        if len(t) == 0:
            raise ValueError(f"StandInTokens.from_table: no rows with split == {split!r}")
        g = t.groupby("model")["output_tokens"]
        # the same pandas reductions as world_from_table's stand-in, so predicted costs agree bit for bit
        med, q25, q75 = g.median(), g.quantile(0.25), g.quantile(0.75)
        q10, q90 = g.quantile(0.10), g.quantile(0.90)
        fam = t.groupby("model")["family"].first()
        stats = {m: np.array([med[m], (q75[m] - q25[m]) / 1.349, q10[m], q90[m]], np.float64) for m in med.index}
        return cls(stats, {m: str(fam[m]) for m in med.index})

    def predict(self, features: np.ndarray | None, models: Sequence[str]) -> TokenForecast:
        """Forecast for B queries and M models (the same row for every query).

        Args:
          features: (B, F) query features or None (only B is used).
          models: M model names.
        Returns:
          TokenForecast of (B, M) arrays.
        """
        _check_models(self.stats, models, "StandInTokens.predict")
        b = 1 if features is None else int(np.shape(features)[0])
        s = np.stack([self.stats[m] for m in models], 0) if models else np.zeros((0, 4))  # (M, 4)
        rows = [np.broadcast_to(s[:, j], (b, len(models))) for j in range(4)]
        return TokenForecast(*rows)

    def add_model(self, name: str, family: str) -> None:
        """Give `name` the mean statistics of its family's models (of all models if the family is new)."""
        rel = [m for m, f in self.families.items() if f == family and m != name]
        pool = rel or [m for m in self.stats if m != name]
        if not pool:
            raise ValueError("StandInTokens.add_model: no model to take a prior from")
        self.stats[name] = np.mean([self.stats[m] for m in pool], axis=0)
        self.families[name] = family

    def remove_model(self, name: str) -> None:
        """Forget `name` (its family statistics stop counting)."""
        self.stats.pop(name, None)
        self.families.pop(name, None)

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON meta) for persistence."""
        models = sorted(self.stats)
        arr = np.stack([self.stats[m] for m in models], 0) if models else np.zeros((0, 4))
        return {"stats": arr}, {"models": models, "families": [self.families[m] for m in models]}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "StandInTokens":
        """Inverse of `to_state`."""
        stats = arrays["stats"]
        if stats.shape != (len(meta["models"]), 4):
            raise ValueError(f"stand-in token stats have shape {stats.shape}, expected ({len(meta['models'])}, 4)")
        if len(meta["families"]) != len(meta["models"]):
            raise ValueError(f"stand-in token state: {len(meta['families'])} families for {len(meta['models'])} models")
        return cls(dict(zip(meta["models"], stats)), dict(zip(meta["models"], meta["families"])))


class PosteriorTokens:
    """Forecasts from a fitted hierarchical token posterior (`hierarchical.predict`)."""

    kind = "hierarchical"
    needs_features = True

    def __init__(self, post, models: Sequence[str], families: Sequence[str], *, seed: int = 0, per_draw: int = 4):
        """Wrap a posterior.

        Args:
          post: hierarchical.TokenPosterior with K models and G families.
          models: the K model names in the posterior's index order.
          families: the G family names in the posterior's family index order.
          seed: key of the predictive Monte Carlo (the same for every call: forecasts are deterministic).
          per_draw: predictive samples per posterior draw.
        """
        if len(models) != post.n_models:
            raise ValueError(f"PosteriorTokens: {len(models)} model names for a posterior of {post.n_models} models")
        if len(families) != post.n_families:
            raise ValueError(f"PosteriorTokens: {len(families)} family names for {post.n_families} families")
        self.post = post
        self.models = list(models)
        self.families = list(families)
        self.seed = int(seed)
        self.per_draw = int(per_draw)

    @classmethod
    def from_fit(cls, fit, **kw) -> "PosteriorTokens":
        """From a `bandit_sim.sim.token_model.TokenFit` (`fit_token_model(rd)`)."""
        return cls(fit.post, fit.models, fit.families, **kw)

    def predict(self, features: np.ndarray, models: Sequence[str]) -> TokenForecast:
        """Forecast for B queries and M models in one call of `hierarchical.predict`.

        Args:
          features: (B, F) raw query features (`hierarchical.query_features`).
          models: M model names (each in the posterior).
        Returns:
          TokenForecast of (B, M) arrays.
        """
        _check_models(self.models, models, "PosteriorTokens.predict")
        x = np.asarray(features, np.float32)
        b, m = x.shape[0], len(models)
        idx = np.array([self.models.index(name) for name in models], np.int32)
        p = predict(self.post, np.repeat(x, m, axis=0), np.tile(idx, b), key=jax.random.key(self.seed),
                    per_draw=self.per_draw, probs=(0.1, 0.9))
        sd = np.sqrt(np.asarray(p.var_tokens_total, np.float64))
        q = np.asarray(p.quantiles, np.float64)
        shape = (b, m)
        return TokenForecast(np.asarray(p.mean, np.float64).reshape(shape), sd.reshape(shape),
                             q[:, 0].reshape(shape), q[:, 1].reshape(shape))

    def add_model(self, name: str, family: str) -> None:
        """Append `name` with its family's prior (global prior for an unknown family): add_new_model with n = 0."""
        if name in self.models:
            return
        fam = self.families.index(family) if family in self.families else None
        f = self.post.standardizer.mean.shape[0]
        self.post = add_new_model(self.post, np.zeros((0, f)), np.zeros(0), fam, seed=self.seed + len(self.models))
        self.models.append(name)

    def remove_model(self, name: str) -> None:
        """Keep the posterior (its index stays valid); the router simply stops asking for `name`."""

    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON meta) for persistence: posterior draws, standardiser and family index."""
        arrays = {f"draws/{k}": np.asarray(v) for k, v in self.post.draws.items()}
        arrays.update(std_mean=np.asarray(self.post.standardizer.mean), std_scale=np.asarray(self.post.standardizer.scale),
                      family_of_model=np.asarray(self.post.family_of_model))
        meta = dict(models=self.models, families=self.families, seed=self.seed, per_draw=self.per_draw,
                    feature_names=list(self.post.feature_names))
        return arrays, meta

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "PosteriorTokens":
        """Inverse of `to_state`."""
        post = TokenPosterior(draws={k[6:]: v for k, v in arrays.items() if k.startswith("draws/")},
                              standardizer=Standardizer(arrays["std_mean"], arrays["std_scale"]),
                              family_of_model=arrays["family_of_model"],
                              feature_names=tuple(meta["feature_names"]))
        return cls(post, meta["models"], meta["families"], seed=meta["seed"], per_draw=meta["per_draw"])


_KINDS = {c.kind: c for c in (StandInTokens, PosteriorTokens)}


def tokens_from_state(kind: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]):
    """Rebuild a forecaster saved with `to_state` (kind is its `kind` attribute)."""
    if kind not in _KINDS:
        raise ValueError(f"unknown token forecaster kind {kind!r}; known: {sorted(_KINDS)}")
    return _KINDS[kind].from_state(arrays, meta)
