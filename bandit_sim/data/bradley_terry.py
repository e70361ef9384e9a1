"""Bradley-Terry strengths from pairwise preferences, per category, shrunk toward a global fit.

Model (all on the logit scale). For a comparison of model a against model b in category c,

    P(a beats b) = sigmoid(s[c, a] - s[c, b]),

with a tie counted as half a win for each side (the target y is 1, 0.5 or 0, and the loss is the
binary cross-entropy, which is the same as one half-weighted win for each side). Fitting is MAP:

    global:    s_g = argmin  sum_i w_i * BCE(y_i, s[a_i] - s[b_i]) + l2_global / 2 * ||s||^2
    category:  s_c = argmin  sum_{i in c} w_i * BCE(...)            + l2_category / 2 * ||s - s_g||^2

i.e. an L2-regularised logistic regression without intercept on the design row e_a - e_b; the
category penalty is a Gaussian prior centred on the global strengths (sd = 1/sqrt(l2_category)),
so a category with few comparisons keeps close to the global strengths and one with none equals them.
Strengths are identified only up to a shift; the ridge pins it and we report `quality` as
P(model beats an average model) = sigmoid(s[c, k] - mean_k s[c, k]), which is shift-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy.special import expit, log_expit

__all__ = [
    "BradleyTerryModel",
    "bt_negative_log_posterior",
    "fit_bradley_terry",
    "fit_bradley_terry_by_category",
]


def _check_pairs(idx_a: np.ndarray, idx_b: np.ndarray, score_a: np.ndarray, n_models: int,
                 weights: np.ndarray | None) -> np.ndarray:
    if not (idx_a.shape == idx_b.shape == score_a.shape) or idx_a.ndim != 1:
        raise ValueError(
            f"idx_a, idx_b and score_a must be 1-D arrays of one length; got shapes "
            f"{idx_a.shape}, {idx_b.shape}, {score_a.shape}")
    if n_models <= 0:
        raise ValueError(f"n_models must be positive, got {n_models}")
    for name, idx in (("idx_a", idx_a), ("idx_b", idx_b)):
        bad = np.flatnonzero((idx < 0) | (idx >= n_models))
        if bad.size:
            raise ValueError(f"{name} has indices outside [0, {n_models}) at positions {bad[:5].tolist()}")
    bad = np.flatnonzero(~np.isfinite(score_a) | (score_a < 0) | (score_a > 1))
    if bad.size:
        raise ValueError(f"score_a must lie in [0, 1]; bad values at positions {bad[:5].tolist()}")
    if weights is None:
        return np.ones(idx_a.shape, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != idx_a.shape or np.any(~np.isfinite(weights) | (weights < 0)):
        raise ValueError("weights must be finite, non-negative and of the same length as idx_a")
    return weights


def bt_negative_log_posterior(strength: np.ndarray, idx_a: np.ndarray, idx_b: np.ndarray,
                              score_a: np.ndarray, weights: np.ndarray, l2: float,
                              prior_mean: np.ndarray) -> tuple[float, np.ndarray]:
    """Penalised Bradley-Terry loss and its gradient (the objective `fit_bradley_terry` minimises).

    Args:
        strength: (K,) float64 strengths.
        idx_a, idx_b: (M,) int model indices of each comparison.
        score_a: (M,) float in [0, 1]: 1 a won, 0 b won, 0.5 tie.
        weights: (M,) float non-negative comparison weights.
        l2: ridge strength toward `prior_mean`.
        prior_mean: (K,) float64 prior centre.

    Returns:
        (loss, grad) with grad of shape (K,).
    """
    d = strength[idx_a] - strength[idx_b]
    loss = -np.sum(weights * (score_a * log_expit(d) + (1.0 - score_a) * log_expit(-d)))
    dev = strength - prior_mean
    loss += 0.5 * l2 * float(dev @ dev)
    g = weights * (expit(d) - score_a)  # d loss / d d_i
    k = strength.shape[0]
    grad = np.bincount(idx_a, g, minlength=k) - np.bincount(idx_b, g, minlength=k) + l2 * dev
    return float(loss), grad


def _hessian(strength: np.ndarray, idx_a: np.ndarray, idx_b: np.ndarray, weights: np.ndarray,
             l2: float) -> np.ndarray:
    k = strength.shape[0]
    p = expit(strength[idx_a] - strength[idx_b])
    h = weights * p * (1.0 - p)
    hess = np.zeros((k, k))
    np.add.at(hess, (idx_a, idx_a), h)
    np.add.at(hess, (idx_b, idx_b), h)
    np.add.at(hess, (idx_a, idx_b), -h)
    np.add.at(hess, (idx_b, idx_a), -h)
    hess[np.diag_indices(k)] += l2
    return hess


def fit_bradley_terry(idx_a: np.ndarray, idx_b: np.ndarray, score_a: np.ndarray, n_models: int, *,
                      l2: float = 1.0, prior_mean: np.ndarray | None = None,
                      weights: np.ndarray | None = None, return_se: bool = False):
    """Fit Bradley-Terry strengths by L2-regularised logistic regression (L-BFGS, exact gradient).

    Args:
        idx_a, idx_b: (M,) int model indices in [0, n_models).
        score_a: (M,) float: 1 if a won, 0 if b won, 0.5 for a tie.
        n_models: K, the number of models.
        l2: ridge strength toward `prior_mean` (> 0 keeps the fit identified).
        prior_mean: (K,) prior centre; zeros when None.
        weights: (M,) optional comparison weights.
        return_se: also return Laplace standard errors (sqrt of the inverse Hessian's diagonal).

    Returns:
        (K,) float64 strengths, or (strengths, se) with se (K,) float64 when `return_se`.
    """
    idx_a = np.asarray(idx_a, dtype=np.int64)
    idx_b = np.asarray(idx_b, dtype=np.int64)
    score_a = np.asarray(score_a, dtype=np.float64)
    w = _check_pairs(idx_a, idx_b, score_a, n_models, weights)
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0 (it identifies the strengths' shift), got {l2}")
    prior = np.zeros(n_models) if prior_mean is None else np.asarray(prior_mean, dtype=np.float64)
    if prior.shape != (n_models,):
        raise ValueError(f"prior_mean must have shape ({n_models},), got {prior.shape}")
    res = optimize.minimize(bt_negative_log_posterior, prior.copy(), jac=True, method="L-BFGS-B",
                            args=(idx_a, idx_b, score_a, w, float(l2), prior),
                            options={"maxiter": 2000, "gtol": 1e-9, "ftol": 1e-14})
    _, grad = bt_negative_log_posterior(res.x, idx_a, idx_b, score_a, w, float(l2), prior)
    scale = max(1.0, float(w.sum()))
    if not np.all(np.isfinite(res.x)) or np.max(np.abs(grad)) > 1e-5 * scale:
        raise RuntimeError(f"Bradley-Terry fit did not converge: {res.message} (max |grad| = "
                           f"{np.max(np.abs(grad)):.3g})")
    if not return_se:
        return res.x
    cov = np.linalg.inv(_hessian(res.x, idx_a, idx_b, w, float(l2)))
    return res.x, np.sqrt(np.clip(np.diag(cov), 0.0, None))


@dataclass(frozen=True)
class BradleyTerryModel:
    """Per-category Bradley-Terry strengths shrunk toward a global fit (see the module docstring)."""

    models: tuple[str, ...]          # K model names
    categories: tuple[str, ...]      # C category names
    global_strength: np.ndarray      # (K,) float64 logit strengths
    global_se: np.ndarray            # (K,) float64 Laplace standard errors
    category_strength: np.ndarray    # (C, K) float64
    category_se: np.ndarray          # (C, K) float64
    n_comparisons: np.ndarray        # (C, K) int64 training comparisons per category and model
    l2_global: float
    l2_category: float

    def quality_table(self) -> np.ndarray:
        """P(model beats an average model of its category), per category and model.

        Returns:
            (C, K) float64 in (0, 1): sigmoid(s[c, k] - mean_k s[c, k]).
        """
        s = self.category_strength
        return expit(s - s.mean(axis=1, keepdims=True))

    def quality(self, categories: Sequence[str] | np.ndarray, models: Sequence[str] | np.ndarray) -> np.ndarray:
        """Look up quality for N (category, model) pairs.

        Args:
            categories: (N,) category names (all must be in `self.categories`).
            models: (N,) model names (all must be in `self.models`).

        Returns:
            (N,) float64 quality in (0, 1).
        """
        ci = _lookup(self.categories, categories, "category")
        mi = _lookup(self.models, models, "model")
        return self.quality_table()[ci, mi]

    def prob_beats(self, category: str, model_a: str, model_b: str) -> float:
        """P(model_a beats model_b) in one category (a tie counted as half)."""
        c = self.categories.index(category)
        a, b = self.models.index(model_a), self.models.index(model_b)
        return float(expit(self.category_strength[c, a] - self.category_strength[c, b]))

    def to_dict(self) -> dict:
        """JSON-ready dict (lists and floats) of every field."""
        return {
            "models": list(self.models), "categories": list(self.categories),
            "global_strength": self.global_strength.tolist(), "global_se": self.global_se.tolist(),
            "category_strength": self.category_strength.tolist(), "category_se": self.category_se.tolist(),
            "n_comparisons": self.n_comparisons.tolist(),
            "l2_global": self.l2_global, "l2_category": self.l2_category,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BradleyTerryModel":
        """Inverse of `to_dict`."""
        return cls(
            models=tuple(d["models"]), categories=tuple(d["categories"]),
            global_strength=np.asarray(d["global_strength"], dtype=np.float64),
            global_se=np.asarray(d["global_se"], dtype=np.float64),
            category_strength=np.asarray(d["category_strength"], dtype=np.float64).reshape(
                len(d["categories"]), len(d["models"])),
            category_se=np.asarray(d["category_se"], dtype=np.float64).reshape(
                len(d["categories"]), len(d["models"])),
            n_comparisons=np.asarray(d["n_comparisons"], dtype=np.int64).reshape(
                len(d["categories"]), len(d["models"])),
            l2_global=float(d["l2_global"]), l2_category=float(d["l2_category"]),
        )


def _lookup(names: tuple[str, ...], values, what: str) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    values = np.asarray(values, dtype=object)
    out = np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=values.shape[0])
    bad = np.flatnonzero(out < 0)
    if bad.size:
        raise KeyError(f"unknown {what} {values[bad[0]]!r} at position {int(bad[0])}; known: {list(names)}")
    return out


def fit_bradley_terry_by_category(model_a: Sequence[str], model_b: Sequence[str], score_a: np.ndarray,
                                  category: Sequence[str], *, models: Sequence[str] | None = None,
                                  categories: Sequence[str] | None = None, l2_global: float = 1.0,
                                  l2_category: float = 4.0) -> BradleyTerryModel:
    """Fit a global Bradley-Terry model, then one per category shrunk toward it.

    Args:
        model_a, model_b: (M,) model names of each comparison (a model never meets itself).
        score_a: (M,) float: 1 if a won, 0 if b won, 0.5 for a tie.
        category: (M,) category of each comparison.
        models: the K models to fit (default: sorted union of model_a and model_b); comparisons
            involving any other model raise.
        categories: the C categories to report (default: sorted unique `category`); a listed
            category without comparisons gets the global strengths.
        l2_global: ridge toward 0 for the global strengths (prior sd 1/sqrt(l2_global) logits).
        l2_category: shrinkage toward the global strengths within a category.

    Returns:
        A fitted `BradleyTerryModel`.
    """
    model_a = np.asarray(model_a, dtype=object)
    model_b = np.asarray(model_b, dtype=object)
    category = np.asarray(category, dtype=object)
    score_a = np.asarray(score_a, dtype=np.float64)
    if not (model_a.shape == model_b.shape == category.shape == score_a.shape):
        raise ValueError("model_a, model_b, score_a and category must have one length")
    if model_a.size == 0:
        raise ValueError("no comparisons to fit")
    models = tuple(sorted(set(model_a) | set(model_b))) if models is None else tuple(models)
    categories = tuple(sorted(set(category))) if categories is None else tuple(categories)
    ia = _lookup(models, model_a, "model")
    ib = _lookup(models, model_b, "model")
    ci = _lookup(categories, category, "category")
    same = np.flatnonzero(ia == ib)
    if same.size:
        raise ValueError(f"a model is compared with itself at positions {same[:5].tolist()}")
    k, c = len(models), len(categories)

    s_global, se_global = fit_bradley_terry(ia, ib, score_a, k, l2=l2_global, return_se=True)
    s_cat = np.empty((c, k))
    se_cat = np.empty((c, k))
    n_cmp = np.zeros((c, k), dtype=np.int64)
    np.add.at(n_cmp, (ci, ia), 1)
    np.add.at(n_cmp, (ci, ib), 1)
    for j in range(c):  # C is small (a handful of topics); each fit is vectorised over comparisons
        m = ci == j
        if not m.any():
            s_cat[j] = s_global
            se_cat[j] = 1.0 / np.sqrt(l2_category)
            continue
        s_cat[j], se_cat[j] = fit_bradley_terry(ia[m], ib[m], score_a[m], k, l2=l2_category,
                                                prior_mean=s_global, return_se=True)
    return BradleyTerryModel(models=models, categories=categories, global_strength=s_global,
                             global_se=se_global, category_strength=s_cat, category_se=se_cat,
                             n_comparisons=n_cmp, l2_global=float(l2_global),
                             l2_category=float(l2_category))
