"""`bandit-sim compare`: every router in two tracks over prompt-level folds, with honest uncertainty.

The protocol (DESIGN.md, "Evaluation protocol"; folds and Worlds in `bandit_sim.experiments.protocol`):

- K folds over prompts (default 5, grouped by prompt, stratified by category). In each fold the fold's prompts are
  the test set; the rest gives a validation set (as large as the test set) and the training set.
- Two tracks, the same information for every learner in a track. *Cold*: no training data, every learner starts
  from its flat prior and learns online on the test prompts. *Warm*: the training prompts are available to every
  learner (Thompson: the Beta posterior after them; epsilon-greedy, simple utility and UCB1: their counts; the MF
  and k-NN routers: fitted on them; the best fixed model: chosen on them).
- Context is what a deployed router has at query time: the query text. Routers that read the benchmark's
  category label (one posterior per category) are reported in their own rows ending in ``_label``, never as the
  headline.
- Every knob is tuned on validation, the same way for every router: lambda over the same 12-point grid
  (`protocol.LAMBDAS`), a router's other knob (exploration schedule and prior strength, epsilon, c, k) over 4
  values, chosen by validation AIQ; then lambda by the target rule (the largest validation cost reduction whose
  validation quality retention is >= the target, else the highest retention). Nothing is chosen on test. The list
  of variants (`VARIANTS`) is fixed here, before any figure is seen.
- Utility U = pi - lam * (cost + gamma * sd) (`--uncertainty scaled`, default; gamma = 0.25), so lam = 0 is quality
  only and every cost-aware curve spans from its quality-only end to its cheapest end; `--uncertainty research`
  keeps the research form pi - lam * cost - gamma * sd.
- Definitions from `bandit_sim.experiments.metrics`: the premium model is the best by training quality (ties:
  cheaper; `--premium` names another); retention and cost reduction against it; AIQ over the union of every
  router's points in the fold (the oracle swept over lambda, so its AIQ bounds every router's); APGR and CPT by
  RouteLLM's procedure, the same for every router (each swept over its knob on the strong/weak pair);
  regret against the per-query oracle and against the best fixed model in hindsight under one utility for every
  router of a track (Thompson's chosen lambda of each fold); LinUCB, linear Thompson and k-NN read the same text
  features (World.x);
  one convergence definition.
- Intervals: a bootstrap over prompts within folds and over episodes together (the same resample for every router,
  so comparisons are paired); the figure is the mean over folds. A deterministic router therefore gets an interval
  of non-zero width. Significance: per-prompt utility differences (at Thompson's lambda of each fold), a paired
  t-test across prompts (the unit is the prompt), Holm over every comparison in the report; p-values are stored at
  full precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as sps
from tqdm.auto import tqdm

from bandit_sim.data.loaders import RoutingData, load_data
from bandit_sim.data.text_features import transform_table
from bandit_sim.experiments import metrics as M
from bandit_sim.experiments.protocol import (GAMMA, LAMBDAS, ORACLE_LAMBDAS, FoldSetup, Outcomes, kernel_sweep,
                                             lambda_cells, make_folds, outcomes_from_decisions, prepare_fold)
from bandit_sim.experiments.report import command_line, fmt, md_table, savefig, short_name, write_json
from bandit_sim.experiments.stats import holm
from bandit_sim.router import knn as KNN
from bandit_sim.router import mf as MF
from bandit_sim.sim.linear import flat_linear_prior, linear_posterior
from bandit_sim.sim.priors import WARM_STRENGTH, warm_prior_from_train
from hierarchical.storage import atomic_write

__all__ = ["run_compare", "VARIANTS", "Variant", "TRACKS", "select_on_validation", "check_fractions",
           "LEARNING_FRACTIONS"]

TRACKS = ("cold", "warm")
TARGET_COST_REDUCTION = 0.60  # the research target read beside the retention target (reported, not tuned for)


class Variant(NamedTuple):
    """One router of the comparison: how it runs and which knob values it is tuned over."""

    name: str
    track: str  # "cold" | "warm"
    kind: str  # "learner" (the simulator), "mf", "knn", "best_fixed", "threshold", "reference"
    policy: str | None = None  # policies.REGISTRY name for learners
    knob: str | None = None  # the secondary knob's name
    knob_values: tuple = ()  # each: (label, settings dict)
    label_aware: bool = False


_EXPLORE = {"research": {"explore_decay": 0.95, "min_explore": 0.05},
            "decay": {"explore_decay": 0.95, "min_explore": 0.0},
            "fast_decay": {"explore_decay": 0.8, "min_explore": 0.0},
            "none": {"explore_decay": 0.0, "min_explore": 0.0}}
_COLD_TS = tuple((k, dict(v)) for k, v in _EXPLORE.items())
_WARM_TS = tuple((f"{e}/{s}", {**_EXPLORE[e], "strength": st})
                 for e in ("research", "none") for s, st in (("all", WARM_STRENGTH), ("50", 50.0)))

# linear routers on the query text (World.x), both from a flat prior centred on the middle of the quality range:
# the bias weight (feature 0) ~ N(0.5, 30 v), the slopes ~ N(0, v), noise variance sigma^2. Linear Thompson (pure
# Thompson sampling): v = 0.03 s and sigma^2 = 0.25 s, tuned over the posterior scale s -- Agrawal & Goyal's v^2:
# the posterior mean does not depend on s (the ridge ratio v / sigma^2 is fixed), its covariance is proportional to
# s, so s sets how widely Thompson explores around the ridge estimate. LinUCB: its alpha, v = 1 (ridge), sigma^2 =
# 0.25 (the largest a [0, 1] outcome can have). Warm: the exact posterior after the fold's training rows.
# (Revision note: until 2026-12-03 linear Thompson was tuned over the prior variance {0.03, 0.1, 0.3, 1} at noise
# 0.25 and both linear routers' priors were centred at 0; see REVISIONS.)
_LIN_SCALE = tuple((f"1/{int(round(1 / s))}", {"var": 0.03 * s, "noise": 0.25 * s, "bias_var": 0.9 * s})
                   for s in (0.25, 0.0625, 0.015625, 0.00390625))
_LIN_ALPHA = tuple((str(a), {"ucb_c": a, "var": 1.0, "bias_var": 30.0}) for a in (0.05, 0.2, 0.5, 1.0))
LIN_BIAS_MEAN = 0.5
LIN_NOISE = 0.25

VARIANTS: tuple[Variant, ...] = (
    # ---- cold: no training data
    Variant("thompson", "cold", "learner", "thompson", "exploration", _COLD_TS),
    Variant("epsilon_greedy", "cold", "learner", "epsilon_greedy", "epsilon",
            tuple((str(e), {"epsilon": e}) for e in (0.01, 0.03, 0.1, 0.3))),
    Variant("ucb1", "cold", "learner", "ucb1", "c", tuple((str(c), {"ucb_c": c}) for c in (0.05, 0.2, 0.5, 1.0))),
    Variant("simple_utility", "cold", "learner", "simple_utility", None, (("flat", {}),)),
    Variant("linear_thompson", "cold", "learner", "linear_thompson", "posterior scale", _LIN_SCALE),
    Variant("linucb", "cold", "learner", "linucb", "alpha", _LIN_ALPHA),
    Variant("thompson_label", "cold", "learner", "contextual_thompson", "exploration", _COLD_TS, label_aware=True),
    # ---- warm: the training prompts are available to every learner
    Variant("thompson", "warm", "learner", "thompson", "exploration/prior strength", _WARM_TS),
    Variant("epsilon_greedy", "warm", "learner", "epsilon_greedy", "epsilon",
            tuple((str(e), {"epsilon": e}) for e in (0.01, 0.03, 0.1, 0.3))),
    Variant("ucb1", "warm", "learner", "ucb1", "c", tuple((str(c), {"ucb_c": c}) for c in (0.05, 0.2, 0.5, 1.0))),
    Variant("simple_utility", "warm", "learner", "simple_utility", "prior strength",
            tuple((str(s), {"strength": s}) for s in (WARM_STRENGTH, 200.0, 50.0, 20.0))),
    Variant("linear_thompson", "warm", "learner", "linear_thompson", "posterior scale", _LIN_SCALE),
    Variant("linucb", "warm", "learner", "linucb", "alpha", _LIN_ALPHA),
    Variant("mf_router", "warm", "mf"),
    Variant("knn_router", "warm", "knn", None, "k", tuple((str(k), {"k": k}) for k in (5, 10, 25, 50))),
    Variant("best_fixed", "warm", "best_fixed"),
    Variant("threshold", "warm", "threshold"),
    Variant("thompson_label", "warm", "learner", "contextual_thompson", "exploration/prior strength", _WARM_TS,
            label_aware=True),
)
"""The frozen list of router variants, per track (references -- always_premium, cheapest, random, oracle and the
zero router -- are added to both tracks)."""

REFERENCES = ("always_premium", "cheapest", "random", "oracle")
REVISIONS = ("variant list revised on 2026-12-03 after test figures had been published: linear_thompson's knob was "
             "its prior variance {0.03, 0.1, 0.3, 1} (noise 0.25) and is now the posterior scale s in {1/4, 1/16, "
             "1/64, 1/256} (slope prior variance 0.03 s, noise 0.25 s); the flat prior of both linear routers "
             "(linear_thompson and linucb) was centred at 0 and now centres the bias weight at 0.5 with a 30 times "
             "wider variance than the slopes. Both changes were chosen on validation figures of two folds only; "
             "every other variant is unchanged.",
             "protocol corrections on 2026-12-03 (a review against DESIGN.md, after test figures had been published; "
             "no knob or grid was changed): the k-NN router read the MF router's text vectors (18 hand-made features "
             "and an SVD of word n-grams) and now reads the linear routers' features (World.x without its bias), as "
             "DESIGN.md asks (LinUCB and k-NN on the same text features); simple_utility, which can run without "
             "training data, was in the warm track only and is now in the cold track too (flat prior, no knob); "
             "regret was measured at each router's own chosen λ (λ = 0 for the references) and is now measured "
             "under one utility per fold for every router of a track (thompson's chosen λ).",)
"""Changes to `VARIANTS` after figures were seen, printed in every report's notes."""
LEARNING_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
"""Shares of each fold's training prompts behind `compare --learning-curve` (validation and test unchanged)."""


