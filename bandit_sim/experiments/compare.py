"""`bandit-sim compare`: the routing comparison report (protocol in `bandit_sim.experiments`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bandit_sim.experiments import metrics as M
from bandit_sim.experiments.protocol import (LAMBDA_GRID, EpisodeStats, episode_stats, prepare, run_policy, select_lambda,
                          select_models)
from bandit_sim.experiments.report import command_line, fmt, md_table, savefig, short_name, write_json
from bandit_sim.experiments.stats import bootstrap_ci, holm, paired_test
from bandit_sim.router import mf as MF
from bandit_sim.sim.priors import family_prior_from_train, warm_prior_from_train
from hierarchical.storage import atomic_write

__all__ = ["run_compare", "KERNEL_POLICIES"]

# report key -> (kernel policy, Hyper overrides, lambda chosen on val?)
KERNEL_POLICIES: dict[str, tuple[str, dict, bool]] = {
    "thompson": ("thompson", {}, True),
    "thompson_family_prior": ("thompson", {"family_prior": True}, True),
    "thompson_contextual": ("contextual_thompson", {}, True),
    "thompson_warm": ("thompson", {"warm_prior": True}, True),
    "thompson_contextual_warm": ("contextual_thompson", {"warm_prior": True}, True),
    # pure Thompson sampling (no forced-exploration floor): the posterior's own spread does the exploring
    "thompson_contextual_warm_pure": ("contextual_thompson", {"warm_prior": True, "min_explore": 0.0}, True),
    "random": ("random", {}, False),
    "always_premium": ("always_premium", {}, False),
    "cheapest": ("cheapest", {}, False),
    "threshold": ("threshold", {}, False),
    "simple_utility": ("simple_utility", {}, True),
    "epsilon_greedy": ("epsilon_greedy", {}, True),
    "ucb1": ("ucb1", {}, True),
    "best_single": ("best_single", {}, False),
    "oracle": ("oracle", {}, False),
}
THOMPSON_KEYS = ("thompson", "thompson_family_prior", "thompson_contextual", "thompson_warm",
                 "thompson_contextual_warm", "thompson_contextual_warm_pure")


def _hyper_overrides(setup, extra: dict, contextual: bool = False) -> dict:
    over = {name: v for name, v in extra.items() if name not in ("warm_prior", "family_prior")}  # Hyper fields
    if extra.get("warm_prior"):
        cats = setup.infos["test"].categories if contextual else None
        a, b = warm_prior_from_train(setup.data, setup.models, cats)
        over.update(prior_alpha=a, prior_beta=b)
    elif extra.get("family_prior"):
        a, b = family_prior_from_train(setup.data, setup.models)
        over.update(prior_alpha=a, prior_beta=b)
    return over


def select_thompson(chosen: dict, target: float) -> str:
    """The Thompson variant a user would deploy, chosen on the validation split only.

    Among the variants whose chosen lambda reaches the retention target on validation, the one with the largest
    validation cost reduction; if none does, the one with the highest validation retention.

    Args:
      chosen: report key -> `select_lambda` result (validation figures).
      target: the retention target.
    Returns:
      the report key.
    """
    keys = [k for k in THOMPSON_KEYS if k in chosen]
    ok = [k for k in keys if chosen[k]["retention"] >= target]
    if ok:
        return max(ok, key=lambda k: chosen[k]["cost_reduction"])
    return max(keys, key=lambda k: chosen[k]["retention"])


def _ci(x: np.ndarray, seed: int) -> dict:
    c = bootstrap_ci(np.asarray(x, np.float64), seed=seed)
    return {"mean": c.estimate, "ci95": [c.low, c.high]}


def _mf_decisions(setup, seed: int, target_retention: float, quick: bool):
    """Fit the MF router on train, choose its lambda on val (same rule as the bandits), route the test split.

    Its utility is the bandits' one with its predicted quality: argmax_m q̂(x, m) - lam * pred_cost(x, m).
    """
    rd = setup.data
    fitted = MF.fit(rd.split("train"), rd.split("val"), seed=seed, models=list(setup.models),
                    **({"max_steps": 300} if quick else {}))
    qhat, curves = {}, {}
    for split in ("val", "test"):
        w, info = setup.worlds[split], setup.infos[split]
        qm = MF.query_matrix(rd.split(split), list(info.models))
        pred = MF.predict_quality(fitted, qm)
        row = {p: i for i, p in enumerate(qm.prompt_id)}
        qhat[split] = pred[[row[p] for p in info.prompt_ids]]  # World row order
        pc = np.asarray(w.pred_cost, np.float64)
        d = MF.route(np.where(np.asarray(w.mask), qhat[split], -np.inf), LAMBDA_GRID, pc)  # (L, N)
        q, c = np.asarray(w.quality, np.float64), np.asarray(w.cost, np.float64)
        rows = np.arange(q.shape[0])
        prem = int(np.argmax(pc.mean(0)))
        curves[split] = {"decisions": d, "quality": q[rows, d].mean(-1), "cost_norm": c[rows, d].mean(-1),
                         "retention": q[rows, d].mean(-1) / q[:, prem].mean(),
                         "cost_reduction": 1 - c[rows, d].sum(-1) / c[:, prem].sum()}
    v = curves["val"]
    ok = v["retention"] >= target_retention
    j = int(np.argmax(np.where(ok, v["cost_reduction"], -np.inf))) if ok.any() else int(np.argmax(v["retention"]))
    t = curves["test"]
    return {"lam": float(LAMBDA_GRID[j]), "val_retention": float(v["retention"][j]),
            "val_cost_reduction": float(v["cost_reduction"][j]), "met_target": bool(ok.any()),
            "decisions": t["decisions"][j], "qhat": qhat["test"],
            "curve": np.stack([t["cost_norm"], t["quality"]], -1), "fit": fitted}


def run_compare(data: str, out: Path, *, episodes: int = 1000, seed: int = 0, tokens: str = "hierarchical",
                target_retention: float = 0.95, quick: bool = False, strong: str | None = None,
                weak: str | None = None, argv=None, progress: bool = True) -> dict:
    """Run the comparison and write DIR/metrics.json, DIR/report.md and PNG plots.

    Args:
      data: dataset name or path; out: output folder; episodes: E per policy; seed: base seed.
      tokens: "hierarchical" or "standin" token predictions for the cost/uncertainty terms.
      target_retention: quality retention the lambda selection on val aims for.
      quick: small settings for smoke tests.
      strong, weak: the model pair for APGR/CPT (default: premium and the best model costing <= 10% of it).
      argv: the command line to record (default: sys.argv).
      progress: show a progress bar.
    Returns:
      The metrics dict written to metrics.json.
    """
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = command_line(argv)
    setup = prepare(data, seed=seed, tokens=tokens, quick=quick)
    data = setup.data.name
    wv, iv = setup.worlds["val"], setup.infos["val"]
    wt, it = setup.worlds["test"], setup.infos["test"]
    n_test, k = wt.quality.shape
    models = it.models
    val_eps = max(32, episodes // 16) if not quick else 4
    sweep_eps = max(16, episodes // 32) if not quick else 4
    gam = 0.25

    # ---- lambda on the validation split (one compiled call over the lambda grid); on test each tuned policy runs
    # at its chosen lambda with all episodes, and over the whole grid with fewer episodes for the AIQ sweep
    chosen: dict[str, dict] = {}
    stats: dict[str, EpisodeStats] = {}
    sweep_points, curves = {}, {}
    bar = tqdm(list(KERNEL_POLICIES.items()), desc="compare", unit="policy", disable=not progress)
    for key, (pol, extra, tuned) in bar:
        bar.set_postfix_str(key)
        over = _hyper_overrides(setup, extra, contextual=pol == "contextual_thompson")
        if not tuned:  # fixed routers; lambda (Thompson's) only sets best-single's utility and the regret's
            lam_t = chosen["thompson"]["lam"]
            m, _ = run_policy(wt, it, pol, episodes=episodes, seed=seed, lam=lam_t, gam=gam, hyper_overrides=over)
            stats[key] = episode_stats(m, it, n_test)
            continue
        chosen[key] = select_lambda(wv, iv, pol, episodes=val_eps, seed=seed + 1, gam=gam,
                                    target_retention=target_retention, hyper_overrides=over)
        m, _ = run_policy(wt, it, pol, episodes=episodes, seed=seed, lam=chosen[key]["lam"], gam=gam,
                          hyper_overrides=over)
        stats[key] = episode_stats(m, it, n_test)
        m, _ = run_policy(wt, it, pol, episodes=sweep_eps, seed=seed, gam=gam, grid={"lam": LAMBDA_GRID},
                          hyper_overrides=over)
        st = episode_stats(m, it, n_test)  # leaves (G, E_sweep)
        curves[key] = (st.cost_norm.mean(-1), st.quality.mean(-1))
        sweep_points[key] = {"lam": LAMBDA_GRID.tolist(), "cost_usd": st.cost_usd.mean(-1).tolist(),
                             "quality": st.quality.mean(-1).tolist(), "episodes": sweep_eps}
    mf = _mf_decisions(setup, seed, target_retention, quick)
    q, c_norm = np.asarray(wt.quality, np.float64), np.asarray(wt.cost, np.float64)
    d = mf["decisions"]
    mf_q = q[np.arange(n_test), d].mean()
    mf_c = c_norm[np.arange(n_test), d].sum()
    stats["mf_router"] = EpisodeStats(
        quality=np.full(episodes, mf_q), cost_usd=np.full(episodes, mf_c * it.cost_scale),
        cost_norm=np.full(episodes, mf_c / n_test), regret=np.full(episodes, np.nan),
        convergence=np.full(episodes, 0), converged=np.ones(episodes, bool),
        choices=np.tile(np.bincount(d, minlength=k), (episodes, 1)))
    chosen["mf_router"] = {k2: mf[k2] for k2 in ("lam", "val_retention", "val_cost_reduction", "met_target")}

    q_prem = float(stats["always_premium"].quality[0])
    c_prem = float(stats["always_premium"].cost_usd[0])
    q_orc = float(stats["oracle"].quality[0])

    policies = {}
    for key, st in stats.items():
        ret = st.quality / q_prem
        policies[key] = {
            "quality": _ci(st.quality, seed),
            "cost_usd": _ci(st.cost_usd, seed),
            "quality_retention": _ci(ret, seed),
            "quality_vs_oracle": _ci(st.quality / q_orc, seed),
            "cost_reduction": _ci(1.0 - st.cost_usd / c_prem, seed),
            "regret": _ci(st.regret, seed) if np.isfinite(st.regret).all() else None,
            "convergence_queries": _ci(st.convergence.astype(np.float64), seed),
            "converged_share": float(st.converged.mean()),
            "utilization": {m: float(v) for m, v in zip(models, st.choices.mean(0) / n_test)},
            "lam": chosen.get(key, {}).get("lam") if key in chosen else (
                chosen["thompson"]["lam"] if key == "best_single" else None),
        }

    # ---- AIQ over the lambda sweeps, with the Zero router and the oracle
    curves["mf_router"] = (mf["curve"][:, 0], mf["curve"][:, 1])
    sweep_points["mf_router"] = {"lam": LAMBDA_GRID.tolist(), "cost_usd": (mf["curve"][:, 0] * n_test * it.cost_scale).tolist(),
                                 "quality": mf["curve"][:, 1].tolist()}
    model_cost = c_norm.mean(0)
    model_q = q.mean(0)
    curves["zero_router"] = (model_cost, model_q)
    curves["oracle"] = (np.array([stats["oracle"].cost_norm[0]]), np.array([q_orc]))
    aiq = M.aiq_table(curves)

    # ---- APGR / CPT for a strong/weak pair
    i_strong, i_weak, why = _pick_pair(models, model_cost, model_q, np.asarray(wt.pred_cost).mean(0), strong, weak)
    if why is None:
        pair = _pair_metrics(setup, mf, i_strong, i_weak, val_eps, seed, gam)
    else:  # no strong/weak gap on this test split: APGR/CPT are undefined, say why
        pair = {"strong": models[i_strong], "weak": models[i_weak], "undefined": why,
                "apgr": {}, "cpt50": {}, "cpt80": {}}

    # ---- significance: Thompson vs every baseline on per-episode utility at Thompson's lambda
    sig = {}
    for ts in THOMPSON_KEYS:  # each Thompson variant is tested under its own utility (its chosen lambda)
        lam_star = chosen[ts]["lam"]
        util = {key: st.quality - lam_star * st.cost_norm for key, st in stats.items()}
        tests = {}
        for key in stats:
            if key == ts:
                continue
            w = paired_test(util[ts], util[key], "wilcoxon", seed=seed)
            t = paired_test(util[ts], util[key], "ttest", seed=seed)
            tests[key] = {"test": w.test, "statistic": w.statistic, "p_value": w.p_value,
                          "mean_diff": w.mean_diff, "mean_diff_ci95": [w.ci_low, w.ci_high],
                          "ttest_p_value": t.p_value}
        names = list(tests)
        adj, rej = holm(np.array([tests[n]["p_value"] for n in names]))
        for n, a, r in zip(names, adj, rej):
            tests[n]["p_holm"] = float(a)
            tests[n]["significant_holm_0.05"] = bool(r)
        sig[ts] = tests

    best = select_thompson(chosen, target_retention)
    bp = policies[best]
    thompson_router = {
        "selected": best, "selected_on": "validation split (largest cost reduction with retention >= target)",
        "lam": chosen[best]["lam"], "val_retention": chosen[best]["retention"],
        "val_cost_reduction": chosen[best]["cost_reduction"],
        "quality_retention": bp["quality_retention"], "cost_reduction": bp["cost_reduction"],
        "target": {"quality_retention": target_retention, "cost_reduction": 0.60},
        "target_met": bool(bp["quality_retention"]["mean"] >= target_retention and bp["cost_reduction"]["mean"] >= 0.60),
        "aiq": aiq.get(best), "aiq_beats_zero_router": bool(aiq.get(best, -1) > aiq["zero_router"]),
        "aiq_beats_mf_router": bool(aiq.get(best, -1) > aiq["mf_router"]),
    }
    result = {
        "command": cmd,
        "data": data,
        "world_kind": setup.data.world_kind,
        "quality_kind": setup.data.quality_kind,
        "seed": seed,
        "episodes": episodes,
        "steps_per_episode": n_test,
        "models": list(models),
        "premium_model": models[int(np.argmax(np.asarray(wt.pred_cost).mean(0)))],
        "always_premium": {"quality": q_prem, "cost_usd": c_prem},
        "oracle": {"quality": q_orc, "cost_usd": float(stats["oracle"].cost_usd[0])},
        "target_retention": target_retention,
        "lambda_selection": chosen,
        "thompson_router": thompson_router,
        "gamma": gam,
        "policies": policies,
        "aiq": {k2: v for k2, v in aiq.items()},
        "sweeps": sweep_points,
        "pair": pair,
        "apgr": pair["apgr"],
        "cpt50": pair["cpt50"],
        "cpt80": pair["cpt80"],
        "significance": sig,
        "token_model": setup.token_source,
        "notes": setup.notes,
    }
    _plots(out, result, stats, models, curves, it)
    write_json(out / "metrics.json", result)
    atomic_write(out / "report.md", _report(result, time.perf_counter() - t_start))
    return result


def _pick_pair(models, model_cost, model_q, pred_cost, strong, weak):
    """(strong index, weak index, None) for APGR/CPT, or (.., .., reason) when no pair has a quality gap.

    Default strong: the premium (highest predicted cost) model, or if another model scores higher on the test
    split, the highest-quality model. Default weak: the best model costing <= 10% of the strong one and scoring
    below it (else the cheapest model scoring below it).
    """
    for name in (strong, weak):
        if name is not None and name not in models:
            raise ValueError(f"--strong/--weak: unknown model {name!r}; models: {', '.join(models)}")
    if strong:
        i_s = models.index(strong)
    else:
        i_s = int(np.argmax(pred_cost))
        if model_q.max() > model_q[i_s]:
            i_s = int(np.argmax(model_q))
    below = [j for j in range(len(models)) if model_q[j] < model_q[i_s]]
    if weak:
        i_w = models.index(weak)
    elif below:
        cheap = [j for j in below if model_cost[j] <= 0.1 * model_cost[i_s]]
        i_w = max(cheap, key=lambda j: model_q[j]) if cheap else min(below, key=lambda j: model_cost[j])
    else:
        return i_s, i_s, f"no model scores below {models[i_s]} on the test split"
    if model_q[i_s] <= model_q[i_w]:
        return i_s, i_w, (f"strong {models[i_s]} (quality {model_q[i_s]:.4f}) does not score above weak "
                          f"{models[i_w]} ({model_q[i_w]:.4f}) on the test split")
    return i_s, i_w, None


def _pair_metrics(setup, mf, i_strong, i_weak, eps, seed, gam) -> dict:
    """APGR and CPT(50/80%) for a strong/weak pair: the MF router's score and Thompson's lambda sweep."""
    wt, it = setup.worlds["test"], setup.infos["test"]
    q = np.asarray(wt.quality, np.float64)
    qs, qw = q[:, i_strong], q[:, i_weak]
    qhat = mf["qhat"]
    score = qhat[:, i_strong] - qhat[:, i_weak]
    out = {"strong": it.models[i_strong], "weak": it.models[i_weak],
           "mf_router": {"apgr": M.apgr(score, qs, qw), "cpt50": M.cpt(score, qs, qw, 0.5),
                         "cpt80": M.cpt(score, qs, qw, 0.8)},
           "random": {"apgr": M.apgr(np.zeros_like(qs), qs, qw)}}
    # Thompson on the two-model world: its lambda sweep traces (share of strong calls, quality)
    w2, i2 = select_models(wt, it, [i_strong, i_weak])
    lams = np.concatenate([np.linspace(0, 0.3, 16), np.linspace(0.35, 3.0, 16)]).astype(np.float32)
    res = {}
    sel = [i_strong, i_weak]
    for key, pol in (("thompson", "thompson"), ("thompson_contextual", "contextual_thompson"),
                     ("thompson_contextual_warm", "contextual_thompson")):
        over = _hyper_overrides(setup, KERNEL_POLICIES[key][1], contextual=pol == "contextual_thompson")
        over = {name: (np.asarray(v)[..., sel] if name.startswith("prior_") else v)  # the pair's prior columns
                for name, v in over.items()}
        m, _ = run_policy(w2, i2, pol, episodes=eps, seed=seed, gam=gam, grid={"lam": lams}, hyper_overrides=over)
        st = episode_stats(m, i2, q.shape[0])
        share = st.choices[..., 0].mean(-1) / q.shape[0]
        qual = st.quality.mean(-1)
        pgr = (qual - qw.mean()) / (qs.mean() - qw.mean())
        # hull of (share, PGR) points with the two fixed endpoints: random mixing reaches everything below it
        hc, hq = M.nondecreasing_hull(np.r_[0.0, share, 1.0], np.r_[0.0, pgr, 1.0])
        grid = np.linspace(0, 1, 1001)
        curve = np.interp(grid, hc, hq)
        reach = lambda x: float(grid[np.argmax(curve >= x)]) if (curve >= x).any() else float("nan")
        res[key] = {"apgr": float(np.trapezoid(curve, grid)), "cpt50": reach(0.5), "cpt80": reach(0.8),
                    "share": share.tolist(), "pgr": pgr.tolist()}
    out.update(res)
    out["apgr"] = {k: v["apgr"] for k, v in out.items() if isinstance(v, dict) and "apgr" in v}
    out["cpt50"] = {k: v["cpt50"] for k, v in out.items() if isinstance(v, dict) and "cpt50" in v}
    out["cpt80"] = {k: v["cpt80"] for k, v in out.items() if isinstance(v, dict) and "cpt80" in v}
    return out


def _plots(out: Path, r: dict, stats, models, curves, info) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = info.cost_scale * r["steps_per_episode"]
    # cost-quality plane
    fig, ax = plt.subplots(figsize=(8, 5.5))
    zc, zq = M.nondecreasing_hull(*curves["zero_router"])
    ax.plot(zc * scale, zq, "k--", lw=1, label="Zero router (hull of single models)")
    ax.scatter(curves["zero_router"][0] * scale, curves["zero_router"][1], c="lightgray", s=18, zorder=1)
    for j, m in enumerate(models):
        ax.annotate(short_name(m), (curves["zero_router"][0][j] * scale, curves["zero_router"][1][j]), fontsize=6,
                    color="gray")
    for key, (c, q) in curves.items():
        if key in ("zero_router", "oracle"):
            continue
        o = np.argsort(c)
        ax.plot(c[o] * scale, q[o], "-", lw=1, alpha=0.6, label=f"{key} (λ sweep)")
    for key, p in r["policies"].items():
        ax.errorbar(p["cost_usd"]["mean"], p["quality"]["mean"],
                    xerr=[[p["cost_usd"]["mean"] - p["cost_usd"]["ci95"][0]], [p["cost_usd"]["ci95"][1] - p["cost_usd"]["mean"]]],
                    yerr=[[p["quality"]["mean"] - p["quality"]["ci95"][0]], [p["quality"]["ci95"][1] - p["quality"]["mean"]]],
                    fmt="o", ms=4, capsize=2)
        ax.annotate(key, (p["cost_usd"]["mean"], p["quality"]["mean"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("total cost of the test split (USD, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title(f"Cost–quality plane, {r['data']} test split ({r['episodes']} episodes, 95% CI)")
    ax.legend(fontsize=7, loc="lower right")
    savefig(fig, out / "cost_quality.png")

    # utilisation
    keys = [k for k in r["policies"] if k not in ("always_premium", "cheapest", "oracle")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bottom = np.zeros(len(keys))
    cmap = plt.get_cmap("tab20")
    for j, m in enumerate(models):
        vals = np.array([r["policies"][k]["utilization"][m] for k in keys])
        ax.bar(keys, vals, bottom=bottom, color=cmap(j % 20), label=short_name(m))
        bottom += vals
    ax.set_ylabel("share of queries")
    ax.set_title("Model utilisation per policy")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    ax.legend(fontsize=6, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    savefig(fig, out / "utilization.png")


def _report(r: dict, seconds: float) -> str:
    P = r["policies"]
    lines = [
        f"# Routing comparison: {r['data']}", "",
        f"Made by `{r['command']}` (seed {r['seed']}, {seconds:.0f} s). Every number below is in `metrics.json`, "
        f"computed by that command.", "",
        f"World: **{r['world_kind']}** (quality: {r['quality_kind']}); test split: {r['steps_per_episode']} queries; "
        f"{r['episodes']} episodes per policy, each routing every test query once in its own order; common random "
        f"numbers across policies. Token model for the cost/uncertainty terms: {r['token_model']}.", "",
        f"Always-premium (`{r['premium_model']}`): quality {r['always_premium']['quality']:.3f} at "
        f"${r['always_premium']['cost_usd']:.2f}; oracle: {r['oracle']['quality']:.3f} at ${r['oracle']['cost_usd']:.2f}.",
        "", f"λ of each cost-aware router chosen on the validation split: the largest cost reduction with quality "
        f"retention ≥ {r['target_retention']} (else the highest retention); γ = {r['gamma']}.", "",
        "Thompson variants: `thompson` starts from Beta(1, 1) for every model (the research code's default); "
        "`thompson_family_prior` gives each model a Beta prior from its family's other models on the training split; "
        "`thompson_contextual` keeps one posterior per query category; `thompson_warm` / "
        "`thompson_contextual_warm` start from the posterior after the training split (per category for the "
        "contextual one). All keep the research defaults, exploration rate max(0.05, 0.95^t) and utility "
        "π − λ·cost − γ·uncertainty, except `thompson_contextual_warm_pure`: the warm contextual router as pure "
        "Thompson sampling (exploration 0.95^t, no 0.05 floor), where the posterior's own spread explores.", "",
        f"**Thompson router chosen on validation**: `{r['thompson_router']['selected']}` (λ = "
        f"{r['thompson_router']['lam']:g}; validation retention {r['thompson_router']['val_retention']:.3f}, cost "
        f"reduction {r['thompson_router']['val_cost_reduction']:.3f}). On test: retention "
        f"{r['thompson_router']['quality_retention']['mean']:.3f}, cost reduction "
        f"{r['thompson_router']['cost_reduction']['mean']:.3f}; target (≥ {r['target_retention']} at ≥ 0.60) "
        f"{'met' if r['thompson_router']['target_met'] else 'NOT met'}; AIQ "
        f"{fmt(r['thompson_router']['aiq'], 3)} vs Zero router {r['aiq']['zero_router']:.3f} and MF router "
        f"{r['aiq']['mf_router']:.3f}.", "",
        "## Policies (test split, mean over episodes with bootstrap 95% CI)", "",
    ]
    rows = []
    for key, p in P.items():
        ci = lambda d: f"{d['mean']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"
        rows.append([key, fmt(p["lam"], 2) if p["lam"] is not None else "–", ci(p["quality_retention"]),
                     ci(p["cost_reduction"]), ci(p["quality_vs_oracle"]), f"{p['cost_usd']['mean']:.3f}",
                     fmt(p["regret"]["mean"], 1) if p["regret"] else "–",
                     f"{p['convergence_queries']['mean']:.0f}"])
    lines.append(md_table(["policy", "λ", "quality retention", "cost reduction", "quality vs oracle", "cost $",
                           "regret", "convergence (queries)"], rows))
    lines += ["", "Regret: cumulative pseudo-regret against the best fixed model in hindsight under the same utility "
              "(kernel definition); convergence: queries after which the rolling mean (window 50) of instantaneous "
              "regret stays below 0.05 to the end. Deterministic routers have zero-width intervals. The MF router is "
              "trained offline on the training split (no online learning), so regret/convergence do not apply.", "",
              "![cost-quality](cost_quality.png)", "", "![utilisation](utilization.png)", "",
              "## AIQ (RouterBench), over each router's λ sweep", ""]
    lines.append(md_table(["router", "AIQ"], [[k, v] for k, v in r["aiq"].items() if not k.startswith("_")]))
    lines += ["", f"Common cost bounds (normalised): [{r['aiq']['_c_lo']:.4f}, {r['aiq']['_c_hi']:.4f}].", "",
              f"## APGR / CPT (RouteLLM), strong `{r['pair']['strong']}` vs weak `{r['pair']['weak']}`", ""]
    if r["pair"].get("undefined"):
        lines += [f"Undefined here: {r['pair']['undefined']}.", ""]
    lines.append(md_table(["router", "APGR", "CPT(50%)", "CPT(80%)"],
                          [[k, r["apgr"][k], r["cpt50"].get(k), r["cpt80"].get(k)] for k in r["apgr"]]))
    lines += ["", "Thompson's APGR/CPT come from its λ sweep on the two-model world (share of strong calls vs "
              "performance gap recovered, upper hull with random mixing); the MF router's from its score "
              "P̂(strong) − P̂(weak); random = 0.5 by definition.", "",
              "## Significance (paired over episodes)", "",
              "Per-episode utility = mean quality − λ*·mean normalised cost, with λ* the tested Thompson variant's "
              "chosen λ; Wilcoxon signed-rank, Holm-adjusted over baselines; paired t-test p as a cross-check.", ""]
    for ts, tests in r["significance"].items():
        lines += [f"### {ts} (λ* = {r['lambda_selection'][ts]['lam']:g}) vs …", ""]
        lines.append(md_table(["baseline", "mean diff [95% CI]", "Wilcoxon p", "Holm p", "t-test p"],
                              [[b, f"{t['mean_diff']:+.4f} [{t['mean_diff_ci95'][0]:+.4f}, {t['mean_diff_ci95'][1]:+.4f}]",
                                f"{t['p_value']:.2e}", f"{t['p_holm']:.2e}", f"{t['ttest_p_value']:.2e}"]
                               for b, t in tests.items()]))
        lines.append("")
    lines += ["## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"
