"""A k-nearest-neighbour router (RouterBench's KNN baseline) on the query's text features.

Fit on a training split: the text vectors of the training prompts and every model's observed quality on them.
For a new query, the predicted quality of model m is the mean quality of m on the k training prompts nearest to the
query (cosine similarity of the standardised text vectors); routing then maximises the same utility as every other
router, predicted quality - lam * (pred_cost + gam * pred_unc). Deterministic; nothing is learnt online.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["KNNFit", "fit", "predict_quality", "route"]


class KNNFit(NamedTuple):
    x: np.ndarray  # (N_train, D) float32 unit-norm training vectors
    quality: np.ndarray  # (N_train, K) float32 observed quality (NaN where a model has no answer)
    k: int


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"knn: features must be a finite 2-D array, got shape {x.shape}")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def fit(x_train: np.ndarray, quality_train: np.ndarray, k: int) -> KNNFit:
    """Store the training vectors and qualities.

    Args:
      x_train: (N, D) text vectors of the training prompts. quality_train: (N, K) quality per model (NaN = missing).
      k: neighbours (1 <= k <= N).
    Returns:
      KNNFit.
    """
    q = np.asarray(quality_train, np.float32)
    if q.ndim != 2 or q.shape[0] != np.shape(x_train)[0]:
        raise ValueError(f"knn: quality must be (N, K) with N = {np.shape(x_train)[0]}, got {q.shape}")
    if not 1 <= int(k) <= q.shape[0]:
        raise ValueError(f"knn: k must be in [1, {q.shape[0]}], got {k}")
    return KNNFit(_unit(x_train), q, int(k))


def predict_quality(f: KNNFit, x: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(N, K) mean quality of each model on the k nearest training prompts (ties by index; NaN ignored).

    Args:
      f: KNNFit. x: (N, D) query vectors. chunk: rows per block (memory).
    Returns:
      (N, K) float64; a model with no answer among the neighbours gets its training mean.
    """
    xq = _unit(x)
    if xq.shape[1] != f.x.shape[1]:
        raise ValueError(f"knn: query vectors have {xq.shape[1]} dimensions, the fit {f.x.shape[1]}")
    fallback = np.nanmean(f.quality, 0)
    out = np.empty((xq.shape[0], f.quality.shape[1]))
    for a in range(0, xq.shape[0], chunk):
        sim = xq[a:a + chunk] @ f.x.T  # (B, N_train)
        idx = np.argsort(-sim, axis=1, kind="stable")[:, :f.k]
        qn = f.quality[idx]  # (B, k, K)
        cnt = np.sum(np.isfinite(qn), 1)
        mean = np.nansum(qn, 1) / np.maximum(cnt, 1)
        out[a:a + chunk] = np.where(cnt > 0, mean, fallback[None, :])
    return out


def route(pred_quality: np.ndarray, lams: np.ndarray, cost: np.ndarray, avail: np.ndarray | None = None) -> np.ndarray:
    """(L, N) decisions argmax_m pred_quality - lam * cost for each lam (ties: lower index).

    Args:
      pred_quality: (N, K). lams: (L,). cost: (N, K) the utility's cost term (e.g. pred_cost + gam * pred_unc).
      avail: optional (N, K) bool, the models that may be chosen.
    Returns:
      (L, N) int64.
    """
    u = np.asarray(pred_quality, np.float64)[None] - np.asarray(lams, np.float64)[:, None, None] * np.asarray(cost)[None]
    if avail is not None:
        u = np.where(np.asarray(avail)[None], u, -np.inf)
    return np.argmax(u, -1).astype(np.int64)
