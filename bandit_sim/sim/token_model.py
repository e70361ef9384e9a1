"""The seam between the hierarchical token model and the routing Worlds.

`fit_token_model(rd)` fits the NumPyro model (SVI) on the training split; `predict_grid` turns its posterior
predictive into the (N, K) arrays a World prices: the mean output tokens (capped at the model's maximum length,
see `hierarchical.predictive`) and the total predictive standard deviation
sqrt(aleatoric + epistemic variance) in tokens. A model absent from the fit is predicted from its family's prior
(or the global prior when asked), so a new model's cost is known, with honest uncertainty, before it answers once.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from bandit_sim.data.features import prompt_features
from bandit_sim.data.schema import RoutingData
from bandit_sim.sim.world import pivot_index
from hierarchical.fit import FitConfig, fit_svi
from hierarchical.predictive import predict

__all__ = ["TokenFit", "fit_token_model", "predict_grid", "predict_for_splits"]

# fits made in this process, by (dataset name, seed, excluded models, quick): `bandit-sim run` fits each once
_FITS: dict[tuple, "TokenFit"] = {}


class TokenFit:
    """A fitted token posterior plus the model/family index maps used to fit it."""

    def __init__(self, post, models: list[str], families: list[str], seconds: float):
        self.post = post
        self.models = list(models)
        self.families = list(families)
        self.seconds = seconds

    def model_index(self, model: str) -> int:
        return self.models.index(model) if model in self.models else -1

    def family_index(self, family: str) -> int:
        return self.families.index(family) if family in self.families else -1


def fit_token_model(rd: RoutingData, *, seed: int = 0, exclude_models=(), quick: bool = False,
                    progress: bool = False) -> TokenFit:
    """Fit the hierarchical token model on the training split (optionally without some models).

    Args:
      rd: routing data.
      seed: SVI seed.
      exclude_models: models left out of the fit (cold start: they get their family's prior).
      quick: fewer SVI steps (smoke tests).
      progress: show the SVI progress bar.
    Returns:
      TokenFit.
    """
    cache_key = (rd.name, len(rd.table), seed, tuple(sorted(exclude_models)), quick)
    if cache_key in _FITS:
        return _FITS[cache_key]
    t0 = time.perf_counter()
    train = rd.table[(rd.table["split"] == "train") & ~rd.table["model"].isin(list(exclude_models))]
    models = sorted(train["model"].unique())
    families = sorted(rd.table["family"].unique())
    fam_of = train.groupby("model")["family"].first()
    pids = train["prompt_id"].unique()
    feats = prompt_features(train, pids)
    row = {p: i for i, p in enumerate(pids)}
    x = feats[train["prompt_id"].map(row).to_numpy()]
    m_idx = train["model"].map({m: i for i, m in enumerate(models)}).to_numpy()
    fam = np.array([families.index(fam_of[m]) for m in models])
    cfg = FitConfig(num_steps=400, min_steps=200, chunk=100, num_samples=100) if quick else FitConfig(num_samples=200)
    post = fit_svi(x, m_idx, fam, train["output_tokens"].to_numpy(float), n_families=len(families),
                   config=cfg, seed=seed, progress=progress)
    fit = TokenFit(post, models, families, time.perf_counter() - t0)
    _FITS[cache_key] = fit
    return fit


def predict_grid(fit: TokenFit, rd: RoutingData, split: str, *, prior: dict[str, str] | None = None,
                 seed: int = 0, columns=None) -> tuple[np.ndarray, np.ndarray]:
    """Predicted output tokens (mean, sd) for every (query, model) of a split's World.

    Args:
      fit: TokenFit.
      rd: routing data.
      split: "train" | "val" | "test".
      prior: for models absent from the fit, model -> "family" (default) or "global".
      seed: key of the predictive draws.
      columns: optional subset of the split's models (default all, in pivot order).
    Returns:
      (mean (N, K), sd (N, K)) float64 in tokens, rows/columns in `pivot_index(rd.table, split)` order
      (K = len(columns) when given, in that order).
    """
    prompt_ids, models = pivot_index(rd.table, split)
    if columns is not None:
        unknown = [m for m in columns if m not in models]
        if unknown:
            raise ValueError(f"predict_grid: models {unknown} are not in the {split} split")
        models = list(columns)
    feats = prompt_features(rd.table, prompt_ids)
    n, k = len(prompt_ids), len(models)
    fam_of = rd.table.groupby("model")["family"].first()
    prior = prior or {}
    m_idx = np.array([fit.model_index(m) for m in models])
    f_idx = np.array([-1 if prior.get(m) == "global" else fit.family_index(fam_of[m]) for m in models])
    x = np.repeat(feats, k, axis=0)
    pred = predict(fit.post, x, np.tile(m_idx, n), np.tile(f_idx, n), key=jax.random.key(seed))
    mean = np.asarray(pred.mean, np.float64).reshape(n, k)
    sd = np.sqrt(np.asarray(pred.var_tokens_total, np.float64)).reshape(n, k)
    return mean, sd


def predict_for_splits(rd: RoutingData, splits, *, seed: int = 0, quick: bool = False):
    """Fit on train and predict the (mean, sd) grids of each split.

    Returns:
      ({split: (mean, sd)}, description, {"fit_seconds": ..., "svi": meta})
    """
    fit = fit_token_model(rd, seed=seed, quick=quick)
    preds = {s: predict_grid(fit, rd, s, seed=seed) for s in splits}
    desc = ("hierarchical token model (NumPyro SVI on the training split): mean of the capped predictive, "
            "sd = sqrt(aleatoric + epistemic variance)")
    return preds, desc, {"fit_seconds": fit.seconds, "svi": dict(fit.post.meta)}
