"""Routing worlds: the arrays a simulated episode reads, built from the tidy data table.

A World is a NamedTuple of arrays (a pytree: traced, never recompiles when numbers change).
Static metadata (model names, families, notes, the cost scale) lives in a separate `WorldInfo`.

Cost units. All costs in a World are normalised so that lambda is on the quality scale:
``cost_norm = cost_usd / cost_scale`` where ``cost_scale`` is the largest, across models, of the
mean predicted cost per query on the world's split (so the most expensive model's typical predicted
cost is 1.0). `cost`, `pred_cost` and `pred_unc` share that unit.

Predicted cost and its uncertainty (the token-model seam). ``pred=(mean_tokens, sd_tokens)``, each
(N, K) predicted output tokens aligned with `pivot_index(table, split)`, is priced as
``pred_cost_usd = input_tokens * p_in + mean_tokens * p_out`` and ``pred_unc_usd = sd_tokens * p_out``.
Without `pred` a stand-in is used: per model, the median output tokens on the train split for the mean
and the robust spread ``(q75 - q25) / 1.349`` (the normal-consistent IQR) of train output tokens for sd.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

from bandit_sim.data.catalog import UnknownModelError, infer_prices, price_of
from bandit_sim.data.features import prompt_features

__all__ = ["World", "WorldInfo", "pivot_index", "world_from_table", "toy_world", "validate_world"]


class World(NamedTuple):
    """Arrays of one routing world (N queries, K models, F features)."""

    quality: np.ndarray  # (N, K) float32 observed quality (or success probability) in [0, 1]
    out_tokens: np.ndarray  # (N, K) float32 observed output tokens
    cost: np.ndarray  # (N, K) float32 realised cost, normalised (see module doc)
    pred_cost: np.ndarray  # (N, K) float32 predicted cost, normalised
    pred_unc: np.ndarray  # (N, K) float32 predicted cost uncertainty (sd), normalised
    features: np.ndarray  # (N, F) float32 query features, column 0 = log prompt tokens
    category: np.ndarray  # (N,) int32 query category index (for contextual policies)
    family: np.ndarray  # (K,) int32 family index of each model
    arrival_step: np.ndarray  # (K,) int32 first step at which the model may be chosen
    mask: np.ndarray  # (N, K) bool True where the (query, model) entry exists
    prices: np.ndarray  # (K, 2) float32 USD per input / output token
    x: np.ndarray  # (N, D) float32 query features of the linear routers, column 0 = 1 (bias); D = 1: bias only


@dataclass(frozen=True)
class WorldInfo:
    """Static metadata of a World (kept out of the traced pytree)."""

    models: tuple[str, ...]
    families: tuple[str, ...]
    categories: tuple[str, ...]
    prompt_ids: tuple[str, ...]
    cost_scale: float  # USD per unit of normalised cost
    n_missing: int  # (query, model) entries absent from the table (mask False)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_categories(self) -> int:
        return len(self.categories)


def validate_world(w: World) -> None:
    """Check shapes, dtypes and ranges of a World; raise ValueError naming the bad field.

    Args:
      w: the World.
    """
    n, k = np.shape(w.quality)
    for name in ("out_tokens", "cost", "pred_cost", "pred_unc", "mask"):
        if np.shape(getattr(w, name)) != (n, k):
            raise ValueError(f"World.{name} has shape {np.shape(getattr(w, name))}, expected {(n, k)}")
    if np.ndim(w.features) != 2 or np.shape(w.features)[0] != n:
        raise ValueError(f"World.features has shape {np.shape(w.features)}, expected ({n}, F)")
    if np.ndim(w.x) != 2 or np.shape(w.x)[0] != n or np.shape(w.x)[1] < 1:
        raise ValueError(f"World.x has shape {np.shape(w.x)}, expected ({n}, D) with D >= 1")
    if not np.all(np.isfinite(np.asarray(w.x))):
        r = int(np.argwhere(~np.isfinite(np.asarray(w.x)))[0, 0])
        raise ValueError(f"World.x: query row {r} has a non-finite feature")
    if np.shape(w.category) != (n,):
        raise ValueError(f"World.category has shape {np.shape(w.category)}, expected ({n},)")
    for name in ("family", "arrival_step"):
        if np.shape(getattr(w, name)) != (k,):
            raise ValueError(f"World.{name} has shape {np.shape(getattr(w, name))}, expected ({k},)")
    if np.shape(w.prices) != (k, 2):
        raise ValueError(f"World.prices has shape {np.shape(w.prices)}, expected ({k}, 2)")
    quality = np.asarray(w.quality)
    if not np.all(np.isfinite(quality)):
        r, c = (int(i) for i in np.argwhere(~np.isfinite(quality))[0])
        raise ValueError(f"World.quality: query row {r}, model column {c} is not finite (set unavailable cells to 0 "
                         "and mask them)")
    q = quality[np.asarray(w.mask)]
    if not np.all((q >= 0) & (q <= 1)):
        raise ValueError("World.quality must lie in [0, 1] where mask is True")
    for name in ("cost", "pred_cost", "pred_unc"):
        a = np.asarray(getattr(w, name))
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"World.{name} must be finite and >= 0")
    if not np.all(np.asarray(w.mask).any(axis=1)):
        raise ValueError("World.mask: every query needs at least one available model")
    # any query may come at step 0, where only the models with arrival_step <= 0 may be chosen
    early = np.asarray(w.mask) & (np.asarray(w.arrival_step) <= 0)[None, :]
    if not np.all(early.any(axis=1)):
        rows = np.flatnonzero(~early.any(axis=1))
        raise ValueError(f"World.mask/arrival_step: query rows {rows[:5].tolist()}{' ...' if rows.size > 5 else ''} "
                         "have no model available from step 0 (each query needs one model with arrival_step 0)")


def pivot_index(table, split: str | None = "test") -> tuple[list[str], list[str]]:
    """Query and model order of the World built from `table` (to align token predictions).

    Args:
      table: tidy routing table (data layer schema).
      split: "train" | "val" | "test" | None (all rows).
    Returns:
      (prompt_ids in arrival order, models sorted by name).
    """
    t = table if split is None else table[table["split"] == split]
    if len(t) == 0:
        raise ValueError(f"pivot_index: no rows with split == {split!r}")
    first = t.groupby("prompt_id", sort=False)["order"].min().sort_values(kind="stable")
    return list(first.index), sorted(t["model"].unique())


def world_from_table(table, split: str | None = "test",
                     pred: tuple[np.ndarray, np.ndarray] | None = None,
                     arrival: dict[str, int] | None = None,
                     features: np.ndarray | None = None, x: np.ndarray | None = None,
                     cost_scale: float | None = None) -> tuple[World, WorldInfo]:
    """Pivot the tidy table to a World of (N, K) arrays.

    Args:
      table: tidy routing table (`load_data(...).table`).
      split: which prompts form the world ("test" default; None = all).
      pred: optional (mean_tokens, sd_tokens), each (N, K) predicted output tokens aligned with
        `pivot_index(table, split)`; None -> per-model train stand-in (module doc).
      arrival: optional {model: step} arrival steps (default: every model present from step 0).
      features: optional (N, F) query features; None -> `bandit_sim.data.features.prompt_features`.
      cost_scale: USD per unit of normalised cost; None -> the largest mean predicted cost per query among the
        models on this split. Give one scale to Worlds that must share units (validation and test of a fold, the
        two arms of a cold-start comparison).
      x: optional (N, D) features of the linear routers aligned with `pivot_index(table, split)` (e.g.
        `text_features.transform_table(featurizer, table, prompt_ids)`, column 0 the bias); None -> bias only (N, 1).
    Returns:
      (World, WorldInfo).
    """
    required = {"prompt_id", "model", "family", "quality", "output_tokens", "input_tokens", "cost_usd",
                "order", "category", "split", "prompt"}
    missing = required - set(table.columns)
    if missing:
        raise ValueError(f"world_from_table: table lacks columns {sorted(missing)}")
    prompt_ids, models = pivot_index(table, split)
    t = table if split is None else table[table["split"] == split]
    t = t[t["quality"].notna()]
    n, k = len(prompt_ids), len(models)
    qi = {p: i for i, p in enumerate(prompt_ids)}
    mi = {m: j for j, m in enumerate(models)}
    rows = t["prompt_id"].astype(str).map(qi).to_numpy(np.int64)  # categorical columns map to categoricals
    cols = t["model"].astype(str).map(mi).to_numpy(np.int64)

    def grid(col, fill=0.0):
        a = np.full((n, k), fill, np.float64)
        a[rows, cols] = t[col].to_numpy(np.float64)
        return a

    mask = np.zeros((n, k), bool)
    mask[rows, cols] = True
    quality = grid("quality")
    out_tokens = grid("output_tokens")
    cost_usd = grid("cost_usd")
    if np.isnan(quality[mask]).any():
        raise ValueError("world_from_table: quality has NaN (this dataset has no quality signal)")

    price_rows, inferred = [], []
    for m in models:  # the price table first; a model it does not know is priced from its own observed calls
        try:
            price_rows.append(price_of(m))
        except UnknownModelError:
            c = table[table["model"] == m]
            price_rows.append(infer_prices(m, c["input_tokens"], c["output_tokens"], c["cost_usd"]))
            inferred.append(m)
    prices = np.array(price_rows, np.float64)  # (K, 2)
    per_prompt = t.groupby("prompt_id", sort=False).agg(input_tokens=("input_tokens", "max"),
                                                        prompt=("prompt", "first"),
                                                        category=("category", "first"))
    per_prompt = per_prompt.reindex(prompt_ids)
    in_tok = per_prompt["input_tokens"].to_numpy(np.float64)

    notes = []
    if inferred:
        notes.append(f"prices of {', '.join(inferred)}: not in the price table, inferred from their observed costs "
                     f"(non-negative least squares on input/output tokens)")
    if pred is None:
        train = table[(table["split"] == "train") & table["model"].isin(models)]
        src = "train split"
        if len(train) == 0:
            train, src = t, f"{split} split (no train rows)"
        g = train.groupby("model")["output_tokens"]
        med = g.median().reindex(models).to_numpy(np.float64)
        q25, q75 = g.quantile(0.25).reindex(models).to_numpy(), g.quantile(0.75).reindex(models).to_numpy()
        spread = (q75 - q25) / 1.349
        if np.isnan(med).any():
            raise ValueError(f"world_from_table: no {src} rows for models "
                             f"{[m for m, x in zip(models, med) if np.isnan(x)]}")
        mean_tok = np.broadcast_to(med, (n, k))
        sd_tok = np.broadcast_to(spread, (n, k))
        notes.append(f"pred_cost/pred_unc: stand-in from per-model median and IQR/1.349 of output tokens on the {src}")
    else:
        mean_tok, sd_tok = (np.asarray(a, np.float64) for a in pred)
        if mean_tok.shape != (n, k) or sd_tok.shape != (n, k):
            raise ValueError(f"world_from_table: pred arrays must be ({n}, {k}), got {mean_tok.shape}, {sd_tok.shape}")
        notes.append("pred_cost/pred_unc: from the supplied token prediction")
    pred_usd = in_tok[:, None] * prices[None, :, 0] + mean_tok * prices[None, :, 1]
    unc_usd = sd_tok * prices[None, :, 1]
    mean_pred = np.where(mask, pred_usd, 0).sum(0) / np.maximum(mask.sum(0), 1)
    scale = float(mean_pred.max()) if cost_scale is None else float(cost_scale)
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"world_from_table: cost scale {scale!r} is not a positive number (all predicted costs zero?)")

    if features is None:
        features = prompt_features(t, prompt_ids)
    features = np.asarray(features, np.float32)
    if features.shape[0] != n:
        raise ValueError(f"world_from_table: features has {features.shape[0]} rows, expected {n}")
    x = np.ones((n, 1), np.float32) if x is None else np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"world_from_table: x has shape {x.shape}, expected ({n}, D)")

    fam_of_model = t.groupby("model")["family"].first().reindex(models)
    families = tuple(sorted(fam_of_model.unique()))
    # categories of the whole table, so that every split's World indexes them the same way
    categories = tuple(sorted(table["category"].astype(str).unique()))
    arrival = arrival or {}
    unknown = set(arrival) - set(models)
    if unknown:
        raise ValueError(f"world_from_table: arrival names unknown models {sorted(unknown)}")
    n_missing = int((~mask).sum())
    notes.append(f"{n_missing} of {n * k} (query, model) entries missing (masked)")
    w = World(
        quality=np.where(mask, quality, 0).astype(np.float32),
        out_tokens=np.where(mask, out_tokens, 0).astype(np.float32),
        cost=np.where(mask, cost_usd / scale, 0).astype(np.float32),
        pred_cost=(pred_usd / scale).astype(np.float32),
        pred_unc=(unc_usd / scale).astype(np.float32),
        features=features,
        category=np.array([categories.index(c) for c in per_prompt["category"].astype(str)], np.int32),
        family=np.array([families.index(f) for f in fam_of_model], np.int32),
        arrival_step=np.array([arrival.get(m, 0) for m in models], np.int32),
        mask=mask,
        prices=prices.astype(np.float32),
        x=x,
    )
    validate_world(w)
    info = WorldInfo(models=tuple(models), families=families, categories=categories,
                     prompt_ids=tuple(prompt_ids), cost_scale=scale, n_missing=n_missing, notes=tuple(notes))
    return w, info


def toy_world(n: int = 200, k: int = 5, f: int = 3, n_categories: int = 2, seed: int = 0,
              bernoulli: bool = True, missing: float = 0.0,
              arrival_step: Sequence[int] | None = None) -> tuple[World, WorldInfo]:
    """A small synthetic World for tests (known per-arm success probabilities).

    Args:
      n, k, f: queries, models, features.
      n_categories: query categories (arm quality depends on the category).
      seed: NumPy seed.
      bernoulli: quality 0/1 draws (True) or the success probability itself (False).
      missing: fraction of (query, model) entries masked out.
      arrival_step: optional (K,) arrival steps.
    Returns:
      (World, WorldInfo).
    """
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, n_categories, n).astype(np.int32)
    p = rng.uniform(0.2, 0.9, (n_categories, k))
    prob = p[cat]
    quality = (rng.uniform(size=(n, k)) < prob).astype(np.float32) if bernoulli else prob.astype(np.float32)
    price = np.sort(rng.uniform(0.1, 1.0, k))
    tok = rng.lognormal(5, 0.5, (n, k))
    cost = tok * price / (tok * price).mean(0).max()
    pred_cost = np.broadcast_to(np.median(tok, 0) * price, (n, k)) / (tok * price).mean(0).max()
    pred_unc = 0.3 * pred_cost
    mask = rng.uniform(size=(n, k)) >= missing
    mask[np.arange(n), rng.integers(0, k, n)] = True
    feats = rng.normal(size=(n, f)).astype(np.float32)
    feats[:, 0] = np.log1p(rng.integers(5, 500, n))
    w = World(
        quality=np.where(mask, quality, 0).astype(np.float32),
        out_tokens=np.where(mask, tok, 0).astype(np.float32),
        cost=np.where(mask, cost, 0).astype(np.float32),
        pred_cost=np.asarray(pred_cost, np.float32),
        pred_unc=np.asarray(pred_unc, np.float32),
        features=feats,
        category=cat,
        family=(np.arange(k) % 2).astype(np.int32),
        arrival_step=np.zeros(k, np.int32) if arrival_step is None else np.asarray(arrival_step, np.int32),
        mask=mask,
        prices=np.stack([price * 0.3, price], 1).astype(np.float32),
        x=np.ones((n, 1), np.float32),
    )
    validate_world(w)
    info = WorldInfo(models=tuple(f"m{i}" for i in range(k)), families=("A", "B"),
                     categories=tuple(f"c{i}" for i in range(n_categories)),
                     prompt_ids=tuple(f"q{i}" for i in range(n)), cost_scale=1.0,
                     n_missing=int((~mask).sum()))
    return w, info
