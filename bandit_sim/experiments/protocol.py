"""`bandit-sim compare`: every baseline and the Thompson routers side by side, through the same kernel.

Protocol (DESIGN.md):
- Worlds are built from the validation and test splits; the token model (or the stand-in) and the MF router
  are fit on the training split only.
- An episode routes every test query once, in its own random order (T = N_test), so per-episode totals are
  directly comparable with the dataset's always-premium / oracle figures. All policies share the episode keys
  (common random numbers), so differences are paired across episodes.
- The operating point of each cost-aware router (lambda) is chosen on the validation split: the largest cost
  reduction whose quality retention (vs always-premium) is >= `target_retention`; if none reaches it, the
  highest retention. The chosen lambda is then used on the test split.
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
from pathlib import Path

import jax
import numpy as np

import jax.numpy as jnp

from bandit_sim.data.loaders import RoutingData, load_data
from bandit_sim.sim.episode import hyper_grid
from bandit_sim.sim.policies import Hyper, contextual_thompson, default_hyper, resolve_policy
from bandit_sim.sim.simulate import simulate
from bandit_sim.sim.token_model import predict_for_splits
from bandit_sim.sim.world import World, WorldInfo, world_from_table

__all__ = ["Setup", "prepare", "run_policy", "select_lambda", "select_models", "LAMBDA_GRID"]

# lambda values tried on the validation split (normalised cost: the premium model's typical cost is 1)
# (large values reach the cheapest models, so AIQ's sweep covers the whole cost range)
LAMBDA_GRID = np.array([0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                        10.0, 20.0, 50.0], np.float32)


@dataclass
class Setup:
    """Everything an experiment needs: data, worlds for val and test, token predictions, notes."""

    data: RoutingData
    worlds: dict[str, World]
    infos: dict[str, WorldInfo]
    token_source: str
    token_fit: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def models(self) -> tuple[str, ...]:
        return self.infos["test"].models


def _token_predictions(rd: RoutingData, splits, seed: int, method: str, quick: bool):
    """(mean, sd) predicted output tokens per split, aligned with `pivot_index`, from the chosen token model."""
    if method == "standin":
        return {s: None for s in splits}, "per-model train median and IQR/1.349 (stand-in)", {}
    return predict_for_splits(rd, splits, seed=seed, quick=quick)


def prepare(data: str | RoutingData, *, seed: int = 0, tokens: str = "hierarchical", quick: bool = False,
            splits=("val", "test"), arrival: dict[str, int] | None = None) -> Setup:
    """Load data, fit the token model on train and build the val/test Worlds.

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
        raise ValueError(f"dataset {data!r} has no quality signal ({rd.quality_kind}); routing needs quality "
                         f"(use it with `bandit-sim tokens`)")
    for s in splits + ("train",):
        if (rd.table["split"] == s).sum() == 0:
            raise ValueError(f"dataset {data!r} has no {s!r} split rows; routing experiments need train/val/test")
    preds, source, fit_info = _token_predictions(rd, splits, seed, tokens, quick)
    worlds, infos = {}, {}
    for s in splits:
        w, info = world_from_table(rd.table, split=s, pred=preds[s], arrival=arrival)
        worlds[s], infos[s] = w, info
    notes = list(rd.notes) + [f"predicted cost and uncertainty: {source}"] + list(infos[splits[-1]].notes)
    return Setup(rd, worlds, infos, source, fit_info, notes)


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
                  target_retention: float, lambdas=LAMBDA_GRID, hyper_overrides: dict | None = None) -> dict:
    """Choose lambda on a (validation) World: max cost reduction subject to retention >= target.

    Args:
      world, info: the validation World.
      policy: policy name; episodes/seed: as `run_policy`; gam: uncertainty weight.
      target_retention: quality retention vs always-premium to keep.
      lambdas: candidate values (one compiled call).
    Returns:
      dict with lam, retention, cost_reduction (mean over episodes at the chosen lam), met_target, and the
      whole curve (lams, retention, cost_reduction).
    """
    steps = world.quality.shape[0]
    prem, _ = run_policy(world, info, "always_premium", episodes=1, seed=seed)
    p = episode_stats(prem, info, steps)
    q_prem, c_prem = float(p.quality[0]), float(p.cost_usd[0])
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
