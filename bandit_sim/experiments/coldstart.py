"""`bandit-sim coldstart`: how fast a newly released model becomes useful, with and without its family's prior.

Protocol (DESIGN.md "Cold start"), for each family with at least two models, in turn:
- The new model is the family's best model on the training split (the newcomer worth adopting). It is absent for
  the first `arrival` queries of every episode (masked, utility -inf), then available.
- The other models start from their posterior after the training split (`incumbents="warm"`, default: an
  established router meets a newcomer), or from Beta(1, 1) (`incumbents="flat"`).
- Family prior: its quality prior is Beta(1 + w*m, 1 + w*(1-m)) from the training record of the other models of its
  family (m their mean quality, w = min(20, their rows)); its token prediction (cost and uncertainty terms) comes
  from the hierarchical model's family prior (the model is left out of the token fit). Flat prior: Beta(1, 1) and
  the token model's global prior. Every other arm is identical in both conditions, and both conditions share the
  episode keys (common random numbers), so the comparison is paired per episode.
- Convergence after arrival: the number of queries after the arrival after which the rolling mean (window 50) of
  instantaneous regret stays below `threshold` until the end of the episode (`bandit_sim.experiments.metrics.convergence_time`).
  Regret is the kernel's pseudo-regret against the best available model in hindsight under the same utility.
- Regret over the next 500 queries after the arrival; the new model's share of the post-arrival queries.
- Token error of the new model after n = 0, 10, 50, 100 observations of it (hierarchical conjugate update from the
  family prior vs from the global prior), MAE on its test-split answers.
- Significance: Wilcoxon signed-rank on the paired per-episode convergence times (pooled over families, and per family).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from bandit_sim.data.features import prompt_features
from bandit_sim.data.loaders import RoutingData, load_data
from bandit_sim.experiments import metrics as M
from bandit_sim.experiments.protocol import run_policy
from bandit_sim.experiments.report import command_line, md_table, savefig, short_name, write_json
from bandit_sim.experiments.stats import bootstrap_ci, paired_test
from bandit_sim.sim.priors import family_prior_from_train, warm_prior_from_train
from bandit_sim.sim.token_model import fit_token_model, predict_grid
from bandit_sim.sim.world import pivot_index, world_from_table
from hierarchical.predictive import predict
from hierarchical.storage import atomic_write
from hierarchical.update import add_new_model

__all__ = ["run_coldstart", "NEW_MODEL_N"]

NEW_MODEL_N = (0, 10, 50, 100)
WINDOW = 50


def _newcomers(rd) -> dict[str, str]:
    """family -> its best model on train, for families with >= 2 models."""
    train = rd.split("train")
    q = train.groupby("model")["quality"].mean()
    fam = train.groupby("model")["family"].first()
    out = {}
    for f in sorted(fam.unique()):
        members = fam.index[fam == f]
        if len(members) >= 2:
            out[f] = str(q[members].idxmax())
    return out


def _token_mae_after_n(rd, fit, model: str, seed: int) -> dict:
    """MAE of the new model's predicted median tokens on its test rows after n observations from train."""


    t = rd.table[rd.table["model"] == model]
    train = t[t["split"] == "train"].sample(frac=1.0, random_state=seed)
    test = t[t["split"] == "test"]
    x_test = prompt_features(rd.table, test["prompt_id"])
    y_test = test["output_tokens"].to_numpy(float)
    fam = fit.family_index(t["family"].iloc[0])
    out = {"family_prior": {}, "global_prior": {}}
    for n in NEW_MODEL_N:
        obs = train.iloc[:n]
        x_obs = prompt_features(rd.table, obs["prompt_id"]) if n else np.zeros((0, x_test.shape[1]), np.float32)
        for key, f in (("family_prior", fam), ("global_prior", None)):
            post = add_new_model(fit.post, x_obs, obs["output_tokens"].to_numpy(float), f, seed=seed)
            pred = predict(post, x_test, np.full(len(x_test), post.n_models - 1), key=jax.random.key(seed))
            out[key][str(n)] = float(np.mean(np.abs(np.asarray(pred.median) - y_test)))
    return out


