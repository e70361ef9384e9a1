"""Baselines for the token model, scored by the same code (`hierarchical.evaluate.score`).

Each baseline returns a `BaselinePrediction`: a point prediction in tokens and, where the method has a predictive
distribution, quantiles at `DEFAULT_PROBS` and samples (for CRPS):

- ``bayesian_ridge_per_model``: sklearn BayesianRidge on log1p(tokens) per model (the research code's approach).
  Gaussian predictive in log space -> intervals and CRPS. Undefined for a model without training rows.
- ``pooled_ridge``: one sklearn Ridge on [features, model one-hot] in log space. Point prediction only (Ridge has
  no predictive distribution): coverage and CRPS are null. A model absent from training gets an all-zero one-hot.
- ``per_model_median``: the model's median training length; its empirical training distribution gives intervals
  and CRPS. Undefined for a model without training rows.
- ``global_median``: the median over all training rows, with the pooled empirical distribution.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.linear_model import BayesianRidge, Ridge

from .features import Standardizer
from .predictive import DEFAULT_PROBS

__all__ = ["BaselinePrediction", "BayesianRidgePerModel", "PooledRidge", "PerModelMedian", "GlobalMedian"]


class BaselinePrediction(NamedTuple):
    """Predictions of a baseline: rows it cannot predict are NaN."""

    point: np.ndarray  # (N,) tokens
    quantiles: np.ndarray | None  # (N, Q) tokens at DEFAULT_PROBS, or None
    samples: np.ndarray | None  # (N, M) tokens, or None


def _check(features, model_idx, tokens=None):
    x = np.asarray(features, np.float64)
    m = np.asarray(model_idx).reshape(-1)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, F) array, got shape {x.shape}")
    if m.shape[0] != x.shape[0]:
        raise ValueError(f"model_idx has {m.shape[0]} rows for {x.shape[0]} feature rows")
    if not np.all(np.isfinite(x)):
        r, c = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"NaN/inf feature at row {r}, column {c}")
    if tokens is not None:
        t = np.asarray(tokens, np.float64).reshape(-1)
        if t.shape[0] != x.shape[0] or not np.all(np.isfinite(t)) or np.any(t < 0):
            raise ValueError("tokens must be (N,) finite counts >= 0")
        return x, m.astype(np.int64), t
    return x, m.astype(np.int64)


def _empirical(values: np.ndarray, n_rows: int, n_samples: int, rng: np.random.Generator):
    q = np.quantile(values, DEFAULT_PROBS)
    samples = rng.choice(values, size=(n_rows, n_samples), replace=True).astype(np.float32)
    return np.broadcast_to(q, (n_rows, len(DEFAULT_PROBS))).copy(), samples


class BayesianRidgePerModel:
    """Per-model sklearn BayesianRidge on standardised features, target log1p(tokens)."""

    def __init__(self, n_samples: int = 400, seed: int = 0):
        self.n_samples, self.seed = n_samples, seed

    def fit(self, features, model_idx, tokens):
        """Fit one BayesianRidge per model.

        Args:
          features: (N, F) raw features; model_idx: (N,) int; tokens: (N,) tokens.
        Returns:
          self.
        """
        x, m, t = _check(features, model_idx, tokens)
        self.std_ = Standardizer.fit(x)
        z = self.std_.transform(x)
        self.models_ = {int(k): BayesianRidge().fit(z[m == k], np.log1p(t[m == k])) for k in np.unique(m)}
        return self

    def predict(self, features, model_idx) -> BaselinePrediction:
        """Gaussian predictive in log space per row (NaN for models without training rows).

        Args:
          features: (N, F) raw features; model_idx: (N,) int.
        Returns:
          BaselinePrediction with quantiles and samples.
        """
        from scipy.stats import norm

        x, m = _check(features, model_idx)
        z = self.std_.transform(x)
        mu = np.full(len(m), np.nan)
        sd = np.full(len(m), np.nan)
        for k in np.unique(m):
            if int(k) in self.models_:
                rows = m == k
                mu[rows], sd[rows] = self.models_[int(k)].predict(z[rows], return_std=True)
        q = np.expm1(mu[:, None] + sd[:, None] * norm.ppf(DEFAULT_PROBS)[None, :]).clip(0)
        rng = np.random.default_rng(self.seed)
        eps = rng.standard_normal((len(m), self.n_samples))
        samples = np.expm1(mu[:, None] + sd[:, None] * eps).clip(0).astype(np.float32)
        return BaselinePrediction(np.expm1(mu).clip(0), q, samples)


class PooledRidge:
    """One sklearn Ridge on [standardised features, model one-hot], target log1p(tokens); point prediction only."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, features, model_idx, tokens, n_models: int | None = None):
        """Fit the pooled ridge.

        Args:
          features: (N, F); model_idx: (N,) int; tokens: (N,); n_models: K (default max index + 1).
        Returns:
          self.
        """
        x, m, t = _check(features, model_idx, tokens)
        self.k_ = int(m.max()) + 1 if n_models is None else int(n_models)
        self.std_ = Standardizer.fit(x)
        self.ridge_ = Ridge(alpha=self.alpha).fit(self._design(x, m), np.log1p(t))
        return self

    def _design(self, x, m):
        onehot = np.zeros((len(m), self.k_))
        ok = (m >= 0) & (m < self.k_)
        onehot[np.flatnonzero(ok), m[ok]] = 1.0
        return np.concatenate([self.std_.transform(x), onehot], axis=1)

    def predict(self, features, model_idx) -> BaselinePrediction:
        """Point prediction expm1(ridge); a model index outside [0, K) gets an all-zero one-hot.

        Args:
          features: (N, F); model_idx: (N,) int.
        Returns:
          BaselinePrediction with quantiles = samples = None.
        """
        x, m = _check(features, model_idx)
        return BaselinePrediction(np.expm1(self.ridge_.predict(self._design(x, m))).clip(0), None, None)


