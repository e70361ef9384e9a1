"""Statistics across simulated episodes: bootstrap confidence intervals, paired tests, Holm correction.

Episodes of different policies share random streams (common random numbers: the same query order and the same
reward draws in episode e for every policy), so comparisons are *paired* by episode: the test is on the
per-episode differences d_e = a_e - b_e.

* :func:`bootstrap_ci` -- ``scipy.stats.bootstrap`` (BCa by default, percentile on request) with a fixed seed.
  A sample with no spread has the degenerate interval [x, x] (BCa is undefined there).
* :func:`paired_test` -- Wilcoxon signed-rank (``scipy.stats.wilcoxon``, zero differences dropped, "wilcox") or the
  paired t-test (``scipy.stats.ttest_rel``), two-sided; with the mean difference and its bootstrap 95% CI.
  All differences zero -> statistic 0, p = 1 (no evidence of a difference).
* :func:`holm` -- Holm (1979) step-down adjustment: sort p ascending, p~_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)).
"""

from __future__ import annotations

import warnings
from typing import Callable, Mapping, NamedTuple

import numpy as np
from scipy import stats as sps

__all__ = ["CI", "bootstrap_ci", "PairedTest", "paired_test", "holm", "compare_to_baselines"]


class CI(NamedTuple):
    """A point estimate with a confidence interval."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready dict."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def _as_1d(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size < 2:
        raise ValueError(f"{name} must be a 1-D array of >= 2 per-episode values, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a


def _no_spread(x: np.ndarray) -> bool:
    """True when the values are equal up to float rounding (BCa and t statistics are undefined there)."""
    return bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.max(np.abs(x)))))


def bootstrap_ci(
    samples: np.ndarray,
    statistic: Callable[..., np.ndarray] = np.mean,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    method: str = "BCa",
    seed: int = 0,
) -> CI:
    """Bootstrap confidence interval of a statistic of per-episode values.

    Args:
      samples: (E,) per-episode metric values.
      statistic: vectorised statistic ``f(x, axis=-1)`` (default: mean).
      confidence: confidence level.
      n_resamples: bootstrap resamples.
      method: "BCa", "percentile" or "basic".
      seed: RNG seed (fixed -> reproducible interval).

    Returns:
      CI(estimate = statistic(samples), low, high).
    """
    x = _as_1d(samples, "samples")
    est = float(statistic(x, axis=-1))
    if _no_spread(x):
        return CI(est, est, est)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # BCa on near-degenerate data; handled below
        res = sps.bootstrap(
            (x,),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa can fail on near-degenerate samples
        res = sps.bootstrap(
            (x,), statistic, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
            vectorized=True, rng=np.random.default_rng(seed),
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return CI(est, low, high)


class PairedTest(NamedTuple):
    """Result of a paired two-sided test of a vs b across episodes."""

    test: str  # "wilcoxon signed-rank" or "paired t"
    statistic: float
    p_value: float
    mean_diff: float  # mean of a - b
    ci_low: float  # bootstrap 95% CI of the mean difference
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, float | str | int]:
        """JSON-ready dict."""
        return dict(self._asdict())


def paired_test(a: np.ndarray, b: np.ndarray, test: str = "wilcoxon", seed: int = 0) -> PairedTest:
    """Two-sided paired test of per-episode values a vs b (episodes share random streams).

    Args:
      a: (E,) metric of policy A per episode; b: (E,) of policy B on the same episodes.
      test: "wilcoxon" (signed-rank, default) or "ttest" (paired t).
      seed: seed of the bootstrap CI of the mean difference.

    Returns:
      PairedTest(test, statistic, p_value, mean_diff, ci_low, ci_high, n).
    """
    a = _as_1d(a, "a")
    b = _as_1d(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same number of episodes, got {a.shape} and {b.shape}")
    d = a - b
    ci = bootstrap_ci(d, seed=seed)
    if test == "wilcoxon":
        name = "wilcoxon signed-rank"
        if np.all(d == 0):
            stat, p = 0.0, 1.0
        else:
            r = sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
            stat, p = float(r.statistic), float(r.pvalue)
    elif test == "ttest":
        name = "paired t"
        if _no_spread(d):
            # no spread: identical samples carry no evidence; a constant non-zero shift is certain
            m = float(np.mean(d))
            stat, p = (0.0, 1.0) if m == 0 else (float(np.sign(m) * np.inf), 0.0)
        else:
            r = sps.ttest_rel(a, b, alternative="two-sided")
            stat, p = float(r.statistic), float(r.pvalue)
    else:
        raise ValueError(f"test must be 'wilcoxon' or 'ttest', got {test!r}")
    return PairedTest(name, stat, p, ci.estimate, ci.low, ci.high, int(d.size))


def holm(p_values: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm step-down adjustment for a family of tests.

    Args:
      p_values: (M,) raw p-values.
      alpha: family-wise error rate.

    Returns:
      (adjusted p-values (M,), reject (M,) bool = adjusted <= alpha), in the input order.
    """
    p = np.asarray(p_values, dtype=np.float64).ravel()
    if p.size == 0:
        return p, np.zeros(0, dtype=bool)
    if np.any((p < 0) | (p > 1) | ~np.isfinite(p)):
        raise ValueError("p-values must be finite and in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj_sorted = np.maximum.accumulate(scaled)
    adj = np.empty(m)
    adj[order] = adj_sorted
    return adj, adj <= alpha


def compare_to_baselines(
    target: np.ndarray,
    baselines: Mapping[str, np.ndarray],
    test: str = "wilcoxon",
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, float | str | int | bool]]:
    """Paired test of one policy against each baseline, Holm-corrected across the baselines.

    Args:
      target: (E,) per-episode metric of the policy under study (e.g. Thompson's reward or regret).
      baselines: name -> (E,) the same metric of each baseline on the same episodes.
      test: "wilcoxon" or "ttest".
      alpha: family-wise error rate for ``reject``.
      seed: bootstrap seed.

    Returns:
      name -> {test, statistic, p_value, p_holm, reject, mean_diff, ci_low, ci_high, n}; mean_diff = target - baseline.
    """
    names = list(baselines)
    results = [paired_test(target, baselines[n], test=test, seed=seed) for n in names]
    adj, rej = holm(np.array([r.p_value for r in results]), alpha)
    out = {}
    for n, r, pa, rj in zip(names, results, adj, rej):
        d = r.as_dict()
        d["p_holm"] = float(pa)
        d["reject"] = bool(rj)
        out[n] = d
    return out
