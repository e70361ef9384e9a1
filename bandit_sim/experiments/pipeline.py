"""`bandit-sim run`: regenerate every report under results/ from the bundled data.

Each stage writes its own folder with a report naming the command that made it; `results/README.md` indexes them.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from bandit_sim.data.describe import describe, format_description
from bandit_sim.data.loaders import BUNDLED, load_data
from bandit_sim.experiments.coldstart import run_coldstart
from bandit_sim.experiments.compare import run_compare
from bandit_sim.experiments.families import DEFAULT_DATASETS, run_families
from bandit_sim.experiments.families import headlines as families_headlines
from bandit_sim.experiments.impact import headlines as impact_headlines
from bandit_sim.experiments.impact import run_impact
from bandit_sim.experiments.sweep import parse_range, run_sweep
from bandit_sim.experiments.token_eval import run_token_eval
from hierarchical.storage import atomic_write

__all__ = ["run_all"]


def _stage_data(out: Path, seed: int, quick: bool) -> tuple[str, str, list[str]]:
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# Bundled datasets", "", "Made by `bandit-sim data describe --data NAME` for each bundled dataset "
             "(also `bandit-sim run`).", ""]
    summary = {}
    for name in BUNDLED:
        d = describe(load_data(name))
        summary[name] = d
        parts += [f"## {name}", "", "```", format_description(d), "```", ""]
    atomic_write(out / "describe.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    atomic_write(out / "README.md", "\n".join(parts))
    heads = [f"{n}: {d['n_prompts']} prompts x {d['n_models']} models ({d['quality_kind']})" for n, d in summary.items()]
    return "data/README.md", "dataset summaries (`bandit-sim data describe`)", heads


def _stage_tokens(out: Path, seed: int, quick: bool) -> tuple[str, str, list[str]]:
    seeds = [seed] if quick else [seed, seed + 1, seed + 2]
    extra = {"num_steps": 300, "num_samples": 100} if quick else {}
    cmd = f"bandit-sim tokens --data arenahard --out {out} --seed {seed} --n-seeds {len(seeds)}" + (
        " --steps 300" if quick else "")
    m = run_token_eval("arenahard", out, seeds, command=cmd, **extra)
    hp, hm = m["heldout_prompts"], m["heldout_models"]
    best_base = min((k for k in hp if k != "hierarchical" and isinstance(hp[k], dict) and "mae" in hp[k]),
                    key=lambda k: hp[k]["mae"])
    heads = [f"held-out prompts: hierarchical MAE {hp['hierarchical']['mae']:.1f} tokens vs best baseline "
             f"{best_base} {hp[best_base]['mae']:.1f}; coverage 50/80/95% = "
             + "/".join(f"{hp['hierarchical']['coverage'][c]:.3f}" for c in ("50", "80", "95")),
             f"held-out models: family prior MAE {hm['family_prior']['mae']:.1f} vs global prior "
             f"{hm['global_prior']['mae']:.1f} (paired p = {hm['paired_test']['p_value']:.2g})",
             "new model MAE after n = 0/10/50/100 observations: "
             + " / ".join(f"{v:.1f}" for v in m["new_model_after_n"].values()),
             f"fit_seconds {m['fit_seconds']:.1f}"]
    return "tokens/report.md", "token model vs baselines on arenahard (`bandit-sim tokens`)", heads


def _stage_compare(out: Path, seed: int, quick: bool) -> tuple[str, str, list[str]]:
    eps = 16 if quick else 1000
    argv = ["compare", "--data", "routerbench", "--episodes", str(eps), "--out", str(out), "--seed", str(seed)]
    r = run_compare("routerbench", out, episodes=eps, seed=seed, quick=quick,
                    argv=argv + (["--quick"] if quick else []))
    tr = r["thompson_router"]
    heads = [f"Thompson router chosen on validation: {tr['selected']} (λ = {tr['lam']:g}), test quality retention "
             f"{tr['quality_retention']['mean']:.3f} at cost reduction {tr['cost_reduction']['mean']:.3f}: target "
             f"(≥ 0.95 at ≥ 0.60) {'met' if tr['target_met'] else 'NOT met'}; AIQ {tr['aiq']:.3f}"]
    heads += [f"{k}: quality retention {p['quality_retention']['mean']:.3f}, cost reduction "
              f"{p['cost_reduction']['mean']:.3f} (λ = {p['lam']:g})" for k, p in r["policies"].items()
              if k in ("thompson", "thompson_contextual_warm", "mf_router")]
    heads.append("AIQ: " + ", ".join(f"{k} {v:.3f}" for k, v in r["aiq"].items() if not k.startswith("_")))
    return "compare/report.md", "routing comparison on RouterBench (`bandit-sim compare`)", heads


def _stage_coldstart(out: Path, seed: int, quick: bool) -> tuple[str, str, list[str]]:
    eps = 16 if quick else 100
    argv = ["coldstart", "--data", "routerbench", "--episodes", str(eps), "--out", str(out), "--seed", str(seed)]
    r = run_coldstart("routerbench", out, episodes=eps, seed=seed, quick=quick,
                      argv=argv + (["--quick"] if quick else []))
    heads = [f"median convergence after arrival: family prior {r['family_prior']['convergence_queries_median']:.0f} "
             f"vs flat prior {r['flat_prior']['convergence_queries_median']:.0f} queries; reduction "
             f"{r['reduction']:.3f}, p = {r['p_value']:.2g}",
             f"regret over the next 500 queries: family prior {r['family_prior']['regret_next_500_mean']:.2f} vs flat "
             f"{r['flat_prior']['regret_next_500_mean']:.2f} (reduction {r['regret_next_500_reduction']:.3f}, "
             f"p = {r['regret_test']['p_value']:.2g})"]
    return "coldstart/report.md", "cold start: family prior vs flat prior (`bandit-sim coldstart`)", heads


def _stage_sweep(out: Path, seed: int, quick: bool) -> tuple[str, str, list[str]]:
    lam, gam, eps = ("0:1:4", "0:1:4", 8) if quick else ("0:1:16", "0:1:16", 16)
    argv = ["sweep", "--data", "routerbench", "--lam", lam, "--gam", gam, "--episodes", str(eps), "--out", str(out),
            "--seed", str(seed)]
    r = run_sweep("routerbench", out, parse_range(lam, "lam"), parse_range(gam, "gam"), episodes=eps, seed=seed,
                  quick=quick, argv=argv + (["--quick"] if quick else []))
    heads = [f"{len(r['pareto'])} Pareto-optimal (λ, γ) cells of {len(r['lams']) * len(r['gams'])}"]
    return "sweep/report.md", "λ×γ sweep with Pareto frontier (`bandit-sim sweep`)", heads


def _stage_families(out: Path, seed: int, quick: bool) -> tuple[str, str, list[str]]:
    argv = ["families", "--data", ",".join(DEFAULT_DATASETS), "--out", str(out), "--seed", str(seed)]
    r = run_families(DEFAULT_DATASETS, out, seed=seed, quick=quick, argv=argv + (["--quick"] if quick else []))
    return ("families/report.md", "model-family correlation: variance components and ICCs (`bandit-sim families`)",
            families_headlines(r))


IMPACT_QUERIES_PER_DAY = 100_000  # the traffic profile of the results/ run (a parameter, not a result)


def _stage_impact(out: Path, seed: int, quick: bool) -> tuple[str, str, list[str]]:
    argv = ["impact", "--data", "routerbench", "--queries-per-day", str(IMPACT_QUERIES_PER_DAY), "--out", str(out),
            "--seed", str(seed)]
    r = run_impact("routerbench", out, queries_per_day=IMPACT_QUERIES_PER_DAY, seed=seed, quick=quick,
                   argv=argv + (["--quick"] if quick else []))
    return "impact/report.md", "economic impact: projected monthly cost (`bandit-sim impact`)", impact_headlines(r)


# impact runs after compare: it reuses compare's token-model fit (same dataset, seed and settings, cached)
STAGES = (("data", _stage_data), ("tokens", _stage_tokens), ("compare", _stage_compare),
          ("coldstart", _stage_coldstart), ("sweep", _stage_sweep), ("families", _stage_families),
          ("impact", _stage_impact))


def run_all(out: Path, seed: int = 0, quick: bool = False) -> int:
    """Run every stage that exists into ``out`` and write ``out/README.md``.

    Args:
      out: results folder.
      seed: base seed of every stage.
      quick: smaller versions of every stage (for smoke tests).
    Returns:
      Process exit code (0 on success).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = ["# Results", "", f"Generated by `bandit-sim run --out {out}{' --quick' if quick else ''} --seed {seed}` "
             f"(Python {platform.python_version()}, {platform.machine()}). Every figure in these reports is computed "
             "by the command named in that report; rerun it to reproduce.", ""]
    for name, stage in STAGES:
        t0 = time.perf_counter()
        print(f"[run] stage {name} ...", file=sys.stderr, flush=True)
        link, what, heads = stage(out / name, seed, quick)
        dt = time.perf_counter() - t0
        index.append(f"- [{what}]({link}) ({dt:.0f} s)")
        index += [f"  - {h}" for h in heads]
    atomic_write(out / "README.md", "\n".join(index) + "\n")
    print(f"[run] wrote {out / 'README.md'}", file=sys.stderr)
    return 0
