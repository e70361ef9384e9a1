"""The `bandit-sim` command line.

    bandit-sim data describe [--data NAME|PATH] [--json]
    bandit-sim data validate PATH
    bandit-sim tokens | compare | coldstart | sweep | families | impact | bench ...
    bandit-sim run            # the main job on the bundled data: regenerates results/
    bandit-sim serve --config router.toml    # the OpenAI-compatible routing server (docs/serve.md)

Every command takes `--prices FILE` (before or after the command name): your own models' prices (TOML/CSV/JSON,
`bandit_sim.data.prices`), registered for the process before the command runs.

Run `bandit-sim COMMAND --help` for each command's options.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import jax

from bandit_sim.data.describe import describe, format_description
from bandit_sim.data.loaders import load_data
from bandit_sim.data.prices import PricesFileError, use_prices_file
from bandit_sim.data.schema import DataValidationError
from bandit_sim.experiments.coldstart import run_coldstart
from bandit_sim.experiments.compare import check_fractions, run_compare
from bandit_sim.experiments.families import DEFAULT_DATASETS, run_families
from bandit_sim.experiments.impact import DEFAULT_ROUTERS, ROUTERS, check_routers, parse_mix, run_impact
from bandit_sim.experiments.pipeline import STAGES, run_all
from bandit_sim.experiments.report import pval
from bandit_sim.experiments.sweep import parse_range, run_sweep
from bandit_sim.experiments.token_eval import PROMPT_METHODS, run_token_eval
from bandit_sim.serve.cli import add_serve_subparser

__all__ = ["main", "build_parser"]

DATA_HELP = ("dataset: routerbench | arenabench | arenahard (bundled), synthetic, arena55k, "
             "or a path to a Parquet/CSV table in the schema (see README)")


def _cmd_data_describe(args) -> int:
    rd = load_data(args.data, seed=args.seed)
    d = describe(rd)
    print(json.dumps(d, indent=2) if args.json else format_description(d))
    return 0


def _cmd_data_validate(args) -> int:
    path = Path(args.path)
    if not path.exists():
        print(f"error: no such file: {path}", file=sys.stderr)
        return 2
    rd = load_data(path, require_costs=False)  # the schema only: unpriced models pass with a warning
    t = rd.table
    print(f"{path}: valid routing table: {len(t)} rows, {t['prompt_id'].nunique()} prompts, "
          f"{t['model'].nunique()} models")
    for n in rd.notes:
        if n.startswith("warning:"):
            print(n, file=sys.stderr)
        else:
            print(f"- {n}")
    return 0


def _cmd_run(args) -> int:
    return run_all(Path(args.out), seed=args.seed, quick=args.quick, stages=args.stages)


def _add_experiment_subparsers(sub) -> None:
    """Register `compare`, `coldstart` and `sweep` on the `bandit-sim` subparsers."""
    c = sub.add_parser("compare", help="every router in a cold and a warm track over prompt-level folds "
                                       "(report + metrics.json + plots)")
    c.add_argument("--data", default="routerbench", help=DATA_HELP)
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--folds", type=int, default=5, help="prompt-level folds (default 5)")
    c.add_argument("--episodes", type=int, default=16,
                   help="episodes per learner and lambda, on validation and test (default 16)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tokens", choices=("hierarchical", "standin"), default="hierarchical",
                   help="token model behind the cost/uncertainty terms, fit per fold on its training prompts "
                        "(default: hierarchical)")
    c.add_argument("--target-retention", type=float, default=0.95,
                   help="quality retention the validation lambda selection aims for (default 0.95)")
    c.add_argument("--premium", help="the premium model (default: the best by training-split quality, ties cheaper)")
    c.add_argument("--uncertainty", choices=("scaled", "research"), default="scaled",
                   help="utility form: pi - lam*(cost + 0.25*sd) (scaled, default: lam = 0 is quality only) or "
                        "pi - lam*cost - 0.25*sd (research)")
    c.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates of the intervals (default 200)")
    c.add_argument("--learning-curve", nargs="?", const="0.1,0.25,0.5,1", default=None, metavar="SHARES",
                   help="also run the warm track with shares of each fold's training prompts (default shares "
                        "0.1,0.25,0.5,1): AIQ per router and share with intervals (metrics.json key "
                        "learning_curve, learning_curve.png)")
    c.add_argument("--quick", action="store_true", help="small settings (smoke test)")
    c.set_defaults(func=_cmd_compare)

    s = sub.add_parser("sweep", help="a lambda x gamma grid of the Thompson router (heatmaps, Pareto frontier); "
                                     "checkpointed per chunk, resumes where it stopped")
    s.add_argument("--data", default="routerbench", help=DATA_HELP)
    s.add_argument("--lam", default="0:1:16", help="cost weights: start:stop:n or a comma list (default 0:1:16)")
    s.add_argument("--gam", default="0:1:16", help="uncertainty weights: start:stop:n or a comma list (default 0:1:16)")
    s.add_argument("--episodes", type=int, default=64, help="episodes per cell (default 64)")
    s.add_argument("--out", required=True, help="output folder (holds the checkpoint)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--policy", choices=("thompson", "contextual_thompson"), default="thompson")
    s.add_argument("--chunk-cells", type=int, default=32, help="grid cells per compiled call / checkpoint (default 32)")
    s.add_argument("--tokens", choices=("hierarchical", "standin"), default="hierarchical")
    s.add_argument("--quick", action="store_true", help="small settings (smoke test)")
    s.set_defaults(func=_cmd_sweep)

    cs = sub.add_parser("coldstart", help="a new model arrives: family prior vs flat prior, Beta and linear "
                                          "Thompson on the query text (convergence, regret, token error)")
    cs.add_argument("--data", default="routerbench", help=DATA_HELP)
    cs.add_argument("--out", required=True, help="output folder")
    cs.add_argument("--episodes", type=int, default=500, help="episodes per family and prior (default 500)")
    cs.add_argument("--arrival", type=int, default=200, help="queries before the new model arrives (default 200)")
    cs.add_argument("--horizon", type=int, default=500,
                    help="queries measured after the arrival (>= 100; default 500)")
    cs.add_argument("--seed", type=int, default=0)
    cs.add_argument("--lam", type=float, default=0.3, help="cost weight (default 0.3)")
    cs.add_argument("--gamma", "--gam", dest="gamma", type=float, default=0.25,
                    help="uncertainty weight: utility pi - lam * (cost + gamma * sd) (default 0.25)")
    cs.add_argument("--tokens", choices=("hierarchical", "standin"), default="hierarchical")
    cs.add_argument("--incumbents", choices=("warm", "flat"), default="warm",
                    help="the other models start from their training-split posterior (warm, default) or Beta(1, 1)")
    cs.add_argument("--quick", action="store_true", help="small settings (smoke test)")
    cs.set_defaults(func=_cmd_coldstart)


def _positive(name: str, v, lo=1):
    if not v >= lo:  # NaN too
        raise ValueError(f"--{name} must be >= {lo}, got {v}")


def _finite(name: str, v, lo: float | None = 0.0, *, above: bool = False):
    """A float option: finite, and >= lo (> lo with `above`); ValueError naming it otherwise (None passes)."""
    if v is None:
        return
    if not math.isfinite(v) or (lo is not None and (v <= lo if above else v < lo)):
        raise ValueError(f"--{name} must be a finite number {'>' if above else '>='} {lo:g}, got {v}")


def _fractions(text: str | None):
    """--learning-curve SHARES: a comma list of shares in (0, 1] (None: no learning curve)."""
    if text is None:
        return False
    try:
        vals = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError as e:
        raise ValueError(f"--learning-curve takes a comma list of shares in (0, 1], e.g. 0.1,0.5,1; got {text!r}") from e
    return check_fractions(vals)


def _cmd_compare(args) -> int:
    _positive("episodes", args.episodes)
    _positive("folds", args.folds, lo=2)
    _positive("bootstrap", args.bootstrap, lo=10)
    if not 0 < args.target_retention <= 1.5:
        raise ValueError(f"--target-retention must be in (0, 1.5], got {args.target_retention}")
    r = run_compare(args.data, Path(args.out), folds=args.folds, episodes=args.episodes, seed=args.seed,
                    tokens=args.tokens, target_retention=args.target_retention, premium=args.premium,
                    uncertainty=args.uncertainty, bootstrap=args.bootstrap, quick=args.quick,
                    learning_curve=_fractions(args.learning_curve))
    h = r["headline"]
    print(f"wrote {args.out}/report.md: headline {h['router']} (warm track, chosen on validation): retention "
          f"{h['test']['quality_retention']['mean']:.3f}, cost reduction {h['test']['cost_reduction']['mean']:.3f}, "
          f"AIQ {h['test']['aiq']['mean']:.3f}")
    return 0


def _cmd_sweep(args) -> int:
    _positive("episodes", args.episodes)
    _positive("chunk-cells", args.chunk_cells)
    r = run_sweep(args.data, Path(args.out), parse_range(args.lam, "lam"), parse_range(args.gam, "gam"),
                  episodes=args.episodes, seed=args.seed, tokens=args.tokens, chunk_cells=args.chunk_cells,
                  policy=args.policy, quick=args.quick)
    print(f"wrote {args.out}/report.md ({len(r['pareto'])} Pareto-optimal cells)")
    return 0


def _cmd_coldstart(args) -> int:
    _positive("episodes", args.episodes, lo=2)
    _positive("arrival", args.arrival, lo=0)
    _positive("horizon", args.horizon, lo=100)
    _finite("lam", args.lam)
    _finite("gamma", args.gamma)
    r = run_coldstart(args.data, Path(args.out), episodes=args.episodes, arrival=args.arrival, horizon=args.horizon,
                      seed=args.seed, lam=args.lam, gamma=args.gamma, tokens=args.tokens, quick=args.quick,
                      incumbents=args.incumbents)
    lin = r["linear_thompson"]

    def red(x) -> str:  # a reduction is undefined (NaN) where the reference regret is not positive
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"

    def p(x) -> str:  # episode-level p (conditional on these newcomers), and across newcomers where present
        pn = x.get("p_value_newcomers")
        return (f"p = {x['p_value']:.3g} over (newcomer, episode) units, conditional on these newcomers"
                + ("" if "p_value_newcomers" not in x else
                   f"; p = {pval(pn)} across newcomers"))

    print(f"wrote {args.out}/report.md: regret over the next 500 queries reduced by "
          f"{red(r['regret_next_500_reduction'])} with the family prior ({p(r)}); linear Thompson on "
          f"the query text: {red(lin['regret_next_500_reduction'])} ({p(lin)}); excess regret over "
          f"the router that knows the newcomer reduced by {red(r['excess_regret_next_500_reduction'])} (Beta), "
          f"{red(lin['excess_regret_next_500_reduction'])} (linear)")
    return 0


def _cmd_tokens(args) -> int:
    _positive("n-seeds", args.n_seeds)
    _positive("steps", args.steps)
    _positive("batch-size", args.batch_size, lo=0)
    seeds = [args.seed + i for i in range(args.n_seeds)]
    command = "bandit-sim " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    m = run_token_eval(args.data, Path(args.out), seeds, num_steps=args.steps, batch_size=args.batch_size or None,
                       guide=args.guide, progress=not args.no_progress, command=command)
    hp, hm = m["heldout_prompts"], m["heldout_models"]
    print(f"held-out prompts MAE: " + ", ".join(f"{k} {hp[k]['mae']:.1f}" for k in PROMPT_METHODS))
    print(f"hierarchical coverage: {hp['hierarchical']['coverage']}")
    print(f"held-out models MAE: family {hm['family_prior']['mae']:.1f} vs global {hm['global_prior']['mae']:.1f} "
          f"(p = {hm['paired_test']['p_value']})")
    print(f"new model MAE after n: {m['new_model_after_n']}; fit_seconds {m['fit_seconds']:.1f}")
    print(f"wrote {args.out}/report.md, metrics.json, calibration.png, per_family_error.png")
    return 0


def _add_tokens_subparser(subparsers) -> argparse.ArgumentParser:
    """Register `tokens` on a `bandit-sim` subparsers object.

    Args:
      subparsers: the object returned by `ArgumentParser.add_subparsers`.
    Returns:
      The `tokens` parser.
    """
    p = subparsers.add_parser("tokens", help="evaluate the hierarchical token model against baselines")
    p.add_argument("--data", default="arenahard", help="dataset name or table path (default arenahard)")
    p.add_argument("--out", default="results/tokens", help="output folder (default results/tokens)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--n-seeds", type=int, default=3, help="number of seeds seed, seed+1, ... (default 3)")
    p.add_argument("--steps", type=int, default=14000,
                   help="SVI step budget per fit; the convergence check stops earlier (default 14000)")
    p.add_argument("--batch-size", type=int, default=8192,
                   help="SVI minibatch rows (default 8192; 0 = full batch; tables this small run full batch)")
    p.add_argument("--guide", choices=("normal", "lowrank"), default="normal", help="SVI guide (default normal)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_tokens)
    return p


def _cmd_bench(args) -> int:
    # the benchmark lives outside the package (benchmarks/), so it runs as its own process: bandit_sim never
    # imports it
    cmd = [sys.executable, "-m", "benchmarks.bench_kernel", "--out", str(args.out)] + (["--quick"] if args.quick else [])
    return subprocess.run(cmd, check=False).returncode


def _cmd_families(args) -> int:
    names = [n.strip() for n in args.data.split(",") if n.strip()]
    if not names:
        raise ValueError("--data: give at least one dataset")
    _positive("max-prompts", args.max_prompts)
    _positive("boot", args.boot, lo=10)
    _positive("steps", args.steps, lo=10)
    r = run_families(names, Path(args.out), seed=args.seed, max_prompts=args.max_prompts, n_boot=args.boot,
                     steps=args.steps, nuts=args.nuts, quick=args.quick)
    for name, b in r["datasets"].items():
        for oc, o in b["outcomes"].items():
            fb, fa = o["bayes"]["icc_family"], o["anova"]["icc_family"]
            print(f"{name} {oc}: family ICC {fb['median']:.3f} [{fb['ci95'][0]:.3f}, {fb['ci95'][1]:.3f}] (Bayesian), "
                  f"{fa['estimate']:.3f} [{fa['ci95'][0]:.3f}, {fa['ci95'][1]:.3f}] (ANOVA)")
    print(f"wrote {args.out}/report.md, metrics.json and one plot per dataset")
    return 0


def _cmd_impact(args) -> int:
    _finite("queries-per-day", args.queries_per_day, above=True)
    _finite("days", args.days, above=True)
    _positive("episodes", args.episodes)
    _finite("compute-usd-per-hour", args.compute_usd_per_hour)
    _finite("latency-ms", args.latency_ms)
    mix = parse_mix(args.mix)
    routers = [r.strip() for r in args.routers.split(",")] if args.routers else list(DEFAULT_ROUTERS)
    try:
        check_routers(routers)
    except ValueError as exc:
        raise ValueError(f"--routers: {exc}") from None
    r = run_impact(args.data, Path(args.out), queries_per_day=args.queries_per_day, days=args.days,
                   mix=mix, prices=getattr(args, "prices", None), episodes=args.episodes, seed=args.seed,
                   tokens=args.tokens, latency_ms=args.latency_ms, compute_usd_per_hour=args.compute_usd_per_hour,
                   quick=args.quick, routers=routers)
    for k, v in r["routers"].items():
        c, s = v["monthly_cost_usd"], v.get("vs_always_premium")
        print(f"{k}: ${c['estimate']:,.2f}/month [{c['ci95'][0]:,.2f}, {c['ci95'][1]:,.2f}]"
              + (f", saves {s['savings_fraction']['estimate']:.1%} vs always-premium" if s else ""))
    print(f"wrote {args.out}/report.md, metrics.json, monthly_cost.png")
    return 0


def _add_analysis_subparsers(sub) -> None:
    """Register `families` (variance components / ICCs) and `impact` (monthly cost projection)."""
    f = sub.add_parser("families", help="how much a model's family tells about its behaviour: variance components "
                                        "and ICCs (Bayesian SVI and ANOVA)")
    f.add_argument("--data", default=",".join(DEFAULT_DATASETS),
                   help="dataset(s), comma-separated (default: %(default)s); " + DATA_HELP)
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--max-prompts", type=int, default=400,
                   help="prompts per dataset (random subset, to keep the fit fast; default 400)")
    f.add_argument("--boot", type=int, default=400, help="bootstrap replicates of the ANOVA estimator (default 400)")
    f.add_argument("--steps", type=int, default=1000, help="SVI steps (default 1000)")
    f.add_argument("--nuts", action="store_true",
                   help="also sample the Bayesian model by NUTS (exact posterior, a check of the SVI fit; slower)")
    f.add_argument("--quick", action="store_true", help="small settings (smoke test)")
    f.set_defaults(func=_cmd_families)

    i = sub.add_parser("impact", help="projected monthly cost and quality of each router at your traffic, "
                                      "savings and break-even compute price")
    i.add_argument("--data", default="routerbench", help=DATA_HELP)
    i.add_argument("--queries-per-day", type=float, required=True, help="traffic volume")
    i.add_argument("--days", type=float, default=30.0, help="days per month (default 30)")
    i.add_argument("--mix", help="query mix CATEGORY=SHARE,... (default: the test split's own mix)")
    i.add_argument("--prices", default=argparse.SUPPRESS,  # so `bandit-sim --prices F impact ...` reaches it too
                   help="your prices, USD per 1M tokens, to re-price the routers' outcomes: the prices file every "
                        "command takes (TOML/CSV/JSON of name, input_per_m, output_per_m), or the short forms CSV "
                        "(model,input,output) / JSON {model: [input, output]} (default: the dataset's costs)")
    i.add_argument("--out", required=True, help="output folder")
    i.add_argument("--episodes", type=int, default=64, help="test episodes per router (default 64)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--tokens", choices=("hierarchical", "standin"), default="hierarchical")
    i.add_argument("--latency-ms", type=float, help="routing overhead per query (default: measured)")
    i.add_argument("--compute-usd-per-hour", type=float,
                   help="your compute price for the routing overhead (default: report break-even prices only)")
    i.add_argument("--routers", help="comma-separated subset of: " + ", ".join(ROUTERS)
                                     + " (default: " + ", ".join(DEFAULT_ROUTERS) + ")")
    i.add_argument("--quick", action="store_true", help="small settings (smoke test)")
    i.set_defaults(func=_cmd_impact)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `bandit-sim` (subcommands registered here)."""
    p = argparse.ArgumentParser(
        prog="bandit-sim",
        description="Bayesian LLM routing: a hierarchical token model and a vectorized JAX routing simulator.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  bandit-sim data describe --data routerbench\n  bandit-sim data validate my_table.csv\n"
               "  bandit-sim compare --data routerbench --episodes 1000 --out results/compare\n  bandit-sim run",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="describe or validate routing data")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    d = dsub.add_parser("describe", help="prompts, models, families, quality, tokens and cost per model")
    d.add_argument("--data", default="routerbench", help=DATA_HELP)
    d.add_argument("--seed", type=int, default=0, help="seed (synthetic data only)")
    d.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    d.set_defaults(func=_cmd_data_describe)
    v = dsub.add_parser("validate", help="check a Parquet/CSV table against the schema; exit 1 if invalid")
    v.add_argument("path", help="the table to check")
    v.set_defaults(func=_cmd_data_validate)

    r = sub.add_parser("run", help="the main job on the bundled data: writes every report under results/")
    r.add_argument("--out", default="results", help="output folder (default: results)")
    r.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    r.add_argument("--quick", action="store_true", help="a small, fast version of every stage (smoke test)")
    r.add_argument("--stage", action="append", dest="stages", metavar="NAME",
                   help="run only this stage (repeatable): " + ", ".join(st.name for st in STAGES))
    r.set_defaults(func=_cmd_run)

    _add_tokens_subparser(sub)
    _add_experiment_subparsers(sub)
    _add_analysis_subparsers(sub)
    b = sub.add_parser("bench", help="throughput of the JAX routing kernel vs NumPy and MABWiser "
                                     "(runs `python -m benchmarks.bench_kernel`)")
    b.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    b.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke)")
    b.set_defaults(func=_cmd_bench)
    add_serve_subparser(sub)
    _add_prices_option(p)
    return p