@dataclass
class Settings:
    episodes: int = 16  # episodes per learner and lambda (validation, test and the strong/weak pair alike)
    bootstrap: int = 200
    gamma: float = GAMMA
    form: str = "scaled"
    target: float = 0.95
    conv_threshold: float = 0.05
    quick: bool = False


@dataclass
class RouterRun:
    """A router's result on one fold: its test outcomes over the sweep, the chosen index and knob."""

    outcomes: Outcomes  # (G, E, N)
    chosen: int  # index into the sweep chosen on validation
    sweep: list  # the swept values (lambda, or the threshold)
    knob: Any = None  # the secondary knob value chosen on validation
    val: dict = field(default_factory=dict)  # validation retention / cost reduction at the chosen point
    knob_scores: dict = field(default_factory=dict)  # validation AIQ per knob value
    lam: float | None = None  # the chosen lambda (None for routers without one)
    pair: dict | None = None  # APGR/CPT on the strong/weak pair


# ---------------------------------------------------------------------------------------------------- selection


def select_on_validation(q: np.ndarray, c: np.ndarray, q_prem: float, c_prem: float, target: float) -> tuple[int, dict]:
    """The target rule: the point with the largest validation cost reduction whose retention is >= target.

    Args:
      q, c: (G,) mean validation quality and normalised cost per sweep point. q_prem, c_prem: always-premium's.
      target: the retention target.
    Returns:
      (index, {"retention", "cost_reduction", "met_target"}) at the chosen point (the highest retention if none
      reaches the target).
    """
    ret = np.asarray(q, np.float64) / q_prem
    red = 1.0 - np.asarray(c, np.float64) / c_prem
    ok = ret >= target
    j = int(np.argmax(np.where(ok, red, -np.inf))) if ok.any() else int(np.argmax(ret))
    return j, {"retention": float(ret[j]), "cost_reduction": float(red[j]), "met_target": bool(ok.any())}


def _bounds(world) -> tuple[float, float]:
    c = np.asarray(world.cost, np.float64)
    q = np.asarray(world.quality, np.float64)
    orc = M.oracle_sweep(q, c, ORACLE_LAMBDAS)
    pts = c[np.arange(c.shape[0]), orc].mean(-1)
    return float(min(pts.min(), c.mean(0).min())), float(max(pts.max(), c.mean(0).max()))


def _val_aiq(q: np.ndarray, c: np.ndarray, bounds) -> float:
    return M.aiq(np.asarray(c), np.asarray(q), *bounds)


# ---------------------------------------------------------------------------------------------------- one fold


def _cost_term(world, gamma: float, form: str) -> np.ndarray:
    pc, pu = np.asarray(world.pred_cost, np.float64), np.asarray(world.pred_unc, np.float64)
    return pc + gamma * pu if form == "scaled" else pc


def _host_lambda_router(fs: FoldSetup, qhat: dict, st: Settings, lams=LAMBDAS) -> dict:
    """Decisions (L, N) per split of a router that maximises qhat - lam * (cost + gamma * sd) (MF, k-NN)."""
    out = {}
    for split in ("val", "test"):
        w = fs.worlds[split]
        pu = np.asarray(w.pred_unc, np.float64)
        cost = _cost_term(w, st.gamma, st.form)
        u = qhat[split][None] - np.asarray(lams, np.float64)[:, None, None] * cost[None]
        if st.form == "research":
            u = u - st.gamma * pu[None]
        out[split] = np.argmax(np.where(np.asarray(w.mask)[None], u, -np.inf), -1)
    return out


def _premium_means(fs: FoldSetup, split: str) -> tuple[float, float]:
    w = fs.worlds[split]
    return float(np.asarray(w.quality)[:, fs.premium].mean()), float(np.asarray(w.cost)[:, fs.premium].mean())


def _choose(fs: FoldSetup, val_curves: dict, st: Settings) -> tuple[Any, int, dict, dict]:
    """Secondary knob by validation AIQ, then the sweep point by the target rule."""
    bounds = _bounds(fs.worlds["val"])
    qp, cp = _premium_means(fs, "val")
    scores = {lab: _val_aiq(q, c, bounds) for lab, (q, c) in val_curves.items()}
    best = max(scores, key=lambda lab: (scores[lab], -list(scores).index(lab)))
    q, c = val_curves[best]
    j, val = select_on_validation(q, c, qp, cp, st.target)
    return best, j, val, scores


def _learner(fs: FoldSetup, v: Variant, st: Settings, seed: int) -> RouterRun:
    wv, iv, wt, it = fs.worlds["val"], fs.infos["val"], fs.worlds["test"], fs.infos["test"]
    cells = lambda_cells(LAMBDAS, st.gamma, st.form)
    contextual = v.policy == "contextual_thompson"
    cats = it.categories if contextual else None

    def overrides(settings: dict) -> dict:
        if v.policy in ("linear_thompson", "linucb"):
            prior = flat_linear_prior(len(it.models), wt.x.shape[1], settings["var"], settings.get("noise", LIN_NOISE),
                                      bias_mean=LIN_BIAS_MEAN, bias_var=settings["bias_var"])
            if v.track == "warm":
                r = fs.train_rows
                prior = linear_posterior(prior, r.x, r.quality, r.arm)
            o = {"lin_mean": prior.mean, "lin_cov": prior.cov, "lin_noise": prior.noise, "explore_decay": 0.0,
                 "min_explore": 0.0}
            if "ucb_c" in settings:
                o["ucb_c"] = settings["ucb_c"]
            return o
        o = {k: val for k, val in settings.items() if k != "strength"}
        if v.track == "warm":
            a, b = warm_prior_from_train(fs.data, it.models, cats, strength=settings.get("strength", WARM_STRENGTH))
            o.update(prior_alpha=a, prior_beta=b)
        elif contextual:
            o.update(prior_alpha=np.ones((it.n_categories, len(it.models)), np.float32),
                     prior_beta=np.ones((it.n_categories, len(it.models)), np.float32))
        return o

    val_curves = {}
    for lab, settings in v.knob_values:
        # one compiled program per policy and dataset: validation, test and the strong/weak pair run the same
        # shapes (same episodes, the same 12 cells, trajectories on; the pair is a mask on the test World)
        o = kernel_sweep(wv, iv, v.policy, cells=cells, episodes=st.episodes, seed=seed + 1,
                         overrides=overrides(settings))
        val_curves[lab] = (o.quality.mean((1, 2)), o.cost.mean((1, 2)))
    best, j, val, scores = _choose(fs, val_curves, st)
    settings = dict(v.knob_values)[best]
    out = kernel_sweep(wt, it, v.policy, cells=cells, episodes=st.episodes, seed=seed, overrides=overrides(settings))
    run = RouterRun(out, j, LAMBDAS.tolist(), best, val, scores, float(LAMBDAS[j]))
    run.pair = _pair_learner(fs, v, overrides(settings), st, seed)
    return run


def _pair_learner(fs: FoldSetup, v: Variant, over: dict, st: Settings, seed: int) -> dict | None:
    """A learner swept over lambda on the strong/weak pair: the test World with only those two models available."""
    if fs.pair is None:
        return None
    w, info = fs.worlds["test"], fs.infos["test"]
    keep = np.zeros(w.quality.shape[1], bool)
    keep[list(fs.pair)] = True
    w2 = w._replace(mask=np.asarray(w.mask) & keep[None, :])
    out = kernel_sweep(w2, info, v.policy, cells=lambda_cells(LAMBDAS, st.gamma, st.form), episodes=st.episodes,
                       seed=seed + 2, overrides=over)
    share = (out.arms == fs.pair[0]).mean((1, 2))
    return _pair_summary(fs, share, out.quality.mean((1, 2)))


