"""`bandit-sim compare`: every baseline and the Thompson routers side by side, through the same kernel.

Protocol (DESIGN.md):
- Worlds are built from the validation and test splits, in one cost unit taken from the training split
  (`training_cost_scale`); the token model (or the stand-in) and the MF router are fit on the training split only.
- An episode routes every test query once, in its own random order (T = N_test), so per-episode totals are
  directly comparable with the dataset's always-premium / oracle figures. All policies share the episode keys
  (common random numbers), so differences are paired across episodes.
- The operating point of each cost-aware router (lambda) is chosen on the validation split: the largest cost
  reduction whose quality retention (vs always-premium) is >= `target_retention`; if none reaches it, the
  highest retention. The chosen lambda is then used on the test split. Always-premium, the reference of retention
  and cost reduction, is the metrics module's premium model (`metrics.premium_model`: the best by training quality,
  ties cheaper; `training_premium`), not the kernel's ``always_premium`` policy (the highest mean predicted cost).
- Metrics per episode: mean quality, cost in USD, quality retention (vs always-premium), quality vs oracle, cost
  reduction, cumulative regret, convergence time, utilisation; each reported with a bootstrap 95% CI over
  episodes. Deterministic routers (always-premium, cheapest, threshold, best-single, oracle, MF router) have the same
  value in every episode; their interval has zero width.
- AIQ (RouterBench) over each router's lambda sweep, with the Zero router (hull of the single models) and the
  oracle; APGR / CPT (RouteLLM) for a strong/weak pair.
- Significance: Thompson vs each baseline, paired over episodes, on the per-episode utility
  mean quality - lambda* x mean normalised cost (lambda* = Thompson's chosen lambda); Wilcoxon signed-rank with
  Holm's correction, and the paired t-test as a cross-check.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import jax
import numpy as np

import jax.numpy as jnp

from bandit_sim.data.loaders import RoutingData, load_data
from bandit_sim.data.text_features import featurizer_for_table, transform_table
from bandit_sim.experiments import metrics as M
from bandit_sim.sim.episode import hyper_grid
from bandit_sim.sim.policies import Hyper, contextual_thompson, default_hyper, resolve_policy
from bandit_sim.sim.simulate import simulate
from bandit_sim.sim.token_model import predict_for_splits
from bandit_sim.sim.linear import train_rows
from bandit_sim.sim.world import World, WorldInfo, pivot_index, world_from_table

__all__ = ["Setup", "prepare", "run_policy", "select_lambda", "select_models", "training_premium", "fixed_outcome",
           "LAMBDA_GRID"]

# lambda values tried on the validation split (normalised cost: the premium model's typical cost is 1)
# (large values reach the cheapest models, so AIQ's sweep covers the whole cost range)
LAMBDA_GRID = np.array([0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                        10.0, 20.0, 50.0], np.float32)


@dataclass
class Setup:
    """Everything an experiment needs: data, worlds for val and test, token predictions, the premium model, notes."""

    data: RoutingData
    worlds: dict[str, World]
    infos: dict[str, WorldInfo]
    token_source: str
    premium: int  # the premium model (`metrics.premium_model` on the training split): retention / cost reduction
    premium_order: tuple[int, ...]  # always-premium's preference: the premium model, then the premium ranking
    token_fit: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def models(self) -> tuple[str, ...]:
        return self.infos["test"].models

    def premium_arms(self, split: str) -> np.ndarray:
        """(N,) always-premium's model per query of the split: the premium model, or where it has no answer the next
        of the premium ranking that has one (`metrics.fixed_decisions`)."""
        return M.fixed_decisions(np.asarray(self.worlds[split].mask), self.premium_order)


def training_premium(rd: RoutingData, models, name: str | None = None) -> tuple[int, tuple[int, ...]]:
    """The premium model of `models` by the metrics module's definition, from the training split.

    Args:
      rd: the data (its "train" rows). models: the World's models, in order. name: a user's premium model (default:
        `metrics.premium_model`, the best by mean training quality, ties cheaper).
    Returns:
      (premium index, always-premium's preference order: the premium model, then `metrics.premium_order`).
    """
    models = list(models)
    g = rd.split("train").groupby("model")
    q = g["quality"].mean().reindex(models).to_numpy(np.float64)
    c = g["cost_usd"].mean().reindex(models).to_numpy(np.float64)
    prem = M.premium_model(q, c, models, name)
    order = [prem] + [int(k) for k in M.premium_order(q, c) if k != prem]
    return prem, tuple(order)


def fixed_outcome(world: World, info: WorldInfo, arms: np.ndarray) -> tuple[float, float]:
    """(mean quality per query, total USD cost) of a fixed router choosing `arms` (N,) on one pass over the World's
    queries: the figures always-premium's retention and cost reduction divide by."""
    rows = np.arange(np.asarray(world.quality).shape[0])
    arms = np.asarray(arms, np.int64)
    q = np.asarray(world.quality, np.float64)[rows, arms]
    c = np.asarray(world.cost, np.float64)[rows, arms] * info.cost_scale
    return float(q.mean()), float(c.sum())


def _token_predictions(rd: RoutingData, splits, seed: int, method: str, quick: bool):
    """(mean, sd) predicted output tokens per split, aligned with `pivot_index`, from the chosen token model."""
    if method == "standin":
        return {s: None for s in splits}, "per-model train median and IQR/1.349 (stand-in)", {}
    return predict_for_splits(rd, splits, seed=seed, quick=quick)


def prepare(data: str | RoutingData, *, seed: int = 0, tokens: str = "hierarchical", quick: bool = False,
            splits=("val", "test"), arrival: dict[str, int] | None = None) -> Setup:
    """Load data, fit the token model on train and build the val/test Worlds, all in the training split's cost unit.

    Args:
      data: dataset name or path, or a loaded RoutingData (must have a quality signal).
      seed: seed of the token-model fit.
      tokens: "hierarchical" (the NumPyro token model) or "standin" (per-model train medians).
      quick: fewer SVI steps (smoke tests).
      splits: which splits get a World.
      arrival: optional {model: step} arrival steps (cold start).
    Returns:
      Setup.
    """
    rd = data if isinstance(data, RoutingData) else load_data(data, seed=seed)
    if not rd.has_quality:
        raise ValueError(f"dataset {rd.name!r} has no quality signal ({rd.quality_kind}); routing needs quality "
                         f"(use it with `bandit-sim tokens`)")
    for s in splits + ("train",):
        if (rd.table["split"] == s).sum() == 0:
            raise ValueError(f"dataset {rd.name!r} has no {s!r} split rows; routing experiments need train/val/test")
    preds, source, fit_info = _token_predictions(rd, splits, seed, tokens, quick)
    # one cost unit for every split, from the training split (as `prepare_fold`): a lambda chosen on validation means
    # the same on test, and no split's unit is computed from its own (test) data
    scale = training_cost_scale(rd)
    worlds, infos = {}, {}
    for s in splits:
        w, info = world_from_table(rd.table, split=s, pred=preds[s], arrival=arrival, cost_scale=scale)
        worlds[s], infos[s] = w, info
    models = infos[splits[0]].models
    if any(infos[s].models != models for s in splits):
        raise ValueError(f"{rd.name}: the splits {list(splits)} have different models")
    premium, order = training_premium(rd, models)
    notes = list(rd.notes) + [f"predicted cost and uncertainty: {source}"] + list(infos[splits[-1]].notes)
    return Setup(rd, worlds, infos, source, premium, order, fit_info, notes)


def run_policy(world: World, info: WorldInfo, policy: str, *, episodes: int, seed: int, lam=0.3, gam=0.25,
               steps: int | None = None, trajectories: bool = False, conv_threshold: float = 0.05,
               hyper_overrides: dict | None = None, grid: dict | None = None, cells: dict | None = None):
    """Run one policy (optionally over a hyper-parameter grid) through the kernel.

    Args:
      world, info: the World and its metadata.
      policy: a policy factory or its name in `policies.REGISTRY`.
      episodes: E; seed: key seed (the same seed gives every policy the same episode streams).
      lam, gam: utility weights (scalars) unless `grid` sweeps them.
      steps: T (default: N, one pass over the queries).
      trajectories: also return per-step trajectories.
      hyper_overrides: other Hyper fields (priors, ...).
      grid: field -> 1-D values: their outer product is a grid run in one compiled call.
      cells: field -> 1-D values of equal length C: C grid cells taken together (zipped, not an outer product).
    Returns:
      (Metrics, Trajectory | None) with leaves (G?, E, ...).
    """
    k = world.quality.shape[1]
    thr = float(np.median(np.asarray(world.features)[:, 0]))
    base = default_hyper(k, threshold=thr, lam=lam, gam=gam, **(hyper_overrides or {}))
    if grid and cells:
        raise ValueError("run_policy: give grid or cells, not both")
    hyper = hyper_grid(base, **grid) if grid else zipped_hyper(base, **cells) if cells else base
    policy = resolve_policy(policy)
    options = {"n_categories": info.n_categories} if policy is contextual_thompson else {}
    return simulate(world, jax.random.key(seed), hyper, policy=policy, episodes=episodes,
                    steps=steps or world.quality.shape[0], trajectories=trajectories,
                    conv_threshold=conv_threshold, options=options)


def zipped_hyper(base, **cols):
    """Hyper whose leading axis C takes the given fields' values together (cell c = (col_1[c], col_2[c], ...)).

    Args:
      base: Hyper of scalars / (K,) priors.
      **cols: field -> (C,) values, all the same length.
    Returns:
      Hyper with a leading axis C on every leaf.
    """
    lengths = {len(np.asarray(v).reshape(-1)) for v in cols.values()}
    if len(lengths) != 1:
        raise ValueError(f"zipped_hyper: columns must have one length, got {sorted(lengths)}")
    c = lengths.pop()
    out = {}
    for name in Hyper._fields:
        leaf = jnp.asarray(getattr(base, name), jnp.float32)
        out[name] = (jnp.asarray(np.asarray(cols[name], np.float32).reshape(-1)) if name in cols
                     else jnp.broadcast_to(leaf, (c, *leaf.shape)))
    return Hyper(**out)


@dataclass
class EpisodeStats:
    """Per-episode outcome arrays of one policy (E,) and per-arm choices (E, K)."""

    quality: np.ndarray
    cost_usd: np.ndarray
    cost_norm: np.ndarray
    regret: np.ndarray
    convergence: np.ndarray
    converged: np.ndarray
    choices: np.ndarray


def episode_stats(metrics, info: WorldInfo, steps: int) -> EpisodeStats:
    """Per-episode means (quality, normalised cost) and USD totals from kernel Metrics."""
    m = jax.device_get(metrics)
    return EpisodeStats(
        quality=np.asarray(m.quality, np.float64) / steps,
        cost_usd=np.asarray(m.cost, np.float64) * info.cost_scale,
        cost_norm=np.asarray(m.cost, np.float64) / steps,
        regret=np.asarray(m.regret, np.float64),
        convergence=np.asarray(m.convergence),
        converged=np.asarray(m.converged),
        choices=np.asarray(m.choices),
    )


def select_lambda(world: World, info: WorldInfo, policy: str, *, episodes: int, seed: int, gam: float,
                  target_retention: float, premium_arms: np.ndarray, lambdas=LAMBDA_GRID,
                  hyper_overrides: dict | None = None) -> dict:
    """Choose lambda on a (validation) World: max cost reduction subject to retention >= target.

    Args:
      world, info: the validation World.
      policy: policy name; episodes/seed: as `run_policy`; gam: uncertainty weight.
      target_retention: quality retention vs always-premium to keep.
      premium_arms: (N,) always-premium's model per query of this World (`Setup.premium_arms`: the metrics
        module's premium model), the reference of retention and cost reduction.
      lambdas: candidate values (one compiled call).
    Returns:
      dict with lam, retention, cost_reduction (mean over episodes at the chosen lam), met_target, and the
      whole curve (lams, retention, cost_reduction).
    """
    steps = world.quality.shape[0]
    q_prem, c_prem = fixed_outcome(world, info, premium_arms)  # every query once, as the policy's episodes
    m, _ = run_policy(world, info, policy, episodes=episodes, seed=seed, gam=gam,
                      grid={"lam": np.asarray(lambdas, np.float32)}, hyper_overrides=hyper_overrides)
    st = episode_stats(m, info, steps)
    ret = st.quality.mean(-1) / q_prem
    red = 1.0 - st.cost_usd.mean(-1) / c_prem
    ok = ret >= target_retention
    j = int(np.argmax(np.where(ok, red, -np.inf))) if ok.any() else int(np.argmax(ret))
    return {"lam": float(lambdas[j]), "retention": float(ret[j]), "cost_reduction": float(red[j]),
            "met_target": bool(ok.any()), "lams": np.asarray(lambdas).tolist(), "retention_curve": ret.tolist(),
            "cost_reduction_curve": red.tolist()}


def select_models(world: World, info: WorldInfo, idx) -> tuple[World, WorldInfo]:
    """The World restricted to the models `idx` (in that order); queries with none of them are an error.

    Args:
      world, info: a World and its metadata.
      idx: model indices to keep.
    Returns:
      (World with K' = len(idx) arms, WorldInfo with the kept model names).
    """
    idx = np.asarray(idx, int)
    per_model = {"quality", "out_tokens", "cost", "pred_cost", "pred_unc", "mask"}
    per_arm = {"family", "arrival_step", "prices"}
    parts = {}
    for name, a in zip(World._fields, world):
        a = np.asarray(a)
        parts[name] = a[:, idx] if name in per_model else a[idx] if name in per_arm else a
    w = World(**parts)
    if not w.mask.any(axis=1).all():
        raise ValueError("select_models: some queries have none of the selected models")
    return w, replace(info, models=tuple(info.models[i] for i in idx))


# ==================================================================================================== folds and tracks
#
# The evaluation protocol of `compare` (DESIGN.md, "Evaluation protocol"): K folds over prompts; in fold f the
# fold's prompts are the test set and the others give validation (as many prompts as the test set) and training.
# Every fold has the same test, validation and training sizes, so the kernels compile once per dataset; the
# N mod K prompts left over are training prompts in every fold (reported). Within a fold the validation and test
# Worlds share one cost unit (the largest mean realised cost per query among the models on the fold's training
# split), so a lambda chosen on validation means the same on test.

LAMBDAS = np.array([0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 20.0], np.float32)
"""The cost weights every cost-aware router is swept over (12 points, normalised cost)."""

GAMMA = 0.25
"""Uncertainty weight. Default form: U = pi - lam * (cost + GAMMA * sd) (the penalty scales with the cost
weight, so lam = 0 is quality only); the research form U = pi - lam * cost - GAMMA * sd is an option."""

ORACLE_LAMBDAS = np.concatenate([[1e-9], np.geomspace(1e-3, 1e4, 255)])
"""The oracle's sweep: dense enough that its hull bounds every router's from above."""


@dataclass(frozen=True)
class Fold:
    """The prompts of one fold: test (the fold), validation and training (the rest)."""

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def make_folds(table, k: int = 5, seed: int = 0) -> tuple[list[Fold], list[str]]:
    """K folds over prompts (grouped by prompt_id, stratified by category), all of the same size.

    Prompts are shuffled within their category (seeded) and interleaved in proportion to the categories' sizes,
    so every contiguous stretch of the order has about the dataset's category mix. Test folds take that order
    round-robin; the validation set of fold f is the first n_test prompts of the order outside fold f; the rest is
    training. The N mod K prompts left over are training prompts in every fold.

    Args:
      table: tidy routing table (prompt_id, category).
      k: number of folds (>= 2).
      seed: shuffling seed.
    Returns:
      (folds, notes).
    """
    if int(k) < 2:
        raise ValueError(f"folds must be >= 2, got {k}")
    per = table.drop_duplicates("prompt_id")[["prompt_id", "category"]]
    n = len(per)
    if n < 3 * k:
        raise ValueError(f"{n} prompts are too few for {k} folds (need at least {3 * k})")
    rng = np.random.default_rng(seed)
    keys, ids = [], []
    for _, g in per.groupby(per["category"].astype(str), sort=True):
        p = g["prompt_id"].astype(str).to_numpy()
        p = p[rng.permutation(len(p))]
        keys.append((np.arange(len(p)) + rng.uniform(0.0, 1.0)) / len(p))  # position fraction in its category
        ids.append(p)
    keys, ids = np.concatenate(keys), np.concatenate(ids)
    order = ids[np.argsort(keys, kind="stable")]
    n_test = n // k
    tested, left = order[: n_test * k], order[n_test * k:]
    fold_of = {p: i % k for i, p in enumerate(tested)}
    folds = []
    for f in range(k):
        test = tuple(p for p in tested if fold_of[p] == f)
        rest = [p for p in order if fold_of.get(p, -1) != f]
        val = tuple(rest[:n_test])
        train = tuple(rest[n_test:])
        folds.append(Fold(f, train, val, test))
    notes = [f"{k} folds over prompts (grouped by prompt_id, stratified by category, seed {seed}): "
             f"{n_test} test, {n_test} validation and {n - 2 * n_test} training prompts per fold"]
    if len(left):
        notes.append(f"{len(left)} of {n} prompts are in no test fold (so that every fold has the same size); "
                     f"they are training prompts in every fold")
    return folds, notes


def fold_data(rd: RoutingData, fold: Fold, train_fraction: float = 1.0, seed: int = 0) -> RoutingData:
    """The RoutingData of one fold: its `split` column set to the fold's train / val / test prompts.

    Args:
      rd: the dataset. fold: the fold.
      train_fraction: keep this share of the training prompts (learning curves), chosen with `seed`.
    Returns:
      RoutingData named "<name>#fold<f>" (plus the share when < 1).
    """
    train = list(fold.train)
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    if train_fraction < 1.0:
        rng = np.random.default_rng(seed + 7919 * fold.index)
        keep = max(1, int(round(train_fraction * len(train))))
        train = [train[i] for i in np.sort(rng.permutation(len(train))[:keep])]
    split = {**{p: "train" for p in train}, **{p: "val" for p in fold.val}, **{p: "test" for p in fold.test}}
    t = rd.table[rd.table["prompt_id"].astype(str).isin(split)].copy()
    t["split"] = t["prompt_id"].astype(str).map(split)
    name = f"{rd.name}#fold{fold.index}" + (f"@{train_fraction:g}" if train_fraction < 1.0 else "")
    return replace(rd, name=name, table=t)


def training_cost_scale(rd: RoutingData) -> float:
    """USD per unit of normalised cost: the largest mean realised cost per query among the models on train."""
    train = rd.split("train")
    scale = float(train.groupby("model")["cost_usd"].mean().max())
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"{rd.name}: training costs are all zero; cannot normalise cost")
    return scale


