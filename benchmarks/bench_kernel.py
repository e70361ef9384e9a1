"""Thin wrapper: `python benchmarks/bench_kernel.py --out DIR [--quick]` = `bandit-sim bench`."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bandit_sim.bench import run_bench  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="results/bench")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    run_bench(Path(a.out), quick=a.quick)