def run_coldstart(data: str, out: Path, *, episodes: int = 500, arrival: int = 200, seed: int = 0, lam: float = 0.3,
                  gam: float = 0.25, threshold: float = 0.02, tokens: str = "hierarchical", quick: bool = False,
                  incumbents: str = "warm", argv=None, progress: bool = True) -> dict:
    """Run the cold-start protocol and write DIR/metrics.json, DIR/report.md, DIR/convergence.png.

    Args:
      data: dataset; out: folder; episodes: E per family and prior; arrival: T0 queries before the arrival;
      seed: base seed; lam, gam: utility weights; threshold: convergence threshold; tokens: "hierarchical" or
      "standin"; quick: smoke settings; incumbents: "warm" (the other models start from their training-split
      posterior: an established router meets a newcomer) or "flat" (everything starts from Beta(1, 1));
      argv: command to record; progress: progress bar.
    Returns:
      metrics dict.
    """
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rd = data if isinstance(data, RoutingData) else load_data(data, seed=seed)
    data = rd.name
    if not rd.has_quality:
        raise ValueError(f"dataset {data!r} has no quality signal; cold start needs routing quality")
    newcomers = _newcomers(rd)
    if not newcomers:
        raise ValueError(f"dataset {data!r} has no family with two or more models: no family prior to compare")
    n_test = rd.split("test")["prompt_id"].nunique()
    if incumbents not in ("warm", "flat"):
        raise ValueError(f"incumbents must be 'warm' or 'flat', got {incumbents!r}")
    if not 0 <= arrival < n_test - WINDOW:
        raise ValueError(f"--arrival {arrival} must leave at least {WINDOW} of the {n_test} test queries after it")

    per_family, curves = {}, {}
    conv_fam_all, conv_flat_all, reg_fam_all, reg_flat_all = [], [], [], []
    for fam, model in tqdm(list(newcomers.items()), desc="coldstart", unit="family", disable=not progress):
        worlds = {}
        if tokens == "hierarchical":
            fit = fit_token_model(rd, seed=seed, exclude_models=[model], quick=quick)
            # the conditions differ only in the newcomer's column: predict the grid once, then that column
            mean, sd = predict_grid(fit, rd, "test", prior={model: "family"}, seed=seed)
            j = pivot_index(rd.table, "test")[1].index(model)
            mean_g, sd_g = mean.copy(), sd.copy()
            mean_g[:, j:j + 1], sd_g[:, j:j + 1] = predict_grid(fit, rd, "test", prior={model: "global"}, seed=seed,
                                                                columns=[model])
            for cond, pred in (("family_prior", (mean, sd)), ("flat_prior", (mean_g, sd_g))):
                worlds[cond] = world_from_table(rd.table, "test", pred=pred, arrival={model: arrival})
            token_mae = _token_mae_after_n(rd, fit, model, seed)
        else:
            w = world_from_table(rd.table, "test", arrival={model: arrival})
            worlds = {"family_prior": w, "flat_prior": w}
            token_mae = None
        res = {}
        for cond, (w, info) in worlds.items():
            k = len(info.models)
            j = info.models.index(model)
            if incumbents == "warm":  # an established router: the other models start from their training record
                a, b = warm_prior_from_train(rd, info.models)
                a, b = a.copy(), b.copy()
            else:
                a, b = np.ones(k, np.float32), np.ones(k, np.float32)
            a[j], b[j] = 1.0, 1.0  # the newcomer has no record of its own
            if cond == "family_prior":
                fa, fb = family_prior_from_train(rd, info.models)
                a[j], b[j] = fa[j], fb[j]
            m, traj = run_policy(w, info, "thompson", episodes=episodes, seed=seed, lam=lam, gam=gam,
                                 trajectories=True, conv_threshold=threshold,
                                 hyper_overrides={"prior_alpha": a, "prior_beta": b})
            regret = np.asarray(jax.device_get(traj.regret), np.float64)[:, arrival:]  # (E, T - T0)
            arms = np.asarray(jax.device_get(traj.arm))[:, arrival:]
            conv = M.convergence_time(regret, threshold, WINDOW)
            res[cond] = {"conv": conv.queries.astype(float), "converged": conv.converged,
                         "regret500": regret[:, :500].sum(1), "share_new": (arms == j).mean(1),
                         "rolling": M.rolling_mean(regret, WINDOW), "prior": [float(a[j]), float(b[j])]}
        f, fl = res["family_prior"], res["flat_prior"]
        test = paired_test(f["conv"], fl["conv"], "wilcoxon", seed=seed)
        test_r = paired_test(f["regret500"], fl["regret500"], "wilcoxon", seed=seed)
        per_family[fam] = {
            "new_model": model,
            "family_prior": {"convergence_queries_median": float(np.median(f["conv"])),
                             "convergence_queries_mean": bootstrap_ci(f["conv"], seed=seed).as_dict(),
                             "converged_share": float(f["converged"].mean()),
                             "regret_next_500": bootstrap_ci(f["regret500"], seed=seed).as_dict(),
                             "new_model_share": float(f["share_new"].mean()), "beta_prior": f["prior"]},
            "flat_prior": {"convergence_queries_median": float(np.median(fl["conv"])),
                           "convergence_queries_mean": bootstrap_ci(fl["conv"], seed=seed).as_dict(),
                           "converged_share": float(fl["converged"].mean()),
                           "regret_next_500": bootstrap_ci(fl["regret500"], seed=seed).as_dict(),
                           "new_model_share": float(fl["share_new"].mean()), "beta_prior": fl["prior"]},
            "convergence_test": test.as_dict(),
            "regret_test": test_r.as_dict(),
            "token_mae_after_n": token_mae,
        }
        curves[fam] = (model, f["rolling"], fl["rolling"])
        conv_fam_all.append(f["conv"])
        conv_flat_all.append(fl["conv"])
        reg_fam_all.append(f["regret500"])
        reg_flat_all.append(fl["regret500"])

    cf, cfl = np.concatenate(conv_fam_all), np.concatenate(conv_flat_all)
    pooled = paired_test(cf, cfl, "wilcoxon", seed=seed)
    rf, rfl = np.concatenate(reg_fam_all), np.concatenate(reg_flat_all)
    pooled_regret = paired_test(rf, rfl, "wilcoxon", seed=seed)
    med_f, med_fl = float(np.median(cf)), float(np.median(cfl))
    maes = [v["token_mae_after_n"] for v in per_family.values() if v["token_mae_after_n"]]
    token_mean = ({k: {n: float(np.mean([m[k][n] for m in maes])) for n in maes[0][k]} for k in maes[0]}
                  if maes else None)
    result = {
        "command": command_line(argv), "data": data, "seed": seed, "episodes": episodes, "arrival": arrival,
        "steps_per_episode": int(n_test), "incumbents": incumbents, "lam": lam, "gam": gam, "threshold": threshold, "window": WINDOW,
        "newcomers": newcomers,
        "skipped_families": sorted(set(rd.split("train")["family"]) - set(newcomers)),
        "family_prior": {"convergence_queries_median": med_f,
                         "regret_next_500_mean": float(np.mean([v["family_prior"]["regret_next_500"]["estimate"]
                                                                for v in per_family.values()]))},
        "flat_prior": {"convergence_queries_median": med_fl,
                       "regret_next_500_mean": float(np.mean([v["flat_prior"]["regret_next_500"]["estimate"]
                                                              for v in per_family.values()]))},
        "reduction": (1.0 - med_f / med_fl) if med_fl > 0 else float("nan"),
        "p_value": pooled.p_value,
        "test": pooled.as_dict(),
        "regret_next_500_reduction": float(1.0 - rf.mean() / rfl.mean()) if rfl.mean() > 0 else float("nan"),
        "regret_test": pooled_regret.as_dict(),
        "new_model_token_mae": token_mean,
        "per_family": per_family,
        "token_model": "hierarchical (family prior vs global prior for the new model)" if tokens == "hierarchical"
        else "stand-in (the same for both conditions)",
        "notes": list(rd.notes),
    }
    _plot(out, curves, arrival, threshold)
    write_json(out / "metrics.json", result)
    atomic_write(out / "report.md", _report(result, time.perf_counter() - t_start))
    return result