@dataclass
class FoldSetup:
    """One fold ready to evaluate: its data, validation and test Worlds in one cost unit, the premium model."""

    data: RoutingData
    fold: Fold
    worlds: dict[str, World]
    infos: dict[str, WorldInfo]
    premium: int
    token_source: str
    notes: list[str] = field(default_factory=list)
    featurizer: Any = None  # the text featurizer fitted on the fold's training prompts (World.x)
    train_rows: Any = None  # the training rows with their features (`sim.linear.train_rows`): warm linear priors
    pair: tuple[int, int] | None = None  # (strong, weak) model indices of the APGR/CPT pair, set by compare
    aiq_bounds: tuple[float, float] = (0.0, 1.0)  # the fold's common cost range for AIQ, set by compare
    token_fit: dict = field(default_factory=dict)  # the token model's fit record ({"svi": meta}; empty: stand-in)

    @property
    def models(self) -> tuple[str, ...]:
        return self.infos["test"].models


def prepare_fold(rd: RoutingData, fold: Fold, *, seed: int = 0, tokens: str = "hierarchical", quick: bool = False,
                 premium: str | None = None, train_fraction: float = 1.0) -> FoldSetup:
    """Fit the token model on the fold's training prompts and build its validation and test Worlds.

    Args:
      rd: dataset with quality. fold: the fold. seed: token-model seed.
      tokens: "hierarchical" or "standin". quick: short SVI fit.
      premium: a model name to use as the premium model (default: the best by training quality, ties cheaper).
      train_fraction: share of the training prompts kept (learning curves).
    Returns:
      FoldSetup.
    """
    fd = fold_data(rd, fold, train_fraction, seed)
    preds, source, token_fit = _token_predictions(fd, ("val", "test"), seed, tokens, quick)
    scale = training_cost_scale(fd)
    # the query's text features for the linear routers, from a featurizer fitted on the fold's training prompts
    featurizer, feat_note = featurizer_for_table(fd.split("train"), d=32, seed=seed)
    worlds, infos = {}, {}
    for s in ("val", "test"):
        ids, _ = pivot_index(fd.table, s)
        worlds[s], infos[s] = world_from_table(fd.table, split=s, pred=preds[s], cost_scale=scale,
                                               x=transform_table(featurizer, fd.table, ids))
    models = infos["test"].models
    if infos["val"].models != models:
        raise ValueError(f"{rd.name} fold {fold.index}: validation and test splits have different models")
    train = fd.split("train")
    prem, _ = training_premium(fd, models, premium)
    rows = train_rows(train, models, featurizer)
    return FoldSetup(fd, fold, worlds, infos, prem, source, list(infos["test"].notes) + [feat_note],
                     featurizer=featurizer, train_rows=rows, token_fit=dict(token_fit))


