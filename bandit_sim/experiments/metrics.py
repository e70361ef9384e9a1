"""Routing metrics computed from routed decisions and full-information matrices.

Every function takes plain NumPy arrays: ``quality[N, K]`` and ``cost[N, K]`` (what model k would have scored and
cost on query n) and ``decisions[..., N]`` (the model index a policy chose for each query; leading axes are
episodes, parameter grids, ...). Definitions (see ``shared/DESIGN.md``):

* **Quality retention** = mean routed quality / mean quality of always-premium (or of the oracle).
* **Cost reduction** = 1 - total routed cost / total cost of always-premium.
* **Oracle** (RouterBench, Hu et al. 2024, "RouterBench: A Benchmark for Multi-LLM Routing System", sec. 3): per
  query, among the models with the best observed quality, the cheapest one (ties in cost: lowest index).
* **Premium model**: the best model by training-split quality (ties: the cheaper), unless the user names one. It is
  the reference of quality retention and cost reduction in every study (compare, impact, sweep, the lambda selection
  on validation); the kernel's ``always_premium`` *policy* (highest mean predicted cost) is a routing policy, not this
  reference. Where the premium model has no answer for a query (pairwise or incomplete data), always-premium takes
  the next model of the premium ranking that has one (:func:`fixed_decisions`, :func:`premium_order`).
* **Best fixed model**: the single model with the best mean utility quality - lam * cost in hindsight (lam = 0: the
  highest mean quality; ties: lower total cost, then lower index); where it has no answer, the next by that ranking
  (:func:`best_fixed_order`).
* **AIQ** (RouterBench sec. 3.2): a router swept over its parameter gives points (c_i, q_i). Its *non-decreasing
  convex hull* R~(c) is the upper concave envelope of the Pareto-efficient points (points another point dominates --
  no more cost and at least the quality, one of them strictly -- are dropped), linear between hull vertices
  (reachable by randomly mixing the two settings), flat to the right of the most expensive vertex (a larger budget
  can always be left unspent) and 0 left of the cheapest (unreachable). With costs normalised by the upper bound,
  ``AIQ = 1/(c_hi - c_lo) * integral_{c_lo}^{c_hi} R~(c) dc``. Routers are only comparable over common bounds:
  pass the same ``c_lo``/``c_hi`` to every call, or use :func:`aiq_table`, which takes the union of all points.
* **Zero router** (RouterBench sec. 3.2): the non-decreasing convex hull of the individual models' (mean cost, mean
  quality) points -- what randomly mixing fixed models achieves with no knowledge of the query.
* **PGR / APGR / CPT** (RouteLLM, Ong et al. 2024, "RouteLLM: Learning to Route LLMs with Preference Data", sec. 4):
  for a strong/weak pair and a router score per query (higher = send to strong), the router with threshold alpha
  sends the queries with score >= alpha to the strong model. At a share c of strong calls,
  ``PGR(c) = (r(c) - r_weak) / (r_strong - r_weak)`` with r the mean quality. ``APGR = integral_0^1 PGR(c) dc``;
  ``CPT(x) = min {c : PGR(c) >= x}``. Here the integral is exact over every threshold (c = k/N, k = 0..N, trapezoid
  rule between them = random mixing of neighbouring thresholds); queries with tied scores are routed together, so
  inside a tie group PGR is interpolated linearly (the expectation under random tie-breaking). A router with
  constant scores is then the random router: PGR(c) = c, APGR = 0.5, CPT(50%) = 0.5. ``n_points=10`` gives the
  trapezoid rule on the 11 call shares 0%, 10%, ..., 100%.
* **Convergence time** (DESIGN.md): the number of queries after which the rolling mean (window 50, fewer steps at the
  start) of instantaneous regret stays below a threshold until the end of the episode (:func:`convergence_time`).
* **Regret**: cumulative, under the same utility, against the per-query oracle and against the best fixed model in
  hindsight (:func:`regret_per_step`), each named as such.
* **APGR / CPT of a swept router** (:func:`sweep_pgr`): RouteLLM's procedure applied the same way to every router.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

__all__ = [
    "routed_outcomes",
    "quality_retention",
    "cost_reduction",
    "oracle_decisions",
    "best_fixed_model",
    "best_fixed_order",
    "check_premium",
    "premium_model",
    "premium_order",
    "fixed_decisions",
    "oracle_sweep",
    "utilization",
    "summarize",
    "nondecreasing_hull",
    "aiq",
    "aiq_routerbench_code",
    "zero_router_hull",
    "aiq_table",
    "PGRCurve",
    "pgr_curve",
    "apgr",
    "cpt",
    "ConvergenceResult",
    "rolling_mean",
    "convergence_time",
    "regret_per_step",
    "sweep_pgr",
    "apgr_from_sweep",
    "cpt_from_sweep",
]


def _check_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N queries, K models) array, got shape {x.shape}")
    return x


def _check_decisions(decisions: np.ndarray, n: int, k: int) -> np.ndarray:
    d = np.asarray(decisions)
    if not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"decisions must be integer model indices, got dtype {d.dtype}")
    if d.shape[-1:] != (n,):
        raise ValueError(f"decisions must have shape (..., N={n}), got {d.shape}")
    if d.size and (d.min() < 0 or d.max() >= k):
        raise ValueError(f"decisions must lie in [0, K={k}); found range [{d.min()}, {d.max()}]")
    return d


def routed_outcomes(
    decisions: np.ndarray, quality: np.ndarray, cost: np.ndarray, query_index: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Quality and cost each routed query actually got.

    Args:
      decisions: (..., T) int model index chosen at each step.
      quality: (N, K) full-information quality.
      cost: (N, K) full-information cost.
      query_index: optional (..., T) int row of ``quality``/``cost`` served at each step (episodes that visit the
        queries in their own order); default: step t serves query t (T == N).

    Returns:
      (quality (..., T), cost (..., T)) float64.
    """
    quality = _check_matrix(quality, "quality")
    cost = _check_matrix(cost, "cost")
    if quality.shape != cost.shape:
        raise ValueError(f"quality {quality.shape} and cost {cost.shape} must have the same shape")
    n, k = quality.shape
    d = np.asarray(decisions)
    if query_index is None:
        rows = np.arange(n)
        d = _check_decisions(d, n, k)
    else:
        rows = np.asarray(query_index)
        if rows.shape != d.shape:
            raise ValueError(f"query_index shape {rows.shape} must equal decisions shape {d.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError(f"query_index must lie in [0, N={n})")
        d = _check_decisions(d, d.shape[-1], k)
    return quality[rows, d], cost[rows, d]


def quality_retention(routed_quality: np.ndarray, reference_quality: np.ndarray) -> np.ndarray:
    """Mean routed quality divided by the mean quality of a reference (always-premium or oracle) on the same queries.

    Args:
      routed_quality: (..., T) quality the policy got.
      reference_quality: (..., T) or (T,) quality the reference got on the same queries.

    Returns:
      (...,) ratio of means.
    """
    ref = np.mean(reference_quality, axis=-1)
    if np.any(ref <= 0):
        raise ValueError("reference mean quality must be > 0 for a retention ratio")
    return np.mean(routed_quality, axis=-1) / ref


def cost_reduction(routed_cost: np.ndarray, reference_cost: np.ndarray) -> np.ndarray:
    """1 - total routed cost / total cost of the reference (always-premium) on the same queries.

    Args:
      routed_cost: (..., T) cost the policy paid.
      reference_cost: (..., T) or (T,) cost the reference paid.

    Returns:
      (...,) cost reduction (1 = free, 0 = as expensive, < 0 = more expensive).
    """
    ref = np.sum(reference_cost, axis=-1)
    if np.any(ref <= 0):
        raise ValueError("reference total cost must be > 0 for a cost reduction")
    return 1.0 - np.sum(routed_cost, axis=-1) / ref


def oracle_decisions(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per query, the cheapest model among those with the best observed quality (ties in cost: lowest index).

    Args:
      quality: (N, K); cost: (N, K).

    Returns:
      (N,) int64 model indices.
    """
    quality = _check_matrix(quality, "quality")
    cost = _check_matrix(cost, "cost")
    best = quality >= quality.max(axis=1, keepdims=True)
    return np.argmin(np.where(best, cost, np.inf), axis=1).astype(np.int64)


def best_fixed_model(quality: np.ndarray, cost: np.ndarray, lam: float = 0.0) -> int:
    """The best fixed model in hindsight: the one model with the highest mean utility quality - lam * cost.

    The one meaning of "best single / best fixed model" in the project (lam = 0: the highest mean quality). Ties:
    lower total cost, then lower index.

    Args:
      quality: (N, K); cost: (N, K) (same units as lam expects); lam: cost weight.

    Returns:
      model index.
    """
    return int(best_fixed_order(quality, cost, lam)[0])


def best_fixed_order(quality: np.ndarray, cost: np.ndarray, lam: float = 0.0) -> np.ndarray:
    """Every model ranked as `best_fixed_model` ranks them (its first entry): mean utility quality - lam * cost
    descending; ties: lower total cost, then lower index.

    Args:
      quality: (N, K); cost: (N, K); lam: cost weight.

    Returns:
      (K,) int64 model indices, best first.
    """
    quality = _check_matrix(quality, "quality")
    cost = _check_matrix(cost, "cost")
    util = (quality - lam * cost).mean(0)
    return np.lexsort((np.arange(quality.shape[1]), cost.sum(0), -util)).astype(np.int64)


def check_premium(name: str | None, models, where: str = "") -> None:
    """ValueError naming an unknown premium model and the known ones (None, the default choice, passes).

    Args:
      name: the user's premium model; models: the dataset's model names; where: the dataset, for the message.
    """
    if name is not None and name not in list(models):
        raise ValueError(f"unknown premium model {name!r}{f' for {where}' if where else ''}; "
                         f"known models: {', '.join(map(str, models)) or '(none)'}")


def premium_model(train_quality: np.ndarray, train_cost: np.ndarray, models=None, name: str | None = None) -> int:
    """The premium model: the best by mean training-split quality (ties: the cheaper), unless the user names one.

    Args:
      train_quality: (K,) mean training quality per model; train_cost: (K,) mean training cost per query.
      models: the K model names (needed with `name`); name: a user's choice.

    Returns:
      model index.
    """
    if name is not None:
        check_premium(name, models or [])
        return list(models).index(name)
    return int(premium_order(train_quality, train_cost)[0])


def premium_order(train_quality: np.ndarray, train_cost: np.ndarray) -> np.ndarray:
    """Every model ranked as `premium_model` ranks them: mean training quality descending (ties: cheaper, then lower
    index). Its first entry is the premium model; the rest is always-premium's fallback where that has no answer.

    Args:
      train_quality: (K,) mean training quality per model; train_cost: (K,) mean training cost per query.

    Returns:
      (K,) int64 model indices.
    """
    q = np.asarray(train_quality, np.float64)
    c = np.asarray(train_cost, np.float64)
    return np.lexsort((np.arange(q.size), c, -q)).astype(np.int64)


def fixed_decisions(mask: np.ndarray, order) -> np.ndarray:
    """A fixed-model router on queries where some models have no answer: per query, the first model of `order` that
    has one (with complete data, `order[0]` everywhere). Always-premium is ``fixed_decisions(mask, premium first, then
    premium_order)``; the best fixed model is ``fixed_decisions(mask, best_fixed_order(...))``.

    Args:
      mask: (N, K) bool, True where model k answered query n. order: model indices, preferred first (models left out
        are never chosen).

    Returns:
      (N,) int64 model indices.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D (N queries, K models) array, got shape {mask.shape}")
    order = np.asarray(order, np.int64).reshape(-1)
    k = mask.shape[1]
    if order.size == 0 or order.min() < 0 or order.max() >= k:
        raise ValueError(f"order must list model indices in [0, K={k}), got {order.tolist()}")
    models, first = np.unique(order, return_index=True)  # a model's first occurrence in the order is its rank
    rank = np.full(k, np.inf)
    rank[models] = first
    score = np.where(mask, rank[None, :], np.inf)
    if not np.isfinite(score.min(1)).all():
        raise ValueError("fixed_decisions: some queries have no answer from any model of the order")
    return np.argmin(score, axis=1).astype(np.int64)


def oracle_sweep(quality: np.ndarray, cost: np.ndarray, lams: np.ndarray) -> np.ndarray:
    """The oracle swept over lambda: per query, argmax quality - lam * cost (ties: cheaper, then lower index).

    At lam -> 0 this is `oracle_decisions` (the cheapest of the best); large lam reaches the cheapest models, so
    its (cost, quality) curve bounds every router's from above (AIQ).

    Args:
      quality: (N, K); cost: (N, K); lams: (L,) cost weights.

    Returns:
      (L, N) int64 model indices.
    """
    quality = _check_matrix(quality, "quality")
    cost = _check_matrix(cost, "cost")
    lams = np.asarray(lams, np.float64).reshape(-1, 1, 1)
    u = quality[None] - lams * cost[None]
    best = u >= u.max(-1, keepdims=True) - 1e-12 * np.maximum(1.0, np.abs(u).max(-1, keepdims=True))
    return np.argmin(np.where(best, cost[None], np.inf), axis=-1).astype(np.int64)


def utilization(decisions: np.ndarray, k: int) -> np.ndarray:
    """Share of queries routed to each model.

    Args:
      decisions: (..., T) int model indices.
      k: number of models.

    Returns:
      (..., K) float64 shares summing to 1 over the last axis.
    """
    d = np.asarray(decisions)
    one_hot = d[..., None] == np.arange(k)
    return one_hot.mean(axis=-2)


def summarize(
    decisions: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    premium: int,
    query_index: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """All per-episode routing metrics of one policy against always-premium and the oracle on the same queries.

    Args:
      decisions: (..., T) int model indices.
      quality: (N, K); cost: (N, K).
      premium: index of the always-premium model.
      query_index: optional (..., T) query served at each step (see :func:`routed_outcomes`).

    Returns:
      dict of (...,) arrays: ``quality`` (mean), ``cost_usd`` (total), ``quality_retention`` (vs premium),
      ``quality_vs_oracle``, ``cost_reduction`` (vs premium); and ``utilization`` (..., K).
    """
    q, c = routed_outcomes(decisions, quality, cost, query_index)
    k = np.asarray(quality).shape[1]
    d = np.asarray(decisions)
    prem = np.broadcast_to(np.int64(premium), d.shape).astype(np.int64)
    orc_all = oracle_decisions(quality, cost)
    rows = np.broadcast_to(np.arange(d.shape[-1]), d.shape) if query_index is None else np.asarray(query_index)
    qp, cp = routed_outcomes(prem, quality, cost, query_index)
    qo, _ = routed_outcomes(orc_all[rows], quality, cost, query_index)
    return {
        "quality": q.mean(-1),
        "cost_usd": c.sum(-1),
        "quality_retention": quality_retention(q, qp),
        "quality_vs_oracle": quality_retention(q, qo),
        "cost_reduction": cost_reduction(c, cp),
        "utilization": utilization(d, k),
    }


# ---------------------------------------------------------------------------------------------------- AIQ


def nondecreasing_hull(cost: np.ndarray, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the non-decreasing convex hull (RouterBench) of (cost, quality) points.

    Args:
      cost: (P,) costs; quality: (P,) qualities.

    Returns:
      (hull_cost (H,), hull_quality (H,)) sorted by cost, strictly increasing in both.
    """
    c = np.asarray(cost, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    if c.shape != q.shape or c.size == 0:
        raise ValueError(f"cost {c.shape} and quality {q.shape} must be non-empty and of the same length")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(q))):
        raise ValueError("cost and quality points must be finite")
    # Pareto filter: sort by cost (then quality descending), keep points that raise the running best quality.
    order = np.lexsort((-q, c))
    c, q = c[order], q[order]
    prev_best = np.concatenate([[-np.inf], np.maximum.accumulate(q)[:-1]])
    keep = q > prev_best
    c, q = c[keep], q[keep]
    # Upper concave envelope (monotone chain); P is small (a lambda sweep), so a loop over points is fine.
    hc: list[float] = []
    hq: list[float] = []
    for ci, qi in zip(c, q):
        while len(hc) >= 2:
            cross = (hc[-1] - hc[-2]) * (qi - hq[-2]) - (hq[-1] - hq[-2]) * (ci - hc[-2])
            if cross >= 0:  # the middle vertex lies on or below the chord: not on the upper hull
                hc.pop()
                hq.pop()
            else:
                break
        hc.append(float(ci))
        hq.append(float(qi))
    return np.asarray(hc), np.asarray(hq)


def _hull_integral(hc: np.ndarray, hq: np.ndarray, lo: float, hi: float) -> float:
    """Integral over [lo, hi] of the hull function: linear between vertices, flat right, 0 left of the cheapest."""
    nodes = np.unique(np.concatenate([[lo, hi], hc[(hc > lo) & (hc < hi)]]))
    a, b = nodes[:-1], nodes[1:]
    # hc[0] is a node whenever it lies inside (lo, hi), so no segment straddles the step from 0 up to hq[0].
    reach = a >= hc[0]
    fa = np.where(reach, np.interp(a, hc, hq), 0.0)  # np.interp is flat beyond the last vertex
    fb = np.where(reach, np.interp(b, hc, hq), 0.0)
    return float(np.sum((fa + fb) * 0.5 * (b - a)))


def aiq(cost: np.ndarray, quality: np.ndarray, c_lo: float | None = None, c_hi: float | None = None) -> float:
    """RouterBench's Average Improvement in Quality: the mean of the non-decreasing convex hull over [c_lo, c_hi].

    Args:
      cost: (P,) costs of the router's sweep points; quality: (P,) their qualities.
      c_lo, c_hi: integration bounds (default: the points' min and max cost). Use common bounds across routers.

    Returns:
      AIQ = integral_{c_lo}^{c_hi} R~(c) dc / (c_hi - c_lo), in quality units.
    """
    hc, hq = nondecreasing_hull(cost, quality)
    lo = float(np.min(cost)) if c_lo is None else float(c_lo)
    hi = float(np.max(cost)) if c_hi is None else float(c_hi)
    if hi < lo:
        raise ValueError(f"need c_lo <= c_hi, got {lo} > {hi}")
    if hi == lo:
        return float(np.interp(lo, hc, hq)) if lo >= hc[0] else 0.0
    return _hull_integral(hc, hq, lo, hi) / (hi - lo)


def aiq_routerbench_code(cost: np.ndarray, quality: np.ndarray, c_max: float) -> float:
    """AIQ with the normalisation of RouterBench's published code (``calc_AIQ``), offered beside :func:`aiq`.

    Their code integrates the non-decreasing hull from its cheapest vertex to the largest cost of all routers
    (flat to the right) and divides by that largest cost, i.e. it normalises the cost axis to [0, c_max] rather than
    [c_min, c_max] and gives no area (rather than zero quality) left of the router's cheapest point. The paper's
    formula (:func:`aiq`, our default) reads a little higher on RouterBench.

    Args:
      cost: (P,) sweep costs; quality: (P,) qualities; c_max: the largest cost over every router compared.
    Returns:
      the code's AIQ.
    """
    hc, hq = nondecreasing_hull(cost, quality)
    if not c_max > 0:
        raise ValueError(f"c_max must be > 0, got {c_max}")
    hi = max(float(c_max), float(hc[-1]))
    xs = np.concatenate([hc, [hi]])
    ys = np.concatenate([hq, [hq[-1]]])
    return float(np.sum((ys[1:] + ys[:-1]) * 0.5 * np.diff(xs)) / hi)


def zero_router_hull(model_cost: np.ndarray, model_quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RouterBench's Zero router: the non-decreasing convex hull of the individual models' (cost, quality) points.

    Args:
      model_cost: (K,) mean (or total) cost of each model; model_quality: (K,) mean quality of each model.

    Returns:
      (hull_cost (H,), hull_quality (H,)).
    """
    return nondecreasing_hull(model_cost, model_quality)


def aiq_table(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """AIQ of several routers over common bounds (the cheapest and dearest point over all of them).

    Args:
      curves: name -> (cost (P,), quality (P,)); include ``"zero_router"`` (the models' points) and the oracle.

    Returns:
      name -> AIQ, plus ``"_c_lo"``/``"_c_hi"`` (the bounds used).
    """
    if not curves:
        raise ValueError("aiq_table needs at least one curve")
    lo = min(float(np.min(c)) for c, _ in curves.values())
    hi = max(float(np.max(c)) for c, _ in curves.values())
    out = {name: aiq(c, q, lo, hi) for name, (c, q) in curves.items()}
    out["_c_lo"], out["_c_hi"] = lo, hi
    return out


# ---------------------------------------------------------------------------------------------------- APGR / CPT


class PGRCurve(NamedTuple):
    """Performance gap recovered as a function of the share of calls to the strong model."""

    share: np.ndarray  # (N+1,) k/N, k = 0..N
    pgr: np.ndarray  # (N+1,) PGR when the k highest-scored queries go to the strong model (ties interpolated)
    r_strong: float  # mean quality of always-strong
    r_weak: float  # mean quality of always-weak


def pgr_curve(scores: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray) -> PGRCurve:
    """PGR at every share k/N of strong calls for a router that sends the highest-scored queries to strong.

    Args:
      scores: (N,) router score per query (e.g. P(strong wins | q)); higher = route to strong.
      q_strong: (N,) quality of the strong model per query; q_weak: (N,) of the weak model.

    Returns:
      PGRCurve; raises if the strong model is not better on average.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    qs = np.asarray(q_strong, dtype=np.float64).ravel()
    qw = np.asarray(q_weak, dtype=np.float64).ravel()
    if not (s.shape == qs.shape == qw.shape) or s.size == 0:
        raise ValueError(f"scores {s.shape}, q_strong {qs.shape}, q_weak {qw.shape} must be equal non-empty")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    n = s.size
    r_s, r_w = qs.mean(), qw.mean()
    if not r_s > r_w:
        raise ValueError(f"strong model mean quality {r_s:.4f} must exceed the weak model's {r_w:.4f}")
    order = np.argsort(-s, kind="stable")
    gain = (qs - qw)[order]
    cum = np.concatenate([[0.0], np.cumsum(gain)])  # (N+1,) total gain when the top k go to strong
    # Tie groups are routed together: inside a group interpolate linearly between the group's end points.
    ss = s[order]
    boundary = np.concatenate([[True], ss[1:] != ss[:-1], [True]])  # k is a group boundary
    kb = np.flatnonzero(boundary)
    k = np.arange(n + 1)
    cum_interp = np.interp(k, kb, cum[kb])
    pgr = (cum_interp / n) / (r_s - r_w)  # r(k) - r_weak = (total gain of the top k) / N
    return PGRCurve(share=k / n, pgr=pgr, r_strong=float(r_s), r_weak=float(r_w))


def apgr(scores: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray, n_points: int | None = None) -> float:
    """RouteLLM's average performance gap recovered, integral_0^1 PGR(c) dc over the share c of strong calls.

    Args:
      scores: (N,); q_strong: (N,); q_weak: (N,) as in :func:`pgr_curve`.
      n_points: None for the exact integral (trapezoid over every threshold); an int m for a discrete
        approximation on the grid of shares 0, 1/m, ..., 1 (trapezoid rule, the 0% point included; curve
        interpolated between thresholds). Averaging PGR at 1/m .. 1 only (skipping 0%) reads about 1/(2m) high.

    Returns:
      APGR (0.5 for a random router; 1 only if all of the gap is recovered at once).
    """
    curve = pgr_curve(scores, q_strong, q_weak)
    if n_points is None:
        return float(np.sum((curve.pgr[1:] + curve.pgr[:-1]) * 0.5 * np.diff(curve.share)))
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    c = np.arange(0, n_points + 1) / n_points
    p = np.interp(c, curve.share, curve.pgr)
    return float(np.sum((p[1:] + p[:-1]) * 0.5 * np.diff(c)))


def cpt(scores: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray, target: float) -> float:
    """RouteLLM's call-performance threshold: the least share of strong calls at which PGR reaches ``target``.

    Args:
      scores: (N,); q_strong: (N,); q_weak: (N,) as in :func:`pgr_curve`.
      target: PGR to reach, e.g. 0.5 for CPT(50%), 0.8 for CPT(80%).

    Returns:
      share in [0, 1] (interpolated linearly between thresholds); NaN if PGR never reaches the target.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be in [0, 1], got {target}")
    curve = pgr_curve(scores, q_strong, q_weak)
    hit = np.flatnonzero(curve.pgr >= target - 1e-12)
    if hit.size == 0:
        return float("nan")
    j = int(hit[0])
    if j == 0:
        return 0.0
    p0, p1 = curve.pgr[j - 1], curve.pgr[j]
    frac = (target - p0) / (p1 - p0)
    return float(curve.share[j - 1] + np.clip(frac, 0.0, 1.0) * (curve.share[j] - curve.share[j - 1]))


# ---------------------------------------------------------------------------------------------------- convergence


class ConvergenceResult(NamedTuple):
    """Convergence time per episode."""

    queries: np.ndarray  # (E,) int64: queries after which the rolling mean stays below the threshold to the end
    converged: np.ndarray  # (E,) bool: False where the last rolling mean is still >= threshold (then queries = T)


def rolling_mean(x: np.ndarray, window: int = 50) -> np.ndarray:
    """Trailing mean along the last axis over the last `window` steps (fewer at the start).

    Args:
      x: (..., T); window: window length >= 1.

    Returns:
      (..., T): element t is the mean of x[..., max(0, t - window + 1) : t + 1].
    """
    x = np.asarray(x, dtype=np.float64)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    t = x.shape[-1]
    c = np.concatenate([np.zeros(x.shape[:-1] + (1,)), np.cumsum(x, axis=-1)], axis=-1)
    hi = np.arange(1, t + 1)
    lo = np.maximum(hi - window, 0)
    return (c[..., hi] - c[..., lo]) / (hi - lo)


def convergence_time(regret: np.ndarray, threshold: float, window: int = 50) -> ConvergenceResult:
    """The one convergence definition (DESIGN.md): queries after which the rolling mean regret stays below threshold.

    With m_t the mean of the instantaneous regret over steps max(0, t - window + 1) .. t, the convergence time is
    1 + the last t with m_t >= threshold (0 if there is none): after that many queries the rolling mean stays
    below the threshold to the end of the episode. `converged` is False when the last step itself is at or above
    it (then the time is T). The simulator's kernels compute exactly this in their scan
    (`bandit_sim.sim.formulas.convergence`; tests/test_metrics.py checks both agree).

    Args:
      regret: (E, T) or (T,) instantaneous regret per step (count steps from the event of interest, e.g. arrival).
      threshold: the stated regret threshold.
      window: rolling window (DESIGN.md: 50).

    Returns:
      ConvergenceResult with (E,) arrays.
    """
    r = np.asarray(regret, dtype=np.float64)
    if r.ndim == 1:
        r = r[None]
    if r.ndim != 2:
        raise ValueError(f"regret must be (E, T) or (T,), got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("regret contains non-finite values")
    t = r.shape[1]
    above = rolling_mean(r, window) >= threshold
    last_above = np.where(above.any(axis=1), t - 1 - np.argmax(above[:, ::-1], axis=1), -1)
    return ConvergenceResult(queries=(last_above + 1).astype(np.int64), converged=last_above < t - 1)


# ---------------------------------------------------------------------------------------------------- regret


def regret_per_step(q_routed: np.ndarray, c_routed: np.ndarray, quality_rows: np.ndarray, cost_rows: np.ndarray,
                    lam: float, reference: str, fixed: int | None = None) -> np.ndarray:
    """Instantaneous regret under the utility u = quality - lam * cost, against a named reference.

    Args:
      q_routed, c_routed: (..., T) quality and cost the router got at each step.
      quality_rows, cost_rows: (..., T, K) every model's quality and cost for the query of each step.
      lam: the cost weight of the router's utility.
      reference: "oracle" (per query, the best model under the utility, knowing the outcome) or "best_fixed"
        (the best fixed model in hindsight, `fixed`, the same for every query; this regret can be negative).
      fixed: the best fixed model's index (reference "best_fixed").

    Returns:
      (..., T) float64 regret per step (sum it for the cumulative regret).
    """
    u = np.asarray(q_routed, np.float64) - lam * np.asarray(c_routed, np.float64)
    ur = np.asarray(quality_rows, np.float64) - lam * np.asarray(cost_rows, np.float64)
    if reference == "oracle":
        return ur.max(-1) - u
    if reference == "best_fixed":
        if fixed is None:
            raise ValueError("regret_per_step: reference 'best_fixed' needs the fixed model's index")
        return ur[..., fixed] - u
    raise ValueError(f"regret_per_step: reference must be 'oracle' or 'best_fixed', got {reference!r}")


# ---------------------------------------------------------------------------------------------------- APGR from a sweep


def sweep_pgr(strong_share: np.ndarray, quality: np.ndarray, r_strong: float, r_weak: float) -> tuple[np.ndarray, np.ndarray]:
    """RouteLLM's (share of strong calls, PGR) curve of a router whose knob is swept on a strong/weak pair.

    The same procedure for every router: each knob value gives a point (share of queries sent to the strong
    model, mean quality); PGR = (quality - r_weak) / (r_strong - r_weak); the two extreme settings every router
    has (everything to the weak model, everything to the strong one) add (0, 0) and (1, 1). Points are sorted by
    share (ties: mean PGR); the curve is linear between them (random mixing of neighbouring settings), no hull.

    Args:
      strong_share: (P,) share of strong calls per knob value; quality: (P,) mean quality.
      r_strong, r_weak: mean quality of always-strong and always-weak on the same queries (r_strong > r_weak).

    Returns:
      (share (P + 2,), pgr (P + 2,)) sorted by share.
    """
    if not r_strong > r_weak:
        raise ValueError(f"strong model mean quality {r_strong:.4f} must exceed the weak model's {r_weak:.4f}")
    s = np.concatenate([[0.0], np.asarray(strong_share, np.float64).ravel(), [1.0]])
    p = np.concatenate([[0.0], (np.asarray(quality, np.float64).ravel() - r_weak) / (r_strong - r_weak), [1.0]])
    order = np.lexsort((p, s))
    s, p = s[order], p[order]
    us, inv = np.unique(s, return_inverse=True)
    up = np.bincount(inv, weights=p) / np.bincount(inv)
    return us, up


def apgr_from_sweep(share: np.ndarray, pgr: np.ndarray) -> float:
    """APGR = integral_0^1 PGR(c) dc of a `sweep_pgr` curve (trapezoid rule)."""
    return float(np.sum((pgr[1:] + pgr[:-1]) * 0.5 * np.diff(share)))


def cpt_from_sweep(share: np.ndarray, pgr: np.ndarray, target: float) -> float:
    """CPT(target) of a `sweep_pgr` curve: the least share of strong calls at which PGR reaches `target`.

    Linear between points; NaN if the curve never reaches it (it always does at share 1, where PGR = 1).
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be in [0, 1], got {target}")
    hit = np.flatnonzero(pgr >= target - 1e-12)
    if hit.size == 0:
        return float("nan")
    j = int(hit[0])
    if j == 0:
        return float(share[0])
    p0, p1 = pgr[j - 1], pgr[j]
    frac = (target - p0) / (p1 - p0)
    return float(share[j - 1] + np.clip(frac, 0.0, 1.0) * (share[j] - share[j - 1]))