def _pair_summary(fs: FoldSetup, share: np.ndarray, quality: np.ndarray) -> dict:
    q = np.asarray(fs.worlds["test"].quality, np.float64)
    s, w = fs.pair
    sh, pgr = M.sweep_pgr(share, quality, q[:, s].mean(), q[:, w].mean())
    return {"apgr": M.apgr_from_sweep(sh, pgr), "cpt50": M.cpt_from_sweep(sh, pgr, 0.5),
            "cpt80": M.cpt_from_sweep(sh, pgr, 0.8)}


def _pair_host(fs: FoldSetup, decisions: np.ndarray) -> dict | None:
    """APGR/CPT of a deterministic router swept over its knob, restricted to the pair: decisions (L, N) on the
    pair's two columns (0 = strong)."""
    if fs.pair is None:
        return None
    q = np.asarray(fs.worlds["test"].quality, np.float64)[:, list(fs.pair)]
    d = np.asarray(decisions)
    return _pair_summary(fs, (d == 0).mean(-1), q[np.arange(q.shape[0]), d].mean(-1))


def _host_run(fs: FoldSetup, dec: dict, st: Settings, sweep: list, qp_cp=None, knob=None, scores=None) -> RouterRun:
    wv = fs.worlds["val"]
    q, c = np.asarray(wv.quality, np.float64), np.asarray(wv.cost, np.float64)
    rows = np.arange(q.shape[0])
    qv, cv = q[rows, dec["val"]].mean(-1), c[rows, dec["val"]].mean(-1)
    j, val = select_on_validation(qv, cv, *_premium_means(fs, "val"), st.target)
    return RouterRun(outcomes_from_decisions(fs.worlds["test"], dec["test"]), j, list(sweep), knob, val,
                     scores or {})


def _mf(fs: FoldSetup, st: Settings, seed: int) -> RouterRun:
    rd = fs.data
    fitted = MF.fit(rd.split("train"), rd.split("val"), seed=seed, models=list(fs.models),
                    **({"max_steps": 300} if st.quick else {}))
    qhat = {}
    for split in ("val", "test"):
        info = fs.infos[split]
        qm = MF.query_matrix(rd.split(split), list(info.models))
        pred = MF.predict_quality(fitted, qm)
        row = {p: i for i, p in enumerate(qm.prompt_id)}
        qhat[split] = pred[[row[p] for p in info.prompt_ids]]
    dec = _host_lambda_router(fs, qhat, st)
    run = _host_run(fs, dec, st, LAMBDAS.tolist())
    run.lam = float(LAMBDAS[run.chosen])
    run.pair = _pair_qhat(fs, qhat["test"], st)
    return run


def _pair_qhat(fs: FoldSetup, qhat_test: np.ndarray, st: Settings) -> dict | None:
    if fs.pair is None:
        return None
    w = fs.worlds["test"]
    cols = list(fs.pair)
    cost = _cost_term(w, st.gamma, st.form)[:, cols]
    u = qhat_test[:, cols][None] - LAMBDAS.astype(np.float64)[:, None, None] * cost[None]
    return _pair_host(fs, np.argmax(u, -1))


def _text_vectors(fs: FoldSetup) -> dict:
    """The k-NN router's query vectors: the linear routers' features (World.x, the fold's text featurizer fitted on
    its training prompts, or the user's features) without the bias column, so LinUCB, linear Thompson and k-NN read
    the same text features (DESIGN.md, baselines)."""
    ids = fs.data.split("train")["prompt_id"].astype(str).drop_duplicates().tolist()
    out = {"train": (ids, transform_table(fs.featurizer, fs.data.table, ids)[:, 1:])}
    for split in ("val", "test"):
        out[split] = (list(fs.infos[split].prompt_ids), np.asarray(fs.worlds[split].x, np.float32)[:, 1:])
    return out


def _knn(fs: FoldSetup, st: Settings, seed: int, vectors: dict) -> RouterRun:
    ids, x_train = vectors["train"]
    train = fs.data.split("train")
    qt = train.pivot_table(index="prompt_id", columns="model", values="quality", aggfunc="first")
    qt = qt.reindex(index=ids, columns=list(fs.models)).to_numpy(np.float32)
    v = next(x for x in VARIANTS if x.name == "knn_router")
    decs, val_curves = {}, {}
    for lab, settings in v.knob_values:
        # no feature beyond the bias (a table with neither text nor features): every training prompt is a neighbour
        k = min(int(settings["k"]), len(ids)) if x_train.shape[1] else len(ids)
        f = KNN.fit(x_train, qt, k)
        qhat = {s: KNN.predict_quality(f, vectors[s][1]) for s in ("val", "test")}
        decs[lab] = (_host_lambda_router(fs, qhat, st), qhat["test"])
        wv = fs.worlds["val"]
        q, c = np.asarray(wv.quality, np.float64), np.asarray(wv.cost, np.float64)
        d = decs[lab][0]["val"]
        rows = np.arange(q.shape[0])
        val_curves[lab] = (q[rows, d].mean(-1), c[rows, d].mean(-1))
    best, j, val, scores = _choose(fs, val_curves, st)
    dec, qhat_test = decs[best]
    run = RouterRun(outcomes_from_decisions(fs.worlds["test"], dec["test"]), j, LAMBDAS.tolist(), best, val, scores,
                    float(LAMBDAS[j]))
    run.pair = _pair_qhat(fs, qhat_test, st)
    return run


def _best_fixed(fs: FoldSetup, st: Settings) -> RouterRun:
    """The best fixed model chosen on the training prompts at each lambda: argmax mean quality - lam * mean cost."""
    train = fs.data.split("train")
    g = train.groupby("model")
    q = g["quality"].mean().reindex(list(fs.models)).to_numpy(np.float64)
    c = g["cost_usd"].mean().reindex(list(fs.models)).to_numpy(np.float64) / fs.infos["test"].cost_scale
    pick = np.argmax(q[None] - LAMBDAS.astype(np.float64)[:, None] * c[None], -1)  # (L,)
    dec = {s: np.repeat(pick[:, None], fs.worlds[s].quality.shape[0], 1) for s in ("val", "test")}
    run = _host_run(fs, dec, st, LAMBDAS.tolist())
    run.lam = float(LAMBDAS[run.chosen])
    if fs.pair is not None:
        cols = list(fs.pair)
        pick2 = np.argmax(q[cols][None] - LAMBDAS.astype(np.float64)[:, None] * c[cols][None], -1)
        run.pair = _pair_host(fs, np.repeat(pick2[:, None], fs.worlds["test"].quality.shape[0], 1))
    return run


def _threshold(fs: FoldSetup, st: Settings) -> RouterRun:
    """Premium when the query is long (log prompt tokens > threshold), else the cheapest predicted model; the
    threshold is swept over 12 quantiles of the validation prompts' lengths."""
    wv = fs.worlds["val"]
    thr = np.quantile(np.asarray(wv.features)[:, 0], np.linspace(0.0, 1.0, len(LAMBDAS)))
    thr = np.concatenate([thr[:-1], [np.inf]])  # the last point: never premium

    def dec(w, prem, cheap_cols=None):
        x = np.asarray(w.features)[:, 0]
        pc = np.where(np.asarray(w.mask), np.asarray(w.pred_cost), np.inf)
        if cheap_cols is not None:
            pc = pc[:, cheap_cols]
        cheap = np.argmin(pc, -1)
        return np.where(x[None] > thr[:, None], prem, cheap[None])

    d = {s: dec(fs.worlds[s], fs.premium) for s in ("val", "test")}
    run = _host_run(fs, d, st, thr.tolist())
    if fs.pair is not None:
        run.pair = _pair_host(fs, dec(fs.worlds["test"], 0, list(fs.pair)))
    return run


def _references(fs: FoldSetup, st: Settings, seed: int) -> dict[str, RouterRun]:
    w = fs.worlds["test"]
    n, k = w.quality.shape
    q, c = np.asarray(w.quality, np.float64), np.asarray(w.cost, np.float64)
    mask = np.asarray(w.mask)
    out = {}
    prem = np.full((1, n), fs.premium)
    out["always_premium"] = RouterRun(outcomes_from_decisions(w, prem), 0, [None])
    cheap = np.argmin(np.where(mask, np.asarray(w.pred_cost), np.inf), -1)
    out["cheapest"] = RouterRun(outcomes_from_decisions(w, cheap[None]), 0, [None])
    rng = np.random.default_rng(seed)
    g = np.where(mask[None], rng.random((st.episodes, n, k)), -1.0)
    rnd = np.argmax(g, -1)  # (E, N)
    out["random"] = RouterRun(outcomes_from_decisions(w, rnd[None]), 0, [None])
    orc = M.oracle_sweep(np.where(mask, q, -np.inf), c, ORACLE_LAMBDAS)
    out["oracle"] = RouterRun(outcomes_from_decisions(w, orc), 0, ORACLE_LAMBDAS.tolist())
    if fs.pair is not None:
        s, wk = fs.pair
        # the random router's knob: the probability p of a strong call (0 = strong, 1 = weak)
        out["random"].pair = _pair_host(fs, (rng.random(n)[None] >= np.linspace(0, 1, 11)[:, None]).astype(int))
        q2, c2 = q[:, [s, wk]], c[:, [s, wk]]
        out["oracle"].pair = _pair_host(fs, M.oracle_sweep(q2, c2, ORACLE_LAMBDAS))
    return out


