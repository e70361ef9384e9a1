"""Scoring shared by the token model and its baselines: MAE, interval coverage, CRPS, paired tests, ArviZ summary."""

from __future__ import annotations

import numpy as np

from .fit import TokenPosterior
from .predictive import DEFAULT_PROBS, crps_from_samples

__all__ = ["score", "coverage", "paired_test", "arviz_summary", "LEVELS"]

# central interval level -> (index of lower, index of upper) quantile in DEFAULT_PROBS
LEVELS = {"50": (0.25, 0.75), "80": (0.1, 0.9), "95": (0.025, 0.975)}


def coverage(y: np.ndarray, quantiles: np.ndarray, probs=DEFAULT_PROBS) -> dict[str, float]:
    """Empirical coverage of the central 50/80/95% intervals.

    Args:
      y: (N,) observed tokens.
      quantiles: (N, Q) predictive quantiles at `probs`.
      probs: the Q levels (must contain each interval's ends).
    Returns:
      {"50": share, "80": share, "95": share}.
    """
    probs = [round(float(p), 6) for p in probs]
    out = {}
    for name, (lo, hi) in LEVELS.items():
        a, b = quantiles[:, probs.index(lo)], quantiles[:, probs.index(hi)]
        out[name] = float(np.mean((y >= a) & (y <= b)))
    return out


def score(y: np.ndarray, point: np.ndarray, quantiles: np.ndarray | None = None,
          samples: np.ndarray | None = None, crps: np.ndarray | None = None) -> dict:
    """MAE, coverage and CRPS of one method on one set of rows (None where the method has no distribution).

    Args:
      y: (N,) observed tokens.
      point: (N,) point predictions in tokens (the predictive median for probabilistic methods).
      quantiles: optional (N, Q) at DEFAULT_PROBS.
      samples: optional (N, M) predictive samples (for CRPS, unless `crps` is given).
      crps: optional (N,) per-row CRPS already computed.
    Returns:
      {"mae": float, "coverage": {"50", "80", "95"} or None, "crps": float or None, "n": int}.
    Raises:
      ValueError: if y is empty, shapes differ, or a prediction is NaN.
    """
    y = np.asarray(y, np.float64).reshape(-1)
    point = np.asarray(point, np.float64).reshape(-1)
    if y.size == 0 or point.shape != y.shape:
        raise ValueError(f"score: y {y.shape} and point {point.shape} must be the same non-empty shape")
    if not np.all(np.isfinite(point)):
        raise ValueError("score: point predictions contain NaN/inf (method undefined for some rows)")
    cov = None if quantiles is None else coverage(y, np.asarray(quantiles))
    if crps is None and samples is not None:
        crps = np.asarray(crps_from_samples(samples, y))
    return {"mae": float(np.mean(np.abs(point - y))), "coverage": cov,
            "crps": None if crps is None else float(np.mean(crps)), "n": int(y.size)}


def paired_test(a: np.ndarray, b: np.ndarray) -> dict:
    """One-sided Wilcoxon signed-rank test that a < b, paired (e.g. per held-out model MAE).

    Args:
      a: (P,) errors of the method claimed better; b: (P,) errors of the other.
    Returns:
      {"test", "n_pairs", "p_value", "mean_diff", "share_a_better"} (p_value None with < 2 pairs).
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a - b
    p = None
    if d.size >= 2 and np.any(d != 0):
        p = float(wilcoxon(a, b, alternative="less").pvalue)
    return {"test": "Wilcoxon signed-rank, one-sided (a < b)", "n_pairs": int(d.size), "p_value": p,
            "mean_diff": float(d.mean()) if d.size else None,
            "share_a_better": float(np.mean(d < 0)) if d.size else None}


def arviz_summary(post: TokenPosterior, var_names=("mu_0", "tau_0", "tau_w", "mu_sig0", "s_sig0", "s_sig_w", "nu")):
    """ArviZ summary of the global parameters (one chain of posterior draws; r_hat/ESS are only meaningful for NUTS).

    Args:
      post: fitted posterior.
      var_names: parameters to summarise (vector ones get one row per feature: intercept first).
    Returns:
      pandas DataFrame from arviz.summary.
    """
    import arviz as az

    coords = {"coef": ["intercept", *post.feature_names]}
    posterior = {v: post.draws[v][None] for v in var_names}
    dims = {v: ["coef"] for v in var_names if post.draws[v].ndim == 2}
    idata = az.from_dict(posterior=posterior, coords=coords, dims=dims)
    kind = "all" if post.meta.get("method") == "nuts" else "stats"
    return az.summary(idata, kind=kind, round_to=3)
