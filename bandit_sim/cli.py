"""The `bandit-sim` command line.

    bandit-sim data describe [--data NAME|PATH] [--json]
    bandit-sim data validate PATH
    bandit-sim tokens | compare | coldstart | sweep | bench ...
    bandit-sim run            # the main job on the bundled data: regenerates results/

Run `bandit-sim COMMAND --help` for each command's options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

DATA_HELP = ("dataset: routerbench | arenabench | arenahard (bundled), synthetic, arena55k, "
             "or a path to a Parquet/CSV table in the schema (see README)")


def _cmd_data_describe(args) -> int:
    from .describe import describe, format_description
    from .loaders import load_data

    rd = load_data(args.data, seed=args.seed)
    d = describe(rd)
    print(json.dumps(d, indent=2) if args.json else format_description(d))
    return 0


def _cmd_data_validate(args) -> int:
    from .loaders import load_data

    path = Path(args.path)
    if not path.exists():
        print(f"error: no such file: {path}", file=sys.stderr)
        return 2
    rd = load_data(path)
    t = rd.table
    print(f"{path}: valid routing table: {len(t)} rows, {t['prompt_id'].nunique()} prompts, "
          f"{t['model'].nunique()} models")
    for n in rd.notes:
        print(f"- {n}")
    return 0


def _cmd_run(args) -> int:
    from .pipeline import run_all

    return run_all(Path(args.out), seed=args.seed, quick=args.quick)


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
    r.set_defaults(func=_cmd_run)

    # Commands owned by other modules register themselves here (imports are light: heavy work is imported lazily).
    from .bench import add_bench_subparser
    from .experiments import add_experiment_subparsers
    from .token_eval import add_tokens_subparser

    add_tokens_subparser(sub)
    add_experiment_subparsers(sub)
    add_bench_subparser(sub)
    return p


def main(argv=None) -> int:
    """Entry point of the `bandit-sim` console script."""
    from .schema import DataValidationError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DataValidationError as exc:
        print(f"invalid data: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, KeyError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