class Outcomes(NamedTuple):
    """What a router got on every prompt of a World, for each knob value and episode."""

    quality: np.ndarray  # (G, E, N) quality of the chosen model, per World row (prompt)
    cost: np.ndarray  # (G, E, N) normalised realised cost
    arms: np.ndarray  # (G, E, N) int chosen model
    order: np.ndarray | None  # (G, E, N) World row served at each step (learners), None for routers without order


def outcomes_from_decisions(world: World, decisions: np.ndarray) -> Outcomes:
    """Outcomes of a router that chose `decisions` (G, E, N) or (G, N) for the World's rows."""
    d = np.asarray(decisions, np.int64)
    if d.ndim == 2:
        d = d[:, None, :]
    rows = np.arange(d.shape[-1])
    q, c = np.asarray(world.quality, np.float64), np.asarray(world.cost, np.float64)
    return Outcomes(q[rows, d], c[rows, d], d, None)


def lambda_cells(lams=LAMBDAS, gamma: float = GAMMA, form: str = "scaled") -> dict[str, np.ndarray]:
    """Hyper cells (lam, gam) of a lambda sweep: gam = lam * gamma ("scaled", default) or gamma ("research")."""
    lams = np.asarray(lams, np.float32)
    if form == "scaled":
        return {"lam": lams, "gam": (lams * np.float32(gamma)).astype(np.float32)}
    if form == "research":
        return {"lam": lams, "gam": np.full_like(lams, np.float32(gamma))}
    raise ValueError(f"uncertainty form must be 'scaled' or 'research', got {form!r}")