def _pick_pair(fs: FoldSetup) -> tuple[int, int] | None:
    """(strong, weak) for APGR/CPT: strong = the premium model, weak = the best training-quality model costing
    <= 10% of the premium's training cost (else the cheapest scoring below it); None when there is no gap."""
    train = fs.data.split("train")
    g = train.groupby("model")
    models = list(fs.models)
    q = g["quality"].mean().reindex(models).to_numpy(np.float64)
    c = g["cost_usd"].mean().reindex(models).to_numpy(np.float64)
    s = fs.premium
    below = [j for j in range(len(models)) if q[j] < q[s]]
    if not below:
        return None
    cheap = [j for j in below if c[j] <= 0.1 * c[s]]
    w = max(cheap, key=lambda j: q[j]) if cheap else min(below, key=lambda j: c[j])
    qt = np.asarray(fs.worlds["test"].quality, np.float64)
    if not qt[:, s].mean() > qt[:, w].mean():
        return None
    return s, w


def _run_fold(fs: FoldSetup, st: Settings, seed: int, bar=None, tracks=TRACKS,
              pair: bool = True) -> dict[str, dict[str, RouterRun]]:
    fs.pair = _pick_pair(fs) if pair else None
    vectors = None
    runs: dict[str, dict[str, RouterRun]] = {t: {} for t in tracks}
    for v in VARIANTS:
        if v.track not in tracks:
            continue
        if bar is not None:
            bar.set_postfix_str(f"fold {fs.fold.index} {v.track} {v.name}")
        if v.kind == "learner":
            runs[v.track][v.name] = _learner(fs, v, st, seed)
        elif v.kind == "mf":
            runs[v.track][v.name] = _mf(fs, st, seed)
        elif v.kind == "knn":
            vectors = vectors or _text_vectors(fs)
            runs[v.track][v.name] = _knn(fs, st, seed, vectors)
        elif v.kind == "best_fixed":
            runs[v.track][v.name] = _best_fixed(fs, st)
        elif v.kind == "threshold":
            runs[v.track][v.name] = _threshold(fs, st)
        else:
            raise ValueError(f"unknown variant kind {v.kind!r}")
    refs = _references(fs, st, seed)
    for t in tracks:
        runs[t].update(refs)
    return runs


# ---------------------------------------------------------------------------------------------------- aggregation


class _Boot(NamedTuple):
    we: np.ndarray  # (B, E_max) episode weights (multinomial counts), per fold
    wn: np.ndarray  # (B, N) prompt weights


def _boot_weights(n: int, e_max: int, b: int, rng) -> _Boot:
    wn = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
    we = rng.multinomial(e_max, np.full(e_max, 1.0 / e_max), size=b).astype(np.float64)
    return _Boot(we, wn)


def _means(x: np.ndarray, bw: _Boot | None) -> np.ndarray:
    """Mean of x (G, E, N) over episodes and prompts: (G,) for the point estimate, (B, G) under the bootstrap."""
    if bw is None:
        return x.mean((1, 2))
    e = x.shape[1]
    we = bw.we[:, :e] if e > 1 else np.ones((bw.we.shape[0], 1))
    we = we / we.sum(1, keepdims=True)
    xe = np.einsum("be,gen->bgn", we, x)
    return np.einsum("bgn,bn->bg", xe, bw.wn) / bw.wn.sum(1)[:, None]


def _fold_stats(runs: dict[str, RouterRun], fs: FoldSetup, bw: _Boot | None) -> dict[str, dict[str, np.ndarray]]:
    """Per router: retention, cost reduction (at the chosen point) and AIQ (over the sweep), point or bootstrap."""
    w = fs.worlds["test"]
    q_all, c_all = np.asarray(w.quality, np.float64), np.asarray(w.cost, np.float64)
    prem = runs["always_premium"].outcomes
    qp, cp = _means(prem.quality, bw)[..., 0], _means(prem.cost, bw)[..., 0]
    curves, out = {}, {}
    for name, r in runs.items():
        mq, mc = _means(r.outcomes.quality, bw), _means(r.outcomes.cost, bw)  # (..., G)
        curves[name] = (mc, mq)
        out[name] = {"quality": mq[..., r.chosen], "cost": mc[..., r.chosen],
                     "quality_retention": mq[..., r.chosen] / qp, "cost_reduction": 1.0 - mc[..., r.chosen] / cp}
    # zero router: the models' own points
    zq = q_all.mean(0) if bw is None else bw.wn @ q_all / bw.wn.sum(1)[:, None]
    zc = c_all.mean(0) if bw is None else bw.wn @ c_all / bw.wn.sum(1)[:, None]
    curves["zero_router"] = (zc, zq)
    lo, hi = fs.aiq_bounds
    for name, (c, q) in curves.items():
        if bw is None:
            a = M.aiq(c, q, lo, hi)
            a_code = M.aiq_routerbench_code(c, q, hi)
        else:
            a = np.array([M.aiq(c[i], q[i], lo, hi) for i in range(c.shape[0])])
            a_code = np.array([M.aiq_routerbench_code(c[i], q[i], hi) for i in range(c.shape[0])])
        out.setdefault(name, {})["aiq"] = a
        out[name]["aiq_routerbench_code"] = a_code
    return out


REGRET_LAMBDA_OF = "thompson"
"""Regret is measured under one utility per fold for every router of a track: this router's chosen lambda (the
lambda of the significance tests too)."""
AIQ_FOCAL = "linear_thompson"
"""The router whose AIQ is set against every other router's of its track, paired (`_aiq_differences`)."""


def _aiq_differences(point: dict[str, float], boots: dict[str, np.ndarray]) -> dict:
    """AIQ of `AIQ_FOCAL` minus each other router's of the track: fold-mean difference, 95% interval and the share
    of bootstrap replicates where it is <= 0, from the same resample of prompts and episodes for both (paired).

    Args:
      point: router -> fold-mean AIQ. boots: router -> (B,) fold-mean AIQ per bootstrap replicate.
    Returns:
      {"focal": name, "vs": {other: {"difference", "ci95", "share_not_above"}}}; empty "vs" when the focal router
      is not in the track.
    """
    if AIQ_FOCAL not in point:
        return {"focal": AIQ_FOCAL, "vs": {}}
    vs = {}
    for name in point:
        if name == AIQ_FOCAL:
            continue
        d = np.asarray(boots[AIQ_FOCAL], np.float64) - np.asarray(boots[name], np.float64)
        ci = _ci(point[AIQ_FOCAL] - point[name], d)
        d = d[np.isfinite(d)]
        vs[name] = {"difference": ci["mean"], "ci95": ci["ci95"],
                    "share_not_above": float(np.mean(d <= 0)) if d.size else float("nan")}
    return {"focal": AIQ_FOCAL, "vs": vs}


def _ci(point: float, boots: np.ndarray) -> dict:
    b = np.asarray(boots, np.float64)
    b = b[np.isfinite(b)]
    lo, hi = (np.percentile(b, [2.5, 97.5]) if b.size else (np.nan, np.nan))
    return {"mean": float(point), "ci95": [float(lo), float(hi)]}


def _regret_and_convergence(r: RouterRun, fs: FoldSetup, st: Settings, lam: float) -> dict:
    """Cumulative regret per episode of the router at its chosen point, under one utility for every router of the
    track (quality - lam * realised cost, lam = `REGRET_LAMBDA_OF`'s chosen lambda of the fold), against the
    per-query oracle and the best fixed model in hindsight; and the convergence time of learners."""
    w = fs.worlds["test"]
    q_all, c_all = np.asarray(w.quality, np.float64), np.asarray(w.cost, np.float64)
    mask = np.asarray(w.mask)
    q_rows = np.where(mask, q_all, -np.inf)
    qg, cg = r.outcomes.quality[r.chosen], r.outcomes.cost[r.chosen]  # (E, N)
    fixed = M.best_fixed_model(q_all, c_all, lam)
    reg_o = M.regret_per_step(qg, cg, q_rows[None], c_all[None], lam, "oracle").sum(-1)
    reg_f = M.regret_per_step(qg, cg, q_all[None], c_all[None], lam, "best_fixed", fixed).sum(-1)
    out = {"regret_vs_oracle": reg_o, "regret_vs_best_fixed": reg_f}
    if r.outcomes.order is not None:
        order = r.outcomes.order[r.chosen]  # (E, T)
        qs = np.take_along_axis(qg, order, -1)
        cs = np.take_along_axis(cg, order, -1)
        inst = M.regret_per_step(qs, cs, q_all[order], c_all[order], lam, "best_fixed", fixed)
        conv = M.convergence_time(inst, st.conv_threshold, 50)
        out["convergence_queries"] = conv.queries.astype(np.float64)
        out["converged_share"] = conv.converged.astype(np.float64)
    return out