def _plot(out: Path, curves, arrival: int, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, (fam, (model, rf, rfl)) in zip(axes[0], curves.items()):
        x = np.arange(rf.shape[1])
        for r, label, c in ((rf, "family prior", "tab:blue"), (rfl, "flat prior", "tab:orange")):
            ax.plot(x, r.mean(0), c=c, label=label)
            ax.fill_between(x, np.quantile(r, 0.1, 0), np.quantile(r, 0.9, 0), color=c, alpha=0.2)
        ax.axhline(threshold, ls=":", c="k", lw=0.8)
        ax.set_title(f"{fam}: {short_name(model)} arrives", fontsize=9)
        ax.set_xlabel(f"queries after arrival (step {arrival})")
        ax.set_ylabel("rolling mean regret (w=50)")
        ax.legend(fontsize=7)
    savefig(fig, out / "convergence.png")


def _report(r: dict, seconds: float) -> str:
    rf_mean, rfl_mean = r["family_prior"]["regret_next_500_mean"], r["flat_prior"]["regret_next_500_mean"]
    lines = [f"# Cold start: {r['data']}", "",
             f"Made by `{r['command']}` (seed {r['seed']}, {seconds:.0f} s). {r['episodes']} episodes per family and "
             f"prior; each routes the {r['steps_per_episode']} test queries once; the new model arrives after "
             f"{r['arrival']} queries; the other models start from "
             f"{'their training-split posterior' if r['incumbents'] == 'warm' else 'Beta(1, 1)'}. "
             f"Thompson with λ = {r['lam']}, γ = {r['gam']}. Convergence threshold "
             f"{r['threshold']} on the rolling (window {r['window']}) mean of instantaneous regret. "
             f"Token model: {r['token_model']}.", "",
             "## Summary (pooled over families)", ""]
    lines.append(md_table(["", "family prior", "flat prior"], [
        ["median convergence (queries after arrival)", r["family_prior"]["convergence_queries_median"],
         r["flat_prior"]["convergence_queries_median"]],
        ["mean regret over the next 500 queries", r["family_prior"]["regret_next_500_mean"],
         r["flat_prior"]["regret_next_500_mean"]]]))
    lines += ["", f"Reduction of the median convergence time: **{r['reduction']:.3f}**; paired Wilcoxon signed-rank "
              f"over all episodes: p = {r['p_value']:.3g} (statistic {r['test']['statistic']:.1f}, mean difference "
              f"{r['test']['mean_diff']:+.1f} queries).", "",
              f"Regret over the next 500 queries: family prior {rf_mean:.2f} vs flat {rfl_mean:.2f}, reduction "
              f"**{r['regret_next_500_reduction']:.3f}**; paired Wilcoxon p = {r['regret_test']['p_value']:.3g}.", "",
              "![convergence](convergence.png)", "", "## Per family", ""]
    rows = []
    for fam, v in r["per_family"].items():
        rows.append([fam, f"`{v['new_model']}`", v["family_prior"]["convergence_queries_median"],
                     v["flat_prior"]["convergence_queries_median"], f"{v['convergence_test']['p_value']:.3g}",
                     v["family_prior"]["regret_next_500"]["estimate"], v["flat_prior"]["regret_next_500"]["estimate"],
                     v["family_prior"]["new_model_share"], v["flat_prior"]["new_model_share"]])
    lines.append(md_table(["family", "new model", "median conv. (family)", "median conv. (flat)", "p",
                           "regret 500 (family)", "regret 500 (flat)", "new-model share (family)",
                           "new-model share (flat)"], rows))
    if r["skipped_families"]:
        lines += ["", f"Families with a single model (no family history to borrow) are skipped: "
                      f"{', '.join(r['skipped_families'])}."]
    if r["new_model_token_mae"]:
        lines += ["", "## New model's token error after n observations (MAE in tokens, mean over families)", ""]
        tm = r["new_model_token_mae"]
        lines.append(md_table(["prior"] + [f"n = {n}" for n in tm["family_prior"]],
                              [[k] + list(v.values()) for k, v in tm.items()]))
    lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"
