"""`bandit-sim families`: how much a model's family tells about its behaviour (variance components and ICCs).

Per dataset and outcome (log(1 + output tokens); quality where the dataset has it) the variance splits into
family, model-within-family, prompt, prompt x family and residual parts (`hierarchical.variance`), estimated twice:

- Bayesian: the crossed random-effects model fit by SVI (NumPyro, optax), intervals from guide draws;
- classical: the ANOVA (method-of-moments) estimator of the complete table, intervals from a percentile bootstrap
  that resamples prompts and families independently.

Both use the same table: the (prompt, model) grid restricted to complete rows (models missing from more than
`MAX_MODEL_MISSING` of the prompts are dropped, then prompts with any missing model), and at most `max_prompts`
prompts drawn at random (seeded) to keep the fit inside the `bandit-sim run` budget. The report says how many were
dropped or subsampled.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from bandit_sim.data.loaders import load_data
from bandit_sim.experiments.report import command_line, md_table, savefig, write_json
from hierarchical.storage import atomic_write
from hierarchical.variance import (COMPONENTS, SUMMARIES, VarianceConfig, anova_bootstrap, fit_variance_nuts,
                                   fit_variance_svi)

__all__ = ["run_families", "complete_grid", "headlines", "DEFAULT_DATASETS", "MAX_MODEL_MISSING"]

DEFAULT_DATASETS = ("arenahard", "routerbench", "arenabench")
MAX_MODEL_MISSING = 0.05
# the quantity a user asks about first, then the rest of the summaries
KEYS = tuple(f"share_{c}" for c in COMPONENTS) + SUMMARIES


def complete_grid(table: pd.DataFrame, column: str, *, max_prompts: int | None, seed: int):
    """The complete (prompt, model) grid of one outcome column.

    Args:
      table: tidy routing table; column: "log_tokens" (log1p of output_tokens) or a table column.
      max_prompts: keep at most this many prompts (seeded random subset); None = all.
      seed: NumPy seed of the subset.
    Returns:
      (y (P, M) float64, models list, families list (M,), notes list of str).
    """
    t = table.assign(log_tokens=np.log1p(table["output_tokens"].astype(np.float64)))
    t = t[t[column].notna()]
    grid = t.pivot_table(index="prompt_id", columns="model", values=column, aggfunc="first", observed=True)
    notes = []
    miss = grid.isna().mean(axis=0)
    drop_models = sorted(miss.index[miss > MAX_MODEL_MISSING])
    if drop_models:
        grid = grid.drop(columns=drop_models)
        notes.append(f"{len(drop_models)} models missing from > {MAX_MODEL_MISSING:.0%} of prompts dropped: "
                     + ", ".join(drop_models))
    n0 = len(grid)
    grid = grid.dropna(axis=0, how="any")
    if len(grid) < n0:
        notes.append(f"{n0 - len(grid)} of {n0} prompts with a missing model dropped (complete table needed)")
    if max_prompts is not None and len(grid) > max_prompts:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(grid), max_prompts, replace=False))
        notes.append(f"{max_prompts} of {len(grid)} prompts used (random subset, seed {seed}) to keep the fit fast")
        grid = grid.iloc[keep]
    fam_of = t.groupby("model", observed=True)["family"].first()
    models = [str(m) for m in grid.columns]
    return grid.to_numpy(np.float64), models, [str(fam_of[m]) for m in models], notes


def _interval(x: np.ndarray) -> list[float]:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))] if x.size else [float("nan")] * 2


def _overlap(a: list[float], b: list[float]) -> bool:
    return bool(a[0] <= b[1] and b[0] <= a[1])


def analyse_outcome(y: np.ndarray, families: list[str], *, seed: int, n_boot: int, config: VarianceConfig,
                    nuts: bool = False) -> dict:
    """Both estimators on one complete table; returns the JSON-ready block of one outcome."""
    labels, fam = np.unique(np.asarray(families), return_inverse=True)
    n_p, n_m = y.shape
    pi, mi = np.repeat(np.arange(n_p), n_m), np.tile(np.arange(n_m), n_p)
    t0 = time.perf_counter()
    bayes = fit_variance_svi(pi, mi, fam, y.ravel(), config=config, seed=seed)
    t1 = time.perf_counter()
    boot = anova_bootstrap(y, fam, n_boot=n_boot, seed=seed)
    t2 = time.perf_counter()
    out = {"n_prompts": n_p, "n_models": n_m, "n_families": len(labels),
           "models_per_family": {str(g): int((fam == i).sum()) for i, g in enumerate(labels)},
           "outcome_sd": float(y.std()),
           "bayes": {"variance": {c: {"mean": float(bayes["var"][:, i].mean()), "ci95": _interval(bayes["var"][:, i])}
                                  for i, c in enumerate(COMPONENTS)},
                     "fit": bayes["meta"], "seconds": t1 - t0},
           "anova": {"variance_raw": {c: float(boot["var"][i]) for i, c in enumerate(COMPONENTS)},
                     "negative_raw_estimates": [c for i, c in enumerate(COMPONENTS) if boot["var"][i] < 0],
                     "bootstrap": {"replicates": n_boot, "resampled": "prompts and families, independently",
                                   "interval": "percentile"},
                     "seconds": t2 - t1}}
    for k in KEYS:
        d = bayes["summaries"][k]
        out["bayes"][k] = {"mean": float(np.nanmean(d)), "median": float(np.nanmedian(d)), "ci95": _interval(d)}
        out["anova"][k] = {"estimate": float(boot["summaries"][k]), "ci95": _interval(boot["boot_summaries"][k])}
    if nuts:  # the exact posterior of the same model, as a check of the SVI guide
        nu = fit_variance_nuts(pi, mi, fam, y.ravel(), seed=seed)
        out["nuts"] = {"fit": nu["meta"], "seconds": nu["seconds"]}
        for k in KEYS:
            d = nu["summaries"][k]
            out["nuts"][k] = {"mean": float(np.nanmean(d)), "median": float(np.nanmedian(d)), "ci95": _interval(d)}
    fb, fa = out["bayes"]["icc_family"]["ci95"], out["anova"]["icc_family"]["ci95"]
    agree = _overlap(fb, fa)
    out["family_icc_agreement"] = {
        "intervals_overlap": agree,
        "explanation": ("the two 95% intervals of the family ICC overlap" if agree else
                        "the intervals do not overlap: the bootstrap of a family variance from "
                        f"{len(labels)} families is crude (a replicate that draws the same family twice treats its "
                        "copies as two families, biasing the family variance down), while the Bayesian interval "
                        "leans on the HalfNormal prior when families are few")}
    bp_b, bp_a = out["bayes"]["family_beyond_prompt"], out["anova"]["family_beyond_prompt"]
    out["family_beyond_prompt_verdict"] = _verdict(bp_b, bp_a)
    return out


def _verdict(b: dict, a: dict) -> str:
    lo = min(b["ci95"][0], a["ci95"][0])
    both = b["ci95"][0] > 0.01 and a["ci95"][0] > 0.01
    what = (f"family (its main effect plus its prompt x family interaction) carries {b['median']:.1%} of the variance "
            f"beyond the prompt (Bayesian 95% interval {b['ci95'][0]:.1%}–{b['ci95'][1]:.1%}; ANOVA "
            f"{a['estimate']:.1%}, {a['ci95'][0]:.1%}–{a['ci95'][1]:.1%})")
    if both:
        return "yes: " + what
    if lo <= 0.01 and max(b["ci95"][1], a["ci95"][1]) < 0.05:
        return "little: " + what
    return "uncertain: " + what


def run_families(datasets, out: Path, *, seed: int = 0, max_prompts: int | None = 400, n_boot: int = 400,
                 steps: int = 1000, nuts: bool = False, quick: bool = False, argv=None) -> dict:
    """Variance components of each dataset's outcomes; writes DIR/metrics.json, DIR/report.md, DIR/<data>.png.

    Args:
      datasets: names or paths (each loaded with `load_data`).
      out: output folder; seed: seed of the subset, the SVI fit and the bootstrap.
      max_prompts: prompts per dataset (random subset; None = all complete prompts).
      n_boot: bootstrap replicates of the ANOVA estimator; steps: SVI steps.
      nuts: also sample the same Bayesian model by NUTS (exact posterior; a check of the SVI guide, slower).
      quick: small settings (smoke tests).
      argv: the command line to record (default sys.argv).
    Returns:
      The metrics dict.
    """
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        max_prompts, n_boot, steps = min(max_prompts or 40, 40), min(n_boot, 50), min(steps, 200)
    config = VarianceConfig(guide="mvn", num_steps=steps, num_samples=1000, centred=True)
    res = {"command": command_line(argv), "seed": seed, "max_prompts": max_prompts,
           "estimators": {
               "bayes": f"NumPyro crossed random effects (prompt and prompt x family effects integrated out "
                        f"exactly), SVI (full-rank {config.guide} guide, {steps} steps, optax Adam), model effects "
                        f"centred on their family's, y standardised, sigma ~ HalfNormal(1); {config.num_samples} guide draws",
               "anova": f"ANOVA method of moments on the complete table; percentile bootstrap ({n_boot} replicates) "
                        "resampling prompts and families independently"},
           "datasets": {}}
    for name in datasets:
        t0 = time.perf_counter()
        rd = load_data(name, seed=seed)
        outcomes = ["log_tokens"] + (["quality"] if rd.has_quality else [])
        block = {"quality_kind": rd.quality_kind, "outcomes": {}, "notes": []}
        for oc in outcomes:
            y, models, fams, notes = complete_grid(rd.table, oc, max_prompts=max_prompts, seed=seed)
            r = analyse_outcome(y, fams, seed=seed, n_boot=n_boot, config=config, nuts=nuts)
            r["notes"] = notes
            block["outcomes"][oc] = r
        block["seconds"] = time.perf_counter() - t0
        res["datasets"][rd.name] = block
        _plot(out / f"{rd.name}.png", rd.name, block)
    res["seconds"] = time.perf_counter() - t_start
    write_json(out / "metrics.json", res)
    atomic_write(out / "report.md", _report(res))
    return res


def _plot(path: Path, name: str, block: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [f"share_{c}" for c in COMPONENTS] + ["family_beyond_prompt", "family_of_model"]
    ocs = list(block["outcomes"])
    fig, axes = plt.subplots(1, len(ocs), figsize=(5.5 * len(ocs), 3.6), squeeze=False)
    for ax, oc in zip(axes[0], ocs):
        r = block["outcomes"][oc]
        ypos = np.arange(len(keys))
        series = [(-0.2, "bayes", "C0", "Bayesian (SVI)"), (0.0, "anova", "C1", "ANOVA + bootstrap")]
        if "nuts" in r:
            series.append((0.2, "nuts", "C2", "Bayesian (NUTS)"))
        for off, est, col, lab in series:
            mid = [r[est][k]["estimate" if est == "anova" else "median"] for k in keys]
            lo = [r[est][k]["ci95"][0] for k in keys]
            hi = [r[est][k]["ci95"][1] for k in keys]
            ax.errorbar(mid, ypos + off, xerr=[np.maximum(np.subtract(mid, lo), 0), np.maximum(np.subtract(hi, mid), 0)],
                        fmt="o", color=col, label=lab, capsize=2, ms=4)
        ax.set_yticks(ypos, keys)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of variance (95% interval)")
        ax.set_title(f"{name}: {oc} ({r['n_prompts']} prompts x {r['n_models']} models, {r['n_families']} families)",
                     fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    savefig(fig, path)


def _report(res: dict) -> str:
    lines = ["# Model-family correlation: variance components and ICCs", "",
             f"Made by `{res['command']}` (seed {res['seed']}, {res['seconds']:.0f} s).", "",
             "Outcome y of prompt p answered by model m of family f: y = μ + family_f + model_m + prompt_p + "
             "(prompt×family)_pf + residual. A share is one component's variance over the total. ICCs: "
             "`icc_family` = share_family (two models of a family, different prompts); `icc_model` = family + model "
             "(one model, two prompts); `icc_prompt` = share_prompt (two families, same prompt); "
             "`icc_prompt_family` = prompt + family + prompt×family (two models of a family, same prompt); "
             "`family_beyond_prompt` = family + prompt×family (what the family adds once the prompt is known); "
             "`family_of_model` = family / (family + model) (the part of between-model differences the family "
             "explains: what a family prior uses).", "",
             f"- Bayesian: {res['estimators']['bayes']}.", f"- Classical: {res['estimators']['anova']}.", "",
             "Why the intervals differ in width. The Bayesian interval is conditional on the model (Gaussian "
             "effects, HalfNormal(1) priors on the standardised scale) and its family variance leans on that prior "
             "when families are few. The bootstrap resamples families as well as prompts: a replicate that draws "
             "a family twice treats the copies as two families, and resampling both factors of a crossed design "
             "overstates the variance (McCullagh 2000), so its intervals are conservative, for every share (the "
             "total variance moves with the families drawn). A raw ANOVA estimate below 0 is truncated at 0. "
             "The SVI guide is Gaussian in log σ: when families are few the family variance's posterior has a long "
             "tail towards 0 that it cannot follow, so its family ICC median and lower bound are on the high side; "
             "`bandit-sim families --nuts` adds the exact posterior of the same model (NUTS) as a check.", ""]
    for name, block in res["datasets"].items():
        lines += [f"## {name}", "", f"![{name}]({name}.png)", ""]
        for oc, r in block["outcomes"].items():
            lines += [f"### {oc} ({r['n_prompts']} prompts × {r['n_models']} models in {r['n_families']} families)",
                      ""]
            rows = []
            for k in KEYS:
                b, a = r["bayes"][k], r["anova"][k]
                rows.append([k, f"{b['median']:.3f} [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]",
                             f"{a['estimate']:.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]"]
                            + ([f"{r['nuts'][k]['median']:.3f} [{r['nuts'][k]['ci95'][0]:.3f}, "
                                f"{r['nuts'][k]['ci95'][1]:.3f}]"] if "nuts" in r else []))
            lines.append(md_table(["quantity", "Bayesian (SVI) median [95% CI]", "ANOVA estimate [95% bootstrap CI]"]
                                  + (["same model by NUTS, median [95% CI]"] if "nuts" in r else []), rows))
            ag = r["family_icc_agreement"]
            lines += ["", f"- Family ICC, the two estimators: {'agree' if ag['intervals_overlap'] else 'DISAGREE'} "
                          f"({ag['explanation']}).",
                      f"- Does the family carry information beyond the prompt? {r['family_beyond_prompt_verdict']}."]
            if r["anova"]["negative_raw_estimates"]:
                lines.append(f"- Negative raw ANOVA estimates (truncated at 0 in the shares): "
                             f"{', '.join(r['anova']['negative_raw_estimates'])}.")
            lines += [f"- {n}" for n in r["notes"]]
            lines += [f"- Fit times: SVI {r['bayes']['seconds']:.1f} s, ANOVA + bootstrap {r['anova']['seconds']:.1f} s"
                      + (f", NUTS {r['nuts']['seconds']:.1f} s ({r['nuts']['fit']['divergences']} divergences)"
                         if "nuts" in r else "") + ".", ""]
    return "\n".join(lines) + "\n"


def headlines(m: dict) -> list[str]:
    """The headline lines of a families metrics dict (`bandit-sim run`'s index and the README quote them)."""
    out = []
    for name, b in sorted(m["datasets"].items()):
        parts = []
        for oc, r in b["outcomes"].items():
            fb, fa = r["bayes"]["icc_family"], r["anova"]["icc_family"]
            bp, ap = r["bayes"]["family_beyond_prompt"], r["anova"]["family_beyond_prompt"]
            parts.append(f"{oc}: family ICC {fb['median']:.3f} [{fb['ci95'][0]:.3f}, {fb['ci95'][1]:.3f}] "
                         f"(ANOVA {fa['estimate']:.3f} [{fa['ci95'][0]:.3f}, {fa['ci95'][1]:.3f}]), family beyond "
                         f"the prompt {bp['median']:.3f} [{bp['ci95'][0]:.3f}, {bp['ci95'][1]:.3f}] (ANOVA "
                         f"{ap['estimate']:.3f} [{ap['ci95'][0]:.3f}, {ap['ci95'][1]:.3f}])")
        out.append(f"{name}: " + "; ".join(parts))
    return out