class PerModelMedian:
    """Median training length of each model; its empirical distribution for intervals and CRPS."""

    def __init__(self, n_samples: int = 400, seed: int = 0):
        self.n_samples, self.seed = n_samples, seed

    def fit(self, features, model_idx, tokens):
        """Store each model's training lengths.

        Args:
          features: (N, F) (unused, checked); model_idx: (N,) int; tokens: (N,).
        Returns:
          self.
        """
        _, m, t = _check(features, model_idx, tokens)
        self.values_ = {int(k): t[m == k] for k in np.unique(m)}
        return self

    def predict(self, features, model_idx) -> BaselinePrediction:
        """Per-model median and empirical quantiles/samples (NaN for models without training rows).

        Args:
          features: (N, F); model_idx: (N,) int.
        Returns:
          BaselinePrediction.
        """
        _, m = _check(features, model_idx)
        rng = np.random.default_rng(self.seed)
        point = np.full(len(m), np.nan)
        q = np.full((len(m), len(DEFAULT_PROBS)), np.nan)
        s = np.full((len(m), self.n_samples), np.nan, np.float32)
        for k in np.unique(m):
            if int(k) in self.values_:
                rows = np.flatnonzero(m == k)
                v = self.values_[int(k)]
                point[rows] = np.median(v)
                q[rows], s[rows] = _empirical(v, len(rows), self.n_samples, rng)
        return BaselinePrediction(point, q, s)


class GlobalMedian:
    """Median of all training lengths; the pooled empirical distribution for intervals and CRPS."""

    def __init__(self, n_samples: int = 400, seed: int = 0):
        self.n_samples, self.seed = n_samples, seed

    def fit(self, features, model_idx, tokens):
        """Store all training lengths.

        Args:
          features: (N, F); model_idx: (N,); tokens: (N,).
        Returns:
          self.
        """
        _, _, t = _check(features, model_idx, tokens)
        self.values_ = t
        return self

    def predict(self, features, model_idx) -> BaselinePrediction:
        """Global median for every row.

        Args:
          features: (N, F); model_idx: (N,).
        Returns:
          BaselinePrediction.
        """
        _, m = _check(features, model_idx)
        q, s = _empirical(self.values_, len(m), self.n_samples, np.random.default_rng(self.seed))
        return BaselinePrediction(np.full(len(m), float(np.median(self.values_))), q, s)