def _per_prompt_utility(r: RouterRun, lam: float, n_rows: int) -> np.ndarray:
    """(N,) mean over episodes of quality - lam * cost at the chosen point."""
    return (r.outcomes.quality[r.chosen] - lam * r.outcomes.cost[r.chosen]).mean(0)


def _utility_at(r: RouterRun, lam: float) -> np.ndarray:
    return _per_prompt_utility(r, lam, r.outcomes.quality.shape[-1])


# ---------------------------------------------------------------------------------------------------- run


def run_compare(data: str | RoutingData, out: Path, *, folds: int = 5, episodes: int = 16, seed: int = 0,
                tokens: str = "hierarchical", target_retention: float = 0.95, premium: str | None = None,
                uncertainty: str = "scaled", bootstrap: int = 200, quick: bool = False, argv=None,
                progress: bool = True, prices: dict | None = None,
                learning_curve: bool | tuple = False) -> dict:
    """Run the comparison and write DIR/metrics.json, DIR/report.md and PNG plots.

    Args:
      data: dataset name or path (or a loaded RoutingData); out: output folder.
      folds: K prompt-level folds. episodes: test episodes per learner and lambda. seed: base seed.
      tokens: "hierarchical" or "standin" token predictions for the cost and uncertainty terms.
      target_retention: the retention target of the lambda selection on validation.
      premium: a model to use as the premium model (default: the best by training quality).
      uncertainty: "scaled" (lam * (cost + gamma * sd), default) or "research" (lam * cost + gamma * sd).
      bootstrap: bootstrap replicates for the intervals.
      quick: small settings (smoke tests).
      argv: the command line to record (default sys.argv). progress: a progress bar.
      learning_curve: also run the warm track with a share of the training prompts (True: `LEARNING_FRACTIONS`,
        or a tuple of shares in (0, 1]); adds ``learning_curve`` to metrics.json, a report section and
        learning_curve.png.
    Returns:
      The metrics dict written to metrics.json.
    """
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = command_line(argv)
    rd = data if isinstance(data, RoutingData) else load_data(data, seed=seed)
    if not rd.has_quality:
        raise ValueError(f"dataset {rd.name!r} has no quality signal ({rd.quality_kind}); routing needs quality")
    M.check_premium(premium, rd.models, f"dataset {rd.name!r}")  # before the minutes of fold work
    if not 0 < target_retention <= 1.5:
        raise ValueError(f"target_retention must be in (0, 1.5], got {target_retention}")
    for name, v, lo in (("folds", folds, 2), ("episodes", episodes, 1), ("bootstrap", bootstrap, 10)):
        if int(v) < lo:
            raise ValueError(f"{name} must be >= {lo}, got {v}")
    st = Settings(episodes=int(episodes), bootstrap=int(bootstrap), form=uncertainty, target=target_retention,
                  quick=quick)
    lambda_cells(LAMBDAS, st.gamma, st.form)  # validates the form
    fold_list, fold_notes = make_folds(rd.table, folds, seed)
    rng = np.random.default_rng(seed + 1)
    per_fold, setups = [], []
    bar = tqdm(fold_list, desc=f"compare {rd.name}", unit="fold", disable=not progress)
    for fold in bar:
        fs = prepare_fold(rd, fold, seed=seed, tokens=tokens, quick=quick, premium=premium)
        fs.aiq_bounds = _bounds(fs.worlds["test"])
        runs = _run_fold(fs, st, seed, bar)
        per_fold.append(runs)
        setups.append(fs)
    result = _aggregate(rd, setups, per_fold, st, rng, seed)
    if learning_curve:
        fractions = LEARNING_FRACTIONS if learning_curve is True else tuple(learning_curve)
        result["learning_curve"] = _learning_curve(rd, fold_list, setups, per_fold, st, seed, fractions,
                                                   dict(tokens=tokens, quick=quick, premium=premium), progress)
    result.update(command=cmd, data=rd.name, world_kind=rd.world_kind, quality_kind=rd.quality_kind, seed=seed,
                  folds=folds, episodes=st.episodes,
                  bootstrap=st.bootstrap, target_retention=target_retention, uncertainty=uncertainty,
                  gamma=st.gamma, lambdas=LAMBDAS.tolist(), token_model=setups[0].token_source,
                  notes=list(rd.notes) + fold_notes + setups[0].notes + _token_fit_notes(setups) + list(REVISIONS),
                  variants=[{"name": v.name, "track": v.track, "kind": v.kind, "policy": v.policy, "knob": v.knob,
                             "knob_values": [lab for lab, _ in v.knob_values], "label_aware": v.label_aware}
                            for v in VARIANTS])
    result["seconds"] = time.perf_counter() - t_start
    _plots(out, result)
    if "learning_curve" in result:
        _plot_learning_curve(out, result)
    write_json(out / "metrics.json", result)
    atomic_write(out / "report.md", _report(result))
    return result


def _token_fit_notes(setups: list[FoldSetup]) -> list[str]:
    """How many folds' token-model fits (SVI) met the convergence rule (none for the stand-in forecast)."""
    metas = [fs.token_fit.get("svi") for fs in setups if fs.token_fit.get("svi")]
    if not metas:
        return []
    ok = sum(bool(m.get("svi_converged", m.get("converged"))) for m in metas)
    return [f"token model (SVI) per fold: {ok} of {len(metas)} fits met the convergence rule "
            f"({', '.join(str(m.get('steps')) for m in metas)} steps)"
            + ("" if ok == len(metas) else "; an unconverged fit's cost and uncertainty forecasts may still be moving")]


def _aggregate(rd, setups: list[FoldSetup], per_fold: list, st: Settings, rng, seed: int) -> dict:
    k = len(setups)
    names = {t: list(per_fold[0][t]) + ["zero_router"] for t in TRACKS}
    # one bootstrap resample per fold, shared by every router and both tracks (paired)
    boots = []
    for fs, runs in zip(setups, per_fold):
        n = fs.worlds["test"].quality.shape[0]
        boots.append(_boot_weights(n, st.episodes, st.bootstrap, rng))
    tracks = {}
    for t in TRACKS:
        point = [_fold_stats(runs[t], fs, None) for fs, runs in zip(setups, per_fold)]
        boot = [_fold_stats(runs[t], fs, bw) for fs, runs, bw in zip(setups, per_fold, boots)]
        aiq_pt, aiq_bs = {}, {}  # every router's fold-mean AIQ and its bootstrap replicates (paired differences)
        routers = {}
        for name in names[t]:
            entry = {}
            keys = (("quality_retention", "cost_reduction", "aiq", "aiq_routerbench_code") if name != "zero_router"
                    else ("aiq", "aiq_routerbench_code"))
            for key in keys:
                pt = float(np.mean([p[name][key] for p in point]))
                bs = np.mean([b[name][key] for b in boot], 0)
                entry[key] = _ci(pt, bs)
                entry[f"{key}_per_fold"] = [float(p[name][key]) for p in point]
                if key == "aiq":
                    aiq_pt[name], aiq_bs[name] = pt, bs
            if name == "zero_router":
                entry["aiq_only"] = True
                routers[name] = entry
                continue
            runs_n = [runs[t][name] for runs in per_fold]
            entry.update(_router_extras(name, runs_n, setups, st, t,
                                        [runs[t][REGRET_LAMBDA_OF].lam for runs in per_fold]))
            routers[name] = entry
        tracks[t] = {"routers": routers, "aiq_differences": _aiq_differences(aiq_pt, aiq_bs)}
    # significance: thompson vs every other router of its track, per-prompt utility at thompson's lambda
    p_raw, labels = [], []
    diffs = {}
    for t in TRACKS:
        for name in names[t]:
            if name in ("thompson", "zero_router"):
                continue
            d = []
            for fs, runs in zip(setups, per_fold):
                lam = runs[t]["thompson"].lam
                d.append(_utility_at(runs[t]["thompson"], lam) - _utility_at(runs[t][name], lam))
            d = np.concatenate(d)
            if np.allclose(d, 0.0):
                p = 1.0
            else:
                p = float(sps.ttest_1samp(d, 0.0).pvalue)
            diffs[(t, name)] = (float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)), p)
            p_raw.append(p)
            labels.append((t, name))
    adj, _ = holm(np.array(p_raw)) if p_raw else (np.array([]), None)
    p_values = {t: {} for t in TRACKS}
    comparisons = {t: {} for t in TRACKS}
    for (t, name), pa in zip(labels, adj):
        mean, se, p = diffs[(t, name)]
        p_values[t][name] = float(pa)
        verdict = "tie" if pa >= 0.05 else ("win" if mean > 0 else "loss")
        comparisons[t][name] = {"mean_utility_difference": mean, "ci95": [mean - 1.96 * se, mean + 1.96 * se],
                                "p_value": p, "p_holm": float(pa), "verdict": verdict, "unit": "prompt",
                                "n_prompts": int(sum(fs.worlds["test"].quality.shape[0] for fs in setups))}
    headline = _headline(tracks, per_fold, st)
    first = setups[0]
    return {"tracks": tracks, "p_values": p_values, "comparisons": comparisons, "headline": headline,
            "models": list(first.models),
            "premium_model": {"per_fold": [fs.models[fs.premium] for fs in setups],
                              "rule": "best training-split quality (ties: cheaper)" if True else ""},
            "strong_weak_pair": [None if fs.pair is None else [fs.models[fs.pair[0]], fs.models[fs.pair[1]]]
                                 for fs in setups],
            "steps_per_episode": int(first.worlds["test"].quality.shape[0]),
            "fold_sizes": {"train": len(first.fold.train), "val": len(first.fold.val), "test": len(first.fold.test)},
            "sweeps": _sweeps(per_fold, setups)}


