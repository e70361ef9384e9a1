"""A RouteLLM-style matrix-factorisation router, extended to N models, fit with optax.

RouteLLM's MF router (Ong et al. 2024, "RouteLLM: Learning to Route LLMs with Preference Data", sec. 4.2 and
``routellm/routers/matrix_factorization/model.py``) scores a (query, model) pair as

    s(q, m) = w^T ( v_m / ||v_m|| ⊙ P x_q )                       (RouteLLM form; here + a per-model bias b_m)

with x_q a text embedding of the query, P a learned linear projection into a d-dim space, v_m a learned model
embedding and w a learned vector; P(a beats b | q) = sigmoid(s(q, a) - s(q, b)). Here:

* x_q = standardised [``hierarchical.features.query_features`` (18 hand-made features), a TF-IDF-weighted hashed
  word 1-2-gram bag of the prompt reduced by truncated SVD]; the IDF, the SVD basis and the standardisation are fit
  on the training prompts only. (RouteLLM uses OpenAI embeddings; nothing here calls a network.)
* ``objective="pointwise"`` (the N-model extension, default): quality(q, m) ~ Bernoulli(sigmoid(s(q, m))), binary
  cross-entropy with soft targets for fractional quality; ``predict_quality`` = sigmoid(s).
* ``objective="pairwise"`` (RouteLLM's own training): for every pair (a, b) of models on a prompt, target
  t = (y_a - y_b + 1) / 2 (1 = a wins, 0 = b wins, 1/2 = tie) against sigmoid(s_a - s_b).
* Fit: full-batch AdamW (optax) in one jit-compiled ``lax.while_loop`` that keeps the parameters with the lowest
  validation loss and stops after ``patience`` steps without improvement (early stopping on the val split).
  float32, fixed seed -> deterministic.

Routing. N models: per query pick ``argmax_m pred_quality(q, m) - lam * cost_norm_m`` where cost_norm is the mean
training cost per query of each model divided by the largest (a (N, K) predicted cost can be passed instead);
``calibrate`` picks lam on the val split for a target cost. Strong/weak (RouteLLM exactly): send q to the strong
model iff P(strong wins | q) >= threshold, the threshold being the quantile that sends a target share of the val
queries to the strong model (``calibrate_threshold``).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from bandit_sim.data.text_features import fit_idf, fit_svd, hashed_tf, project, standardiser, tfidf
from hierarchical.features import query_features
from hierarchical.storage import read_checked_npz, write_checked_npz

__all__ = [
    "QueryMatrix",
    "query_matrix",
    "fit_text_featurizer",
    "transform_text",
    "MFParams",
    "MFRouterFit",
    "fit",
    "query_vectors",
    "scores",
    "predict_quality",
    "win_rate",
    "route",
    "routed_cost_share",
    "calibrate",
    "calibrate_threshold",
    "route_strong_weak",
    "save",
    "load",
]


# ---------------------------------------------------------------------------------------------------- data


class QueryMatrix(NamedTuple):
    """One row per prompt (ordered by arrival ``order`` then ``prompt_id``), one column per model."""

    prompt_id: np.ndarray  # (N,) object
    prompt: list[str]  # N prompt texts
    input_tokens: np.ndarray  # (N,) int64
    quality: np.ndarray  # (N, K) float32, NaN where unobserved
    cost: np.ndarray  # (N, K) float32 USD, NaN where unobserved


def query_matrix(table: pd.DataFrame, models: Sequence[str]) -> QueryMatrix:
    """Pivot a tidy table (data contract) into per-prompt matrices over ``models``.

    Args:
      table: tidy rows with prompt_id, prompt, model, quality, cost_usd, input_tokens, order.
      models: the K model names, in column order.

    Returns:
      QueryMatrix with N = number of distinct prompts in ``table``.
    """
    need = {"prompt_id", "prompt", "model", "quality", "cost_usd", "input_tokens", "order"}
    missing = need - set(table.columns)
    if missing:
        raise ValueError(f"mf_router: table lacks columns {sorted(missing)}")
    if len(table) == 0:
        raise ValueError("mf_router: empty table")
    first = table.drop_duplicates("prompt_id").sort_values(["order", "prompt_id"], kind="stable")
    ids = first["prompt_id"].to_numpy()
    models = list(models)
    q = table.pivot_table(index="prompt_id", columns="model", values="quality", aggfunc="mean", dropna=False)
    c = table.pivot_table(index="prompt_id", columns="model", values="cost_usd", aggfunc="mean", dropna=False)
    q = q.reindex(index=ids, columns=models)
    c = c.reindex(index=ids, columns=models)
    return QueryMatrix(
        prompt_id=ids,
        prompt=first["prompt"].astype(str).tolist(),
        input_tokens=first["input_tokens"].to_numpy(np.int64),
        quality=q.to_numpy(np.float32),
        cost=c.to_numpy(np.float32),
    )


# ---------------------------------------------------------------------------------------------------- text vectors


def _query_features(prompts: Sequence[str], input_tokens: np.ndarray) -> np.ndarray:
    return query_features(list(prompts), input_tokens)


class _Featurizer(NamedTuple):
    idf: np.ndarray  # (H,) float32
    svd: np.ndarray  # (S, H) float32 right singular vectors
    mean: np.ndarray  # (D,) float32
    scale: np.ndarray  # (D,) float32


def _fit_featurizer(prompts: Sequence[str], input_tokens: np.ndarray, n_hash: int, n_svd: int, seed: int):
    # the text pieces are bandit_sim.data.text_features' (word 1-2-grams only, as RouteLLM-style MF was tuned)
    tf = hashed_tf(prompts, n_hash)
    idf = fit_idf(tf)
    x = tfidf(tf, idf)
    comps = fit_svd(x, n_svd, seed)
    raw = np.concatenate([_query_features(prompts, input_tokens), np.asarray(x @ comps.T, np.float32)], axis=1)
    mean, scale = standardiser(raw)
    return _Featurizer(idf, comps, mean, scale), ((raw - mean) / scale).astype(np.float32)


def _transform(f: _Featurizer, prompts: Sequence[str], input_tokens: np.ndarray) -> np.ndarray:
    x = tfidf(hashed_tf(prompts, f.idf.shape[0]), f.idf)
    raw = np.concatenate([_query_features(prompts, input_tokens), project(x, f.svd)], axis=1)
    return ((raw - f.mean) / f.scale).astype(np.float32)


def fit_text_featurizer(prompts: Sequence[str], input_tokens: np.ndarray, *, n_hash: int = 2 ** 14, n_svd: int = 32,
                        seed: int = 0):
    """The MF router's text featurizer fitted on training prompts: (featurizer, (N, D) standardised vectors).

    Other text routers (the k-NN router) use it too, so they read the same query representation.
    """
    return _fit_featurizer(prompts, np.asarray(input_tokens, np.float64), n_hash, n_svd, seed)


def transform_text(f, prompts: Sequence[str], input_tokens: np.ndarray) -> np.ndarray:
    """(N, D) standardised text vectors of new prompts from a fitted featurizer."""
    return _transform(f, prompts, np.asarray(input_tokens, np.float64))


# ---------------------------------------------------------------------------------------------------- model


class MFParams(NamedTuple):
    """Learned parameters; s(q, m) = w^T (v_m/||v_m|| ⊙ P x_q) + b_m."""

    proj: jax.Array  # (D, d) float32: P^T, the query projection
    model_emb: jax.Array  # (K, d) float32: v_m
    w: jax.Array  # (d,) float32: RouteLLM's classifier vector
    bias: jax.Array  # (K,) float32: b_m


class MFRouterFit(NamedTuple):
    """A fitted router: parameters, the query featurizer fit on train, model costs and metadata."""

    models: tuple[str, ...]  # K model names, column order
    params: MFParams  # numpy float32 arrays
    idf: np.ndarray  # (H,) float32
    svd: np.ndarray  # (S, H) float32
    feat_mean: np.ndarray  # (D,) float32
    feat_scale: np.ndarray  # (D,) float32
    model_cost: np.ndarray  # (K,) float64 mean training cost per query (USD)
    cost_norm: np.ndarray  # (K,) float32 model_cost / max(model_cost)
    info: dict  # objective, dim, seed, steps, best_step, train/val losses, hyper-parameters


def _logits(params: MFParams, x: jax.Array) -> jax.Array:
    """(N, D) query vectors -> (N, K) scores."""
    v = params.model_emb / jnp.linalg.norm(params.model_emb, axis=1, keepdims=True).clip(1e-6)
    px = x @ params.proj  # (N, d)
    return (px[:, None, :] * v[None, :, :]) @ params.w + params.bias


def _loss(params: MFParams, x: jax.Array, y: jax.Array, mask: jax.Array, pairwise: bool) -> jax.Array:
    s = _logits(params, x)
    if pairwise:
        k = s.shape[1]
        upper = jnp.triu(jnp.ones((k, k), bool), 1)
        logit = s[:, :, None] - s[:, None, :]
        target = (y[:, :, None] - y[:, None, :] + 1.0) * 0.5
        m = mask[:, :, None] & mask[:, None, :] & upper
        ce = optax.sigmoid_binary_cross_entropy(logit, jnp.where(m, target, 0.5))
    else:
        m = mask
        ce = optax.sigmoid_binary_cross_entropy(s, jnp.where(m, y, 0.5))
    return jnp.sum(jnp.where(m, ce, 0.0)) / jnp.maximum(jnp.sum(m), 1)


@partial(jax.jit, static_argnames=("pairwise", "max_steps", "patience", "lr", "weight_decay"))
def _train(params, xt, yt, mt, xv, yv, mv, *, pairwise, max_steps, patience, lr, weight_decay):
    opt = optax.adamw(lr, weight_decay=weight_decay)
    loss_t = partial(_loss, x=xt, y=yt, mask=mt, pairwise=pairwise)
    loss_v = partial(_loss, x=xv, y=yv, mask=mv, pairwise=pairwise)
    inf = jnp.asarray(jnp.inf, jnp.float32)
    # carry: step, params, opt state, best params, best val loss, best step, last train loss
    init = (jnp.int32(0), params, opt.init(params), params, inf, jnp.int32(0), inf)

    def cond(c):
        step, _, _, _, _, best_step, _ = c
        return (step < max_steps) & (step - best_step <= patience)

    def body(c):
        step, p, s, bp, bl, bs, _ = c
        lt, g = jax.value_and_grad(loss_t)(p)
        upd, s = opt.update(g, s, p)
        p = optax.apply_updates(p, upd)
        lv = loss_v(p)
        better = lv < bl
        bp = jax.tree.map(lambda new, old: jnp.where(better, new, old), p, bp)
        return (step + 1, p, s, bp, jnp.where(better, lv, bl), jnp.where(better, step + 1, bs), lt)

    step, _, _, bp, bl, bs, lt = jax.lax.while_loop(cond, body, init)
    return bp, bl, bs, step, lt


def fit(
    train: pd.DataFrame,
    val: pd.DataFrame,
    seed: int = 0,
    *,
    models: Sequence[str] | None = None,
    objective: str = "pointwise",
    dim: int = 16,
    n_svd: int = 32,
    n_hash: int = 2**14,
    lr: float = 1e-2,
    weight_decay: float = 0.3,
    max_steps: int = 3000,
    patience: int = 200,
) -> MFRouterFit:
    """Fit the MF router on the training split with early stopping on the validation split.

    Args:
      train: tidy table (data contract) of the training prompts; val: of the validation prompts.
      seed: seed of the SVD and the parameter initialisation (same seed -> same fit).
      models: K model names (default: sorted models of ``train``).
      objective: "pointwise" (N-model quality, BCE) or "pairwise" (RouteLLM's win-rate BCE over model pairs).
      dim: embedding dimension d; n_svd: SVD components of the text bag; n_hash: hashing buckets.
      lr, weight_decay: AdamW; max_steps, patience: full-batch steps and early-stopping patience.

    Returns:
      MFRouterFit.
    """
    if objective not in ("pointwise", "pairwise"):
        raise ValueError(f"objective must be 'pointwise' or 'pairwise', got {objective!r}")
    models = tuple(sorted(train["model"].unique())) if models is None else tuple(models)
    qt = query_matrix(train, models)
    qv = query_matrix(val, models)
    for name, qm in (("train", qt), ("val", qv)):
        obs = qm.quality[np.isfinite(qm.quality)]
        if obs.size == 0:
            raise ValueError(f"mf_router.fit: the {name} split has no observed quality (quality_kind 'none'?)")
        if obs.min() < 0 or obs.max() > 1:
            raise ValueError(f"mf_router.fit: {name} quality must lie in [0, 1], found [{obs.min()}, {obs.max()}]")
    empty = [m for m, n in zip(models, np.isfinite(qt.quality).sum(0)) if n == 0]
    if empty:
        raise ValueError(f"mf_router.fit: no training rows for models {empty}")
    feat, xt = _fit_featurizer(qt.prompt, qt.input_tokens, n_hash, n_svd, seed)
    xv = _transform(feat, qv.prompt, qv.input_tokens)

    key = jax.random.key(seed)
    k_p, k_v, k_w = jax.random.split(key, 3)
    d_in, k = xt.shape[1], len(models)
    params = MFParams(
        proj=jax.random.normal(k_p, (d_in, dim), jnp.float32) / np.sqrt(d_in),
        model_emb=jax.random.normal(k_v, (k, dim), jnp.float32),
        w=jax.random.normal(k_w, (dim,), jnp.float32) / np.sqrt(dim),
        bias=jnp.zeros((k,), jnp.float32),
    )
    if objective == "pointwise":  # start the bias at each model's training log-odds of quality
        p = np.clip(np.nanmean(qt.quality, axis=0), 1e-3, 1 - 1e-3)
        params = params._replace(bias=jnp.asarray(np.log(p / (1 - p)), jnp.float32))

    def arrays(qm):
        m = np.isfinite(qm.quality)
        return jnp.asarray(np.nan_to_num(qm.quality, nan=0.5)), jnp.asarray(m)

    yt, mt = arrays(qt)
    yv, mv = arrays(qv)
    bp, bl, bs, steps, lt = _train(
        params, jnp.asarray(xt), yt, mt, jnp.asarray(xv), yv, mv,
        pairwise=objective == "pairwise", max_steps=int(max_steps), patience=int(patience),
        lr=float(lr), weight_decay=float(weight_decay),
    )
    bp = MFParams(*(np.asarray(a, np.float32) for a in bp))
    if not all(np.all(np.isfinite(a)) for a in bp):
        raise FloatingPointError("mf_router.fit: non-finite parameters; lower lr")
    mc = np.nanmean(qt.cost.astype(np.float64), axis=0)
    info = {
        "objective": objective, "dim": int(dim), "n_svd": int(feat.svd.shape[0]), "n_hash": int(n_hash),
        "lr": float(lr), "weight_decay": float(weight_decay), "max_steps": int(max_steps),
        "patience": int(patience), "seed": int(seed), "steps_run": int(steps), "best_step": int(bs),
        "best_val_loss": float(bl), "last_train_loss": float(lt),
        "n_train_prompts": int(len(qt.prompt_id)), "n_val_prompts": int(len(qv.prompt_id)),
    }
    return MFRouterFit(
        models=models, params=bp, idf=feat.idf, svd=feat.svd, feat_mean=feat.mean, feat_scale=feat.scale,
        model_cost=mc, cost_norm=(mc / mc.max()).astype(np.float32), info=info,
    )


# ---------------------------------------------------------------------------------------------------- prediction


def _as_queries(fitted: MFRouterFit, queries: pd.DataFrame | QueryMatrix) -> QueryMatrix:
    if isinstance(queries, QueryMatrix):
        return queries
    if isinstance(queries, pd.DataFrame):
        return query_matrix(queries, fitted.models)
    raise TypeError(f"queries must be a tidy DataFrame or a QueryMatrix, got {type(queries).__name__}")


def query_vectors(fitted: MFRouterFit, queries: pd.DataFrame | QueryMatrix) -> np.ndarray:
    """Standardised query vectors (features + text SVD) with the featurizer fit on train.

    Args:
      fitted: a fit; queries: tidy table or QueryMatrix (rows: see :func:`query_matrix`).

    Returns:
      (N, D) float32.
    """
    qm = _as_queries(fitted, queries)
    f = _Featurizer(fitted.idf, fitted.svd, fitted.feat_mean, fitted.feat_scale)
    return _transform(f, qm.prompt, qm.input_tokens)


_logits_jit = jax.jit(_logits)


def scores(fitted: MFRouterFit, queries: pd.DataFrame | QueryMatrix | np.ndarray) -> np.ndarray:
    """Raw scores s(q, m).

    Args:
      fitted: a fit; queries: tidy table, QueryMatrix, or (N, D) query vectors from :func:`query_vectors`.

    Returns:
      (N, K) float32.
    """
    x = queries if isinstance(queries, np.ndarray) else query_vectors(fitted, queries)
    return np.asarray(_logits_jit(MFParams(*map(jnp.asarray, fitted.params)), jnp.asarray(x, jnp.float32)))


def predict_quality(fitted: MFRouterFit, queries: pd.DataFrame | QueryMatrix | np.ndarray) -> np.ndarray:
    """Predicted quality sigmoid(s(q, m)) (pointwise fits only).

    Args:
      fitted: a pointwise fit; queries: as in :func:`scores`.

    Returns:
      (N, K) float32 in (0, 1).
    """
    if fitted.info["objective"] != "pointwise":
        raise ValueError("predict_quality needs a pointwise fit; a pairwise fit only gives win rates (win_rate)")
    s = scores(fitted, queries)
    return (1.0 / (1.0 + np.exp(-s))).astype(np.float32)


def win_rate(fitted: MFRouterFit, queries, strong: str, weak: str) -> np.ndarray:
    """RouteLLM's P(strong beats weak | q) = sigmoid(s(q, strong) - s(q, weak)).

    Args:
      fitted: a fit (pairwise = RouteLLM's training); queries: as in :func:`scores`; strong, weak: model names.

    Returns:
      (N,) float32.
    """
    idx = {m: i for i, m in enumerate(fitted.models)}
    for m in (strong, weak):
        if m not in idx:
            raise ValueError(f"model {m!r} is not one of the fit's models {list(fitted.models)}")
    s = scores(fitted, queries)
    return (1.0 / (1.0 + np.exp(-(s[:, idx[strong]] - s[:, idx[weak]])))).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- routing


def route(pred_quality: np.ndarray, lam: float | np.ndarray, cost_norm: np.ndarray) -> np.ndarray:
    """Per query, argmax_m pred_quality - lam * cost_norm (ties: lowest index).

    Args:
      pred_quality: (N, K) predicted quality.
      lam: scalar or (L,) cost weights.
      cost_norm: (K,) or (N, K) normalised cost (e.g. ``fitted.cost_norm``).

    Returns:
      (N,) int64 for a scalar lam, (L, N) for an array.
    """
    q = np.asarray(pred_quality, np.float64)
    lam_a = np.asarray(lam, np.float64)
    util = q[None] - lam_a.reshape(-1, 1, 1) * np.asarray(cost_norm, np.float64)
    d = np.argmax(util, axis=-1).astype(np.int64)
    return d[0] if lam_a.ndim == 0 else d


def routed_cost_share(decisions: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Total cost of the decisions / total cost of the most expensive single model, on the same queries.

    Args:
      decisions: (..., N) int; cost: (N, K) observed cost.

    Returns:
      (...,) cost share in [0, 1].
    """
    c = np.asarray(cost, np.float64)
    total = c[np.arange(c.shape[0]), decisions].sum(-1)
    return total / c.sum(0).max()


def calibrate(
    fitted: MFRouterFit,
    val: pd.DataFrame | QueryMatrix,
    target_cost_share: float | None = None,
    target_cost: float | None = None,
    lams: np.ndarray | None = None,
) -> float:
    """The smallest lam whose val-split routing costs at most the target (cost falls as lam grows).

    Args:
      fitted: a pointwise fit; val: validation queries (with observed cost).
      target_cost_share: target total cost / total cost of the most expensive single model on val; or
      target_cost: target mean cost per query (USD). Exactly one of the two.
      lams: candidate grid (default: 0 and 400 log-spaced values in [1e-4, 1e3]).

    Returns:
      lam (float); the largest grid value if even it misses the target.
    """
    if (target_cost_share is None) == (target_cost is None):
        raise ValueError("give exactly one of target_cost_share, target_cost")
    qm = _as_queries(fitted, val)
    cost = np.nan_to_num(qm.cost.astype(np.float64), nan=0.0)
    grid = np.concatenate([[0.0], np.geomspace(1e-4, 1e3, 400)]) if lams is None else np.sort(np.asarray(lams))
    d = route(predict_quality(fitted, qm), grid, fitted.cost_norm)  # (L, N)
    if target_cost_share is not None:
        achieved = routed_cost_share(d, cost)
        target = float(target_cost_share)
    else:
        achieved = cost[np.arange(cost.shape[0]), d].mean(-1)
        target = float(target_cost)
    ok = np.flatnonzero(achieved <= target + 1e-12)
    return float(grid[ok[0]] if ok.size else grid[-1])


def calibrate_threshold(val_win_rate: np.ndarray, strong_share: float) -> float:
    """RouteLLM threshold that sends ``strong_share`` of the val queries to the strong model.

    Args:
      val_win_rate: (N,) P(strong wins | q) on the val queries; strong_share: target share in [0, 1].

    Returns:
      threshold alpha: route to strong iff win_rate >= alpha.
    """
    if not 0.0 <= strong_share <= 1.0:
        raise ValueError(f"strong_share must be in [0, 1], got {strong_share}")
    w = np.sort(np.asarray(val_win_rate, np.float64))[::-1]
    n_strong = int(round(strong_share * w.size))
    if n_strong == 0:
        return float(np.nextafter(w[0], np.inf))
    return float(w[n_strong - 1])


def route_strong_weak(win_rate_: np.ndarray, threshold: float) -> np.ndarray:
    """RouteLLM's rule: True (strong) where P(strong wins | q) >= threshold.

    Args:
      win_rate_: (N,); threshold: alpha.

    Returns:
      (N,) bool.
    """
    return np.asarray(win_rate_, np.float64) >= np.float64(threshold)  # no float32 rounding of alpha


# ---------------------------------------------------------------------------------------------------- persistence


FORMAT = "bandit-sim-mf-router"


def save(fitted: MFRouterFit, path: str | os.PathLike) -> Path:
    """Write a fit as one checksummed .npz (arrays + JSON metadata), atomically; no pickle.

    Args:
      fitted: the fit; path: target .npz path.
    Returns:
      The path written.
    """
    arrays = {f"params_{k}": np.asarray(v) for k, v in fitted.params._asdict().items()}
    arrays.update(idf=fitted.idf, svd=fitted.svd, feat_mean=fitted.feat_mean, feat_scale=fitted.feat_scale,
                  model_cost=fitted.model_cost, cost_norm=fitted.cost_norm)
    return write_checked_npz(path, arrays, {"format": FORMAT, "models": list(fitted.models), "info": fitted.info})


def load(path: str | os.PathLike) -> MFRouterFit:
    """Read a fit written by :func:`save` (format and checksums verified).

    Args:
      path: the .npz path.

    Returns:
      MFRouterFit.
    """
    a, meta = read_checked_npz(path, what="MF router file", fmt=FORMAT)
    params = MFParams(*(a[f"params_{k}"] for k in MFParams._fields))
    return MFRouterFit(
        models=tuple(meta["models"]), params=params, idf=a["idf"], svd=a["svd"], feat_mean=a["feat_mean"],
        feat_scale=a["feat_scale"], model_cost=a["model_cost"], cost_norm=a["cost_norm"], info=meta["info"],
    )