def _enable_compilation_cache() -> None:
    """A persistent JAX compilation cache for the CLI: a rerun of a command skips the XLA compilations.

    `$BANDIT_SIM_JAX_CACHE` (default ~/.cache/bandit-sim/jax) names the folder; set it to "off" to disable.
    """
    where = os.environ.get("BANDIT_SIM_JAX_CACHE", str(Path.home() / ".cache" / "bandit-sim" / "jax"))
    if where.lower() in ("off", "0", "none", ""):
        return
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


PRICES_HELP = ("your own models' prices: a TOML/CSV/JSON file of name, input_per_m, output_per_m (USD per 1M "
               "tokens)[, family] -- the serve config's backends format (docs/serve.md)")


def _add_prices_option(parser: argparse.ArgumentParser) -> None:
    """`--prices FILE` on the top parser and on every (sub)command, wherever the user writes it."""
    if "--prices" not in parser._option_string_actions:  # `impact` has its own --prices (it re-prices outcomes)
        parser.add_argument("--prices", default=argparse.SUPPRESS, help=PRICES_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in set(action.choices.values()):
                _add_prices_option(sp)


def _check_out(out) -> None:
    """--out must be a folder that exists or can be made: not a file, nor under one (checked before any work)."""
    p = Path(out)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise ValueError(f"--out {out}: {q} is a file, not a folder")
            return


def _register_prices(path: str, *, impact: bool) -> None:
    """`--prices FILE` for this process. `impact` also takes the short forms CSV model,input,output and JSON
    {model: [input, output]} (it re-prices outcomes, `impact.read_prices`): a file not in the common format is
    not registered then, and impact reads it itself (naming what is wrong in it)."""
    try:
        use_prices_file(path)
    except PricesFileError:
        if not impact:
            raise


def main(argv=None) -> int:
    """Entry point of the `bandit-sim` console script."""
    args = build_parser().parse_args(argv)
    _enable_compilation_cache()
    try:
        if getattr(args, "out", None) is not None:
            _check_out(args.out)
        if getattr(args, "prices", None):
            _register_prices(args.prices, impact=args.func is _cmd_impact)
        return int(args.func(args) or 0)
    except DataValidationError as exc:
        print(f"invalid data: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, KeyError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be made or written (the message names the path)
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