def kernel_sweep(world: World, info: WorldInfo, policy, *, cells: dict, episodes: int, seed: int,
                 overrides: dict | None = None, trajectories: bool = True):
    """A learner through the simulator over zipped Hyper cells.

    Args:
      world, info: the World. policy: factory or name. cells: Hyper field -> (G,) values taken together.
      episodes: E. seed: key seed (every router of a fold shares the episode streams).
      overrides: other Hyper fields (priors, exploration, ...).
      trajectories: return per-prompt Outcomes (else totals: (quality (G, E), cost (G, E)) per query means).
    Returns:
      Outcomes, or (mean quality (G, E), mean normalised cost (G, E)) without trajectories.
    """
    n = world.quality.shape[0]
    m, traj = run_policy(world, info, policy, episodes=episodes, seed=seed, steps=n,
                         trajectories="arms" if trajectories else False, hyper_overrides=overrides, cells=cells)
    if not trajectories:
        m = jax.device_get(m)
        return np.asarray(m.quality, np.float64) / n, np.asarray(m.cost, np.float64) / n
    order = np.asarray(jax.device_get(traj.query), np.int64)  # (G, E, T = N)
    arm_t = np.asarray(jax.device_get(traj.arm), np.int64)
    arms = np.empty_like(arm_t)
    np.put_along_axis(arms, order, arm_t, axis=-1)  # per World row
    out = outcomes_from_decisions(world, arms)
    return out._replace(order=order)