def _router_extras(name: str, runs: list[RouterRun], setups: list[FoldSetup], st: Settings, track: str,
                   regret_lam: list[float]) -> dict:
    e: dict[str, Any] = {}
    v = next((x for x in VARIANTS if x.name == name and x.track == track), None)
    e["label_aware"] = bool(v.label_aware) if v else False
    e["kind"] = v.kind if v else "reference"
    if runs[0].lam is not None:
        lams = [r.lam for r in runs]
        e["lam"] = float(np.median(lams))
        e["lam_per_fold"] = lams
        e["lam_at_grid_edge"] = [bool(x in (float(LAMBDAS[0]), float(LAMBDAS[-1]))) for x in lams]
    if v is not None and v.knob is not None:
        labs = [lab for lab, _ in v.knob_values]
        e["knob"] = v.knob
        e["knob_per_fold"] = [r.knob for r in runs]
        ordered = v.knob not in ("exploration", "exploration/prior strength")
        e["knob_at_grid_edge"] = [bool(ordered and r.knob in (labs[0], labs[-1])) for r in runs]
        e["knob_validation_aiq"] = [r.knob_scores for r in runs]
    if v is not None and v.kind == "threshold":
        e["threshold_per_fold"] = [r.sweep[r.chosen] for r in runs]
        e["threshold_at_grid_edge"] = [bool(r.chosen in (0, len(r.sweep) - 1)) for r in runs]
    if runs[0].val:
        e["validation"] = {key: float(np.mean([r.val[key] for r in runs])) for key in ("retention", "cost_reduction")}
        e["validation"]["met_target_folds"] = int(sum(r.val["met_target"] for r in runs))
    pairs = [r.pair for r in runs if r.pair is not None]
    for key in ("apgr", "cpt50", "cpt80"):
        vals = np.array([np.nan if p[key] is None else p[key] for p in pairs], np.float64)
        e[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
        e[f"{key}_folds"] = int(np.isfinite(vals).sum())  # folds behind the mean (a fold may have no pair / no CPT)
    if name != "oracle":
        rc = [_regret_and_convergence(r, fs, st, lam) for r, fs, lam in zip(runs, setups, regret_lam)]
        e["regret_lambda_per_fold"] = [float(x) for x in regret_lam]
        for key in rc[0]:
            vals = np.concatenate([x[key] for x in rc])
            e[key] = {"mean": float(vals.mean()), "per_fold": [float(x[key].mean()) for x in rc]}
        if "convergence_queries" in e:
            e["convergence_threshold"] = st.conv_threshold
    return e


def _headline(tracks: dict, per_fold: list, st: Settings) -> dict:
    """The headline router: among the warm track's text-only learners, chosen on validation only (target rule on
    the fold-mean validation figures)."""
    cands = [v.name for v in VARIANTS if v.track == "warm" and not v.label_aware]
    val = {n: tracks["warm"]["routers"][n]["validation"] for n in cands}
    ok = [n for n in cands if val[n]["retention"] >= st.target]
    best = max(ok, key=lambda n: val[n]["cost_reduction"]) if ok else max(cands, key=lambda n: val[n]["retention"])
    r = tracks["warm"]["routers"][best]
    table = {n: {"validation": val[n], "test": {"quality_retention": tracks["warm"]["routers"][n]["quality_retention"],
                                                "cost_reduction": tracks["warm"]["routers"][n]["cost_reduction"]}}
             for n in cands}
    return {"track": "warm", "router": best, "lam": r.get("lam"), "lam_per_fold": r.get("lam_per_fold"),
            "selected_on": "validation only: the largest fold-mean validation cost reduction with fold-mean "
                           f"validation retention >= {st.target} (else the highest retention)",
            "validation": val[best],
            "test": {"quality_retention": r["quality_retention"], "cost_reduction": r["cost_reduction"],
                     "aiq": r["aiq"]},
            "target": {"quality_retention": st.target, "cost_reduction": TARGET_COST_REDUCTION},
            "target_met": bool(r["quality_retention"]["mean"] >= st.target
                               and r["cost_reduction"]["mean"] >= TARGET_COST_REDUCTION),
            "validation_vs_test": table}


def _sweeps(per_fold: list, setups: list) -> dict:
    """Fold-mean (cost, quality) of every router's sweep points (for plots)."""
    out = {}
    for t in TRACKS:
        out[t] = {}
        for name in per_fold[0][t]:
            if name == "oracle":
                continue
            cs = np.mean([r[t][name].outcomes.cost.mean((1, 2)) for r in per_fold], 0)
            qs = np.mean([r[t][name].outcomes.quality.mean((1, 2)) for r in per_fold], 0)
            out[t][name] = {"cost": cs.tolist(), "quality": qs.tolist()}
        orc = [r[t]["oracle"].outcomes for r in per_fold]
        out[t]["oracle"] = {"cost": np.mean([o.cost.mean((1, 2)) for o in orc], 0).tolist(),
                            "quality": np.mean([o.quality.mean((1, 2)) for o in orc], 0).tolist()}
        zc = np.mean([np.asarray(fs.worlds["test"].cost, np.float64).mean(0) for fs in setups], 0)
        zq = np.mean([np.asarray(fs.worlds["test"].quality, np.float64).mean(0) for fs in setups], 0)
        out[t]["zero_router"] = {"cost": zc.tolist(), "quality": zq.tolist()}
    return out


# ---------------------------------------------------------------------------------------------------- learning curve


def check_fractions(fractions) -> tuple[float, ...]:
    """Validated, sorted, unique shares of the training prompts for the learning curve."""
    try:
        fr = tuple(sorted({float(f) for f in fractions}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"learning-curve fractions must be numbers in (0, 1], got {fractions!r}") from e
    if not fr or not all(np.isfinite(f) and 0.0 < f <= 1.0 for f in fr):
        raise ValueError(f"learning-curve fractions must be numbers in (0, 1], got {fractions!r}")
    return fr


def _learning_curve(rd, fold_list, setups: list[FoldSetup], per_fold: list, st: Settings, seed: int, fractions,
                    prep: dict, progress: bool) -> dict:
    """The warm track again with a share of each fold's training prompts (chosen with the seed; validation and test
    prompts unchanged): every warm router refitted and retuned on validation, as in the full run. AIQ per router
    and share, with the bootstrap over test prompts and episodes (one resample per fold shared by every router and
    share, so differences are paired), and the difference to the zero router (the best fixed models and their
    mixtures) and to the best fixed model chosen on the same training prompts."""
    fractions = check_fractions(fractions)
    rng = np.random.default_rng(seed + 2)
    boots = [_boot_weights(fs.worlds["test"].quality.shape[0], st.episodes, st.bootstrap, rng) for fs in setups]
    todo = [(f, i) for f in fractions for i in range(len(setups)) if f < 1.0]
    bar = tqdm(total=len(todo), desc=f"learning curve {rd.name}", unit="fold", disable=not progress)
    points, boot_stats, sizes = {}, {}, {}
    for f in fractions:
        pts, bss, n_train = [], [], []
        for i, (fold, fs_full) in enumerate(zip(fold_list, setups)):
            if f >= 1.0:
                fs, runs = fs_full, per_fold[i]["warm"]
            else:
                bar.set_postfix_str(f"share {f:g} fold {fold.index}")
                fs = prepare_fold(rd, fold, seed=seed, train_fraction=f, **prep)
                fs.aiq_bounds = _bounds(fs.worlds["test"])
                runs = _run_fold(fs, st, seed, tracks=("warm",), pair=False)["warm"]
                bar.update(1)
            n_train.append(int(fs.data.split("train")["prompt_id"].nunique()))
            pts.append(_fold_stats(runs, fs, None))
            bss.append(_fold_stats(runs, fs, boots[i]))
        points[f], boot_stats[f], sizes[f] = pts, bss, n_train
    bar.close()
    names = [n for n in points[fractions[0]][0] if n not in ("oracle", "always_premium", "cheapest", "random")]
    routers = {}
    for n in names:
        e: dict[str, Any] = {"aiq": [], "aiq_per_fold": [], "minus_zero_router": [], "minus_best_fixed": []}
        for f in fractions:
            e["aiq"].append(_ci(np.mean([p[n]["aiq"] for p in points[f]]),
                                np.mean([b[n]["aiq"] for b in boot_stats[f]], 0)))
            e["aiq_per_fold"].append([float(p[n]["aiq"]) for p in points[f]])
            for ref, key in (("zero_router", "minus_zero_router"), ("best_fixed", "minus_best_fixed")):
                d_pt = np.mean([p[n]["aiq"] - p[ref]["aiq"] for p in points[f]])
                d_bs = np.mean([b[n]["aiq"] - b[ref]["aiq"] for b in boot_stats[f]], 0)
                e[key].append(_ci(d_pt, d_bs))
        above = [f for f, d in zip(fractions, e["minus_zero_router"]) if d["ci95"][0] > 0]
        e["first_share_above_zero_router"] = above[0] if above else None
        v = next((x for x in VARIANTS if x.name == n and x.track == "warm"), None)
        e["label_aware"] = bool(v.label_aware) if v else False
        routers[n] = e
    return {"fractions": list(fractions), "train_prompts": {f"{f:g}": sizes[f] for f in fractions},
            "train_prompts_mean": [float(np.mean(sizes[f])) for f in fractions], "routers": routers,
            "protocol": "warm track with a share of each fold's training prompts (drawn with the seed; the token "
                        "model, featurizer, priors and every learner fitted on that share; knobs and lambda retuned "
                        "on the unchanged validation prompts); AIQ on the unchanged test prompts; intervals from one "
                        "bootstrap over test prompts and episodes per fold, shared by every router and share; "
                        "first_share_above_zero_router: the smallest share whose interval of AIQ minus the zero "
                        "router's lies above 0"}


def _plot_learning_curve(out: Path, r: dict) -> None:
    """Left: test AIQ per router against the training prompts; right: AIQ minus the zero router's with the paired
    95% interval (the text routers and the label-aware Thompson), the question the curve answers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lc = r["learning_curve"]
    x = np.array(lc["train_prompts_mean"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    focus = {"linear_thompson", "linucb", "mf_router", "knn_router", "best_fixed", "thompson", "thompson_label",
             r["headline"]["router"]}
    colours = plt.get_cmap("tab20")
    for i, (n, e) in enumerate(lc["routers"].items()):
        c = colours(i % 20)
        m = np.array([a["mean"] for a in e["aiq"]])
        if n == "zero_router":
            ax.plot(x, m, c="grey", ls=":", lw=1.5, label="zero router (fixed models)")
            continue
        ls = "--" if e["label_aware"] else "-"
        lw = 2.2 if n in ("linear_thompson", r["headline"]["router"]) else 1.0
        ax.plot(x, m, ls=ls, marker="o", ms=3, lw=lw, label=n, color=c)
        if n in focus:
            d = np.array([a["mean"] for a in e["minus_zero_router"]])
            lo = np.array([a["ci95"][0] for a in e["minus_zero_router"]])
            hi = np.array([a["ci95"][1] for a in e["minus_zero_router"]])
            ax2.plot(x, d, ls=ls, marker="o", ms=3, lw=lw, label=n, color=c)
            ax2.fill_between(x, lo, hi, alpha=0.12, color=c)
    ax2.axhline(0.0, c="grey", ls=":", lw=1.5)
    for a, title, ylab in ((ax, f"Learning curve, warm track ({r['data']})", "test AIQ (mean over folds)"),
                           (ax2, "AIQ minus the zero router's (paired 95% CI)", "AIQ difference")):
        a.set_xscale("log")
        a.set_xlabel("training prompts with feedback (mean over folds)")
        a.set_ylabel(ylab)
        a.set_title(title)
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="lower right")
    savefig(fig, out / "learning_curve.png")


def _learning_report(r: dict) -> list[str]:
    lc = r.get("learning_curve")
    if not lc:
        return []
    fr = lc["fractions"]
    head = ["router"] + [f"{f:g} ({m:.0f} prompts)" for f, m in zip(fr, lc["train_prompts_mean"])] + [
        "first share above the zero router"]
    rows = []
    order = sorted(lc["routers"], key=lambda n: -lc["routers"][n]["aiq"][-1]["mean"])
    for n in order:
        e = lc["routers"][n]
        cells = [f"{a['mean']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]" for a in e["aiq"]]
        first = "–" if n == "zero_router" else ("never" if e["first_share_above_zero_router"] is None
                                                else f"{e['first_share_above_zero_router']:g}")
        rows.append([n + (" (label-aware)" if e["label_aware"] else "")] + cells + [first])
    return ["## Learning curve (warm track)", "",
            "AIQ on the test prompts when each fold's learners get only a share of its training prompts "
            f"({lc['protocol']}).", "", md_table(head, rows), "", "![learning curve](learning_curve.png)", ""]


# ---------------------------------------------------------------------------------------------------- report


def _plots(out: Path, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, t in zip(axes, TRACKS):
        sw = r["sweeps"][t]
        for name, pts in sw.items():
            if name in ("zero_router",):
                ax.scatter(pts["cost"], pts["quality"], s=14, c="grey", label="models (zero router)", zorder=3)
                hc, hq = M.zero_router_hull(np.array(pts["cost"]), np.array(pts["quality"]))
                ax.plot(hc, hq, c="grey", ls=":", lw=1)
                continue
            style = dict(lw=2.2) if name in ("thompson", r["headline"]["router"]) else dict(lw=1, alpha=0.8)
            ls = "--" if name.endswith("_label") else "-"
            if len(pts["cost"]) > 1:
                ax.plot(pts["cost"], pts["quality"], ls=ls, marker="." if name != "oracle" else None, label=name,
                        **style)
            else:
                ax.scatter(pts["cost"], pts["quality"], marker="x", s=40, label=name)
        ax.set_title(f"{t} track ({r['data']}, mean over {r['folds']} folds)")
        ax.set_xlabel("mean normalised cost per query")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean quality")
    axes[1].legend(fontsize=7, loc="lower right")
    savefig(fig, out / "cost_quality.png")

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, t in zip(axes, TRACKS):
        rs = r["tracks"][t]["routers"]
        names = sorted(rs, key=lambda n: rs[n]["aiq"]["mean"])
        m = np.array([rs[n]["aiq"]["mean"] for n in names])
        lo = np.array([rs[n]["aiq"]["ci95"][0] for n in names])
        hi = np.array([rs[n]["aiq"]["ci95"][1] for n in names])
        ax.barh(names, m, xerr=[m - lo, hi - m], color=["C3" if n == "thompson" else "C0" for n in names])
        ax.set_xlim(max(0.0, float(lo.min()) - 0.05), min(1.0, float(hi.max()) + 0.02))
        ax.set_title(f"AIQ, {t} track (95% CI: prompts x episodes)")
        ax.grid(alpha=0.3, axis="x")
    savefig(fig, out / "aiq.png")


def _row(name: str, e: dict) -> list:
    def ci(x):
        return "–" if x is None else f"{x['mean']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]"

    flags = []
    if any(e.get("lam_at_grid_edge", [])):
        flags.append("λ at grid edge in " + str(sum(e["lam_at_grid_edge"])) + " fold(s)")
    if any(e.get("knob_at_grid_edge", [])):
        flags.append(f"{e['knob']} at grid edge in {sum(e['knob_at_grid_edge'])} fold(s)")
    if any(e.get("threshold_at_grid_edge", [])):
        flags.append(f"threshold at grid edge in {sum(e['threshold_at_grid_edge'])} fold(s)")
    k = len(e.get("aiq_per_fold", []))
    if e.get("apgr") is not None and e.get("apgr_folds", k) < k:
        flags.append(f"APGR over {e['apgr_folds']} of {k} folds")
    lam = "–" if e.get("lam") is None else f"{e['lam']:g}"
    knob = ", ".join(str(k) for k in e.get("knob_per_fold", [])) or "–"
    return [name + (" (label-aware)" if e.get("label_aware") else ""), ci(e.get("quality_retention")),
            ci(e.get("cost_reduction")), ci(e.get("aiq")), fmt(e.get("apgr")), fmt(e.get("cpt50")),
            fmt(e.get("cpt80")), fmt((e.get("regret_vs_oracle") or {}).get("mean"), 1),
            fmt((e.get("regret_vs_best_fixed") or {}).get("mean"), 1), lam, knob, "; ".join(flags) or "–"]


def _knob_sensitivity(rs: dict, warm: bool) -> list[str]:
    """How much each learner's validation AIQ moves over its secondary knob's grid (max - min, mean over folds)."""
    rows, spreads = [], {}
    for n, e in sorted(rs.items()):
        scores = [v for v in e.get("knob_validation_aiq", []) if v and len(v) > 1]
        if scores:
            spreads[n] = float(np.mean([max(v.values()) - min(v.values()) for v in scores]))
            rows.append(f"{n} ({e['knob']}) {spreads[n]:.4f}")
    if not rows:
        return []
    lin, ucb = spreads.get("linear_thompson"), spreads.get("linucb")
    # the reading below is printed only where the figures show it: LinUCB's alpha moving validation AIQ by a
    # fraction of what linear Thompson's posterior scale moves it
    explain = (warm and lin is not None and ucb is not None and ucb < 0.2 * lin)
    return ["How much the secondary knob matters on validation (validation AIQ, max − min over its grid, mean over "
            "folds): " + "; ".join(rows) + "." + (
                f" LinUCB's α moves it by {ucb:.4f}, linear Thompson's posterior scale by {lin:.4f}: every arm "
                "starts from the same training prompts, so LinUCB's bonus α·√(x'S x) is almost the same for every "
                "arm and α hardly moves the choice (LinUCB is close to greedy on its ridge estimate here), while "
                "Thompson's draws are independent across arms." if explain else ""), ""]


def _aiq_difference_report(diff: dict | None, track: str) -> list[str]:
    """The focal router's paired AIQ differences against every other router of the track."""
    if not diff or not diff["vs"]:
        return []
    f = diff["focal"]
    rows = sorted(diff["vs"].items(), key=lambda kv: -kv[1]["difference"])
    return [f"AIQ of {f} minus each other router's ({track} track; fold means; 95% interval and share of replicates "
            "with a difference <= 0 from the same bootstrap over prompts and episodes for both routers, so the "
            "comparison is paired):", "",
            md_table(["vs", f"AIQ({f}) − AIQ(vs) [95% CI]", "share of replicates <= 0"],
                     [[n, f"{v['difference']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]",
                       f"{v['share_not_above']:.3f}"] for n, v in rows]), ""]


def _report(r: dict) -> str:
    h = r["headline"]
    L = [f"# Routing comparison: {r['data']}", "",
         f"Made by: `{r['command']}` (seed {r['seed']}, {r['seconds']:.0f} s).", "",
         f"{r['folds']} prompt-level folds ({r['fold_sizes']['train']} training, {r['fold_sizes']['val']} validation "
         f"and {r['fold_sizes']['test']} test prompts per fold); {r['episodes']} episodes per learner and λ "
         f"(validation and test); every figure is the mean over folds with a 95% bootstrap "
         f"interval over prompts within folds and episodes together ({r['bootstrap']} replicates). World: "
         f"{r['world_kind']}; quality: {r['quality_kind']}; token model for the cost terms: {r['token_model']}. "
         f"Utility: {'π − λ·(cost + γ·sd)' if r['uncertainty'] == 'scaled' else 'π − λ·cost − γ·sd (research form)'}"
         f", γ = {r['gamma']}.", "",
         "## Headline (chosen on validation only)", "",
         f"**{h['router']}** in the warm track ({h['selected_on']}): test quality retention "
         f"{h['test']['quality_retention']['mean']:.3f} [{h['test']['quality_retention']['ci95'][0]:.3f}, "
         f"{h['test']['quality_retention']['ci95'][1]:.3f}] at cost reduction {h['test']['cost_reduction']['mean']:.3f} "
         f"[{h['test']['cost_reduction']['ci95'][0]:.3f}, {h['test']['cost_reduction']['ci95'][1]:.3f}]; AIQ "
         f"{h['test']['aiq']['mean']:.3f}. Target (retention ≥ {h['target']['quality_retention']} at cost reduction ≥ "
         f"{h['target']['cost_reduction']}): {'met' if h['target_met'] else 'not met'}.", "",
         "Validation-predicted vs test-realised (warm track, text-only learners; fold means):", "",
         md_table(["router", "val retention", "test retention", "val cost reduction", "test cost reduction"],
                  [[n, f"{x['validation']['retention']:.3f}", f"{x['test']['quality_retention']['mean']:.3f}",
                    f"{x['validation']['cost_reduction']:.3f}", f"{x['test']['cost_reduction']['mean']:.3f}"]
                   for n, x in h["validation_vs_test"].items()]), ""]
    for t in TRACKS:
        rs = r["tracks"][t]["routers"]
        order = sorted(rs, key=lambda n: -rs[n]["aiq"]["mean"])
        L += [f"## {t.capitalize()} track", "",
              ("No training data: every learner starts from its flat prior and learns online on the test prompts."
               if t == "cold" else "The training prompts are available to every learner."), "",
              md_table(["router", "quality retention", "cost reduction", "AIQ", "APGR", "CPT(50%)", "CPT(80%)",
                        "regret vs oracle", "regret vs best fixed", "λ (median)", "knob per fold", "flags"],
                       [_row(n, rs[n]) for n in order]), ""]
        comp = r["comparisons"][t]
        wins = [n for n, c in comp.items() if c["verdict"] == "win"]
        losses = [n for n, c in comp.items() if c["verdict"] == "loss"]
        ties = [n for n, c in comp.items() if c["verdict"] == "tie"]
        L += _knob_sensitivity(rs, t == "warm")
        L += _aiq_difference_report(r["tracks"][t].get("aiq_differences"), t)
        lam_t = rs.get(REGRET_LAMBDA_OF, {}).get("lam_per_fold") or []
        lam_txt = ", ".join(f"{x:g}" for x in lam_t) + (" -- quality alone" if lam_t and not any(lam_t) else "")
        L += [f"Thompson vs the others ({t} track; per-prompt utility quality − λ·cost at Thompson's λ of each fold "
              f"({lam_txt}), paired t-test over {next(iter(comp.values()))['n_prompts'] if comp else 0} prompts, "
              "Holm over every comparison in this report; a verdict on utility at that λ, not on AIQ: see the AIQ "
              "differences above for the whole cost-quality curve):", "",
              f"- wins against: {', '.join(wins) or 'none'}",
              f"- ties with: {', '.join(ties) or 'none'}",
              f"- loses to: {', '.join(losses) or 'none'}", "",
              md_table(["vs", "mean utility difference [95% CI]", "p (Holm)", "verdict"],
                       [[n, f"{c['mean_utility_difference']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]",
                         f"{c['p_holm']:.3g}", c["verdict"]] for n, c in comp.items()]), ""]
    L += _learning_report(r)
    L += ["## Plots", "", "![cost vs quality](cost_quality.png)", "", "![AIQ](aiq.png)", "",
          "## Definitions", "",
          "- Premium model: the best by training-split quality in each fold (ties: the cheaper): "
          + ", ".join(sorted(set(r["premium_model"]["per_fold"]))) + ". Quality retention and cost reduction are "
          "against it on the same prompts (always-premium's retention is 1 by definition).",
          "- AIQ (RouterBench): the mean of the non-decreasing convex hull of a router's (cost, quality) sweep points "
          "over the union of every router's points in the fold (the oracle's sweep spans it); RouterBench's paper "
          "normalisation (the mean of the hull over the range). The zero router is the hull of the models' own "
          "points; the oracle is swept over λ (per query argmax quality − λ·cost). `aiq_routerbench_code` in "
          "metrics.json is the same hull with the normalisation of RouterBench's published code (area from the "
          "router's cheapest point to the largest cost, divided by that cost).",
          "- APGR / CPT (RouteLLM): every router swept over its knob on the strong/weak pair "
          + ", ".join(sorted({"/".join(p) for p in r["strong_weak_pair"] if p})) + " (share of strong calls vs "
          "performance gap recovered; the all-weak and all-strong settings added as end points; no hull).",
          "- Regret: cumulative over an episode of each router at its chosen point, under one utility for every "
          f"router of a track, quality − λ·cost with realised costs at {REGRET_LAMBDA_OF}'s chosen λ of each fold "
          "(`regret_lambda_per_fold` in metrics.json), against the per-query oracle and against the best fixed "
          "model in hindsight (which a router can beat: negative). Convergence (learners): queries after which the rolling mean (window 50) of the "
          "instantaneous regret against the best fixed model stays below "
          f"{next((e.get('convergence_threshold') for e in r['tracks']['warm']['routers'].values() if e.get('convergence_threshold')), '–')}.",
          "- Knobs: λ over " + ", ".join(f"{x:g}" for x in r["lambdas"]) + "; each learner's other knob over 4 values "
          "(validation AIQ); a flag marks a choice at the edge of its grid.", "",
          "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(L) + "\n"
