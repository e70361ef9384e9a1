"""Throughput benchmark: exact-Beta Thompson routing in JAX vs NumPy (loop, vectorized) and MABWiser; linear Thompson
sampling (K = 11, D = 33 text features, E = 1024) in JAX vs its NumPy vectorized twin (benchmarks/numpy_linear_thompson.py).

`bandit-sim bench --out DIR [--quick]` (or `python -m benchmarks.bench_kernel`) writes DIR/bench.json and DIR/bench.md. Compile time is measured
separately (``lower(...).compile()``) and excluded from decisions/s; run time is the best of `repeats`
calls, each ended with ``block_until_ready``. The process re-executes itself with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (N = CPU cores, at most 2 by default) when it
has a single CPU device, so JAX rows on 1 and on N devices are measured in the same process.
peak_rss_mb is the process's peak resident memory after the row (monotone over the run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from bandit_sim.data.loaders import load_data
from bandit_sim.data.text_features import featurizer_for_table, transform_table
from bandit_sim.sim.episode import hyper_grid
from bandit_sim.sim.linear import flat_linear_prior, with_linear_prior
from bandit_sim.sim.policies import default_hyper
from bandit_sim.sim.reference import run_reference
from bandit_sim.sim.simulate import lower_simulate
from bandit_sim.sim.world import world_from_table
from benchmarks.numpy_linear_thompson import linear_thompson_vectorized
from benchmarks.numpy_thompson import thompson_vectorized
from hierarchical.storage import atomic_write

__all__ = ["run_bench", "main"]

T_FULL = 2000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _world(quick: bool):
    table = load_data("routerbench").table
    w, info = world_from_table(table, split="test")
    # the linear router's query features: the text featurizer fit on the training prompts (d = 32, D = 33)
    feat, _ = featurizer_for_table(table[table["split"] == "train"], d=32, seed=0)
    return w._replace(x=transform_table(feat, table, list(info.prompt_ids))), info


def _jax_row(w, hyper, episodes, steps, devices, options, repeats, label, grid=None, impl="auto", keep=None,
             policy="thompson"):
    t0 = time.perf_counter()
    lowered, args = lower_simulate(w, jax.random.key(0), hyper, policy=policy, episodes=episodes,
                                   steps=steps, chunk=25, options=options, devices=devices, impl=impl)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up (first-touch of the buffers, thread-pool start), not timed
    best = np.inf
    for r in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - t)
    if keep is not None:  # the compiled run, for the paired timing against NumPy
        keep[(episodes, devices)] = (compiled, args)
    g = 1 if grid is None else grid[0] * grid[1]
    return dict(impl=label, episodes=episodes, grid=grid, steps=steps, devices=devices,
                decisions=episodes * g * steps, seconds=best, decisions_per_s=episodes * g * steps / best,
                compile_s=compile_s, peak_rss_mb=_rss_mb())


def _bench(out: Path, quick: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    w, info = _world(quick)
    k = w.quality.shape[1]
    h = default_hyper(k)
    steps = 200 if quick else T_FULL
    e_list = [1, 64] if quick else [1, 1024, 8192]
    n_dev = len(jax.local_devices())
    rows = []
    kept = {}
    exact = {"sampler": "exact", "n_candidates": 3}
    for e in e_list:
        for d in sorted({1, n_dev}):
            if e % d or (e == 1 and d > 1):
                continue
            rows.append(_jax_row(w, h, e, steps, d, exact, 2 if e >= 8192 else 5, "jax_exact_beta", keep=kept))
            print(json.dumps(rows[-1]), flush=True)
    # the same kernel vmapped over episodes (the generic path every other policy takes), for comparison
    rows.append(_jax_row(w, h, e_list[1], steps, n_dev, exact, 2, "jax_exact_beta_vmapped", impl="generic"))
    print(json.dumps(rows[-1]), flush=True)
    gsz = (2, 2) if quick else (8, 8)
    lam = np.linspace(0.0, 1.0, gsz[0])
    gam = np.linspace(0.0, 1.0, gsz[1])
    hg = hyper_grid(h, lam=lam, gam=gam)
    e_grid = 8 if quick else 128
    rows.append(_jax_row(w, hg, e_grid, steps, n_dev, exact, 1, "jax_exact_beta", grid=list(gsz)))
    print(json.dumps(rows[-1]), flush=True)
    rows.append(_jax_row(w, h, e_list[-1], steps, n_dev, {"sampler": "gaussian"}, 1,
                         "jax_gaussian_approx (not exact)"))
    print(json.dumps(rows[-1]), flush=True)

    # NumPy per-step loop (fewer episodes; decisions/s extrapolates per decision)
    rng = np.random.default_rng(0)
    n_loop = 1 if quick else 3
    t = time.perf_counter()
    for _ in range(n_loop):
        order = rng.permutation(np.tile(np.arange(w.quality.shape[0]), -(-steps // w.quality.shape[0])))[:steps]
        run_reference("thompson", w, h, order, rng=rng)
    dt = time.perf_counter() - t
    rows.append(dict(impl="numpy_loop", episodes=n_loop, grid=None, steps=steps, devices=1,
                     decisions=n_loop * steps, seconds=dt, decisions_per_s=n_loop * steps / dt, compile_s=0.0,
                     peak_rss_mb=_rss_mb(), note="per-step Python loop, Generator.beta; extrapolated per decision"))
    print(json.dumps(rows[-1]), flush=True)

    # NumPy vectorized, timed in pairs with the JAX run at the same E (its faster device count): a
    # JAX run, then a NumPy run, n_pairs times, so both see the same machine state (this VM's speed
    # drifts by 10-30% over minutes); the ratio is best JAX over best NumPy of these pairs.
    e_vec = 64 if quick else 1024
    n_pairs = 1 if quick else 3
    d_vec = max((r for r in rows if r["impl"] == "jax_exact_beta" and r["episodes"] == e_vec),
                key=lambda r: r["decisions_per_s"])["devices"]
    compiled, args = kept[(e_vec, d_vec)]
    pair_s = []
    for r in range(n_pairs):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        t_j = time.perf_counter() - t
        t = time.perf_counter()
        thompson_vectorized(w, h, e_vec, steps, seed=r)
        pair_s.append((t_j, time.perf_counter() - t))
    tj, tn = min(p[0] for p in pair_s), min(p[1] for p in pair_s)
    rows.append(dict(impl="numpy_vectorized", episodes=e_vec, grid=None, steps=steps, devices=1,
                     decisions=e_vec * steps, seconds=tn, decisions_per_s=e_vec * steps / tn, compile_s=0.0,
                     peak_rss_mb=_rss_mb(), note=f"vectorized over episodes, exact Generator.beta; best of {n_pairs} "
                                                 "runs, each after a JAX run (paired)"))
    paired = dict(pairs=n_pairs, episodes=e_vec, jax_devices=d_vec, jax_decisions_per_s=e_vec * steps / tj,
                  numpy_decisions_per_s=e_vec * steps / tn, ratio_per_pair=[p[1] / p[0] for p in pair_s])
    print(json.dumps(rows[-1]), flush=True)

    lin = _linear_rows(w, steps, e_vec, n_dev, n_pairs, rows)

    try:
        from mabwiser.mab import MAB, LearningPolicy
    except ImportError:
        mab = None
    else:
        mab = MAB(arms=list(range(k)), learning_policy=LearningPolicy.ThompsonSampling(), seed=0)
    if mab is not None:
        n_mab = 100 if quick else 500
        qi = rng.integers(0, w.quality.shape[0], n_mab)
        mab.fit([0, 1], [0, 1])
        t = time.perf_counter()
        for i in range(n_mab):
            a = mab.predict()
            mab.partial_fit([a], [float(w.quality[qi[i], a] >= 0.5)])
        dt = time.perf_counter() - t
        rows.append(dict(impl="mabwiser_thompson", episodes=1, grid=None, steps=n_mab, devices=1,
                         decisions=n_mab, seconds=dt, decisions_per_s=n_mab / dt, compile_s=0.0,
                         peak_rss_mb=_rss_mb(), note="plain Bernoulli TS (no utility), predict/partial_fit per step"))
        print(json.dumps(rows[-1]), flush=True)

    def best(impl, episodes=None, grid=False):
        c = [r["decisions_per_s"] for r in rows if r["impl"] == impl and (episodes is None or r["episodes"] == episodes)
             and ((r["grid"] is not None) == grid)]
        return max(c) if c else float("nan")

    jax_big = best("jax_exact_beta", e_list[-1])
    res = dict(
        device=str(jax.devices()[0].device_kind) + f" x{n_dev} ({platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores)",
        jax_version=jax.__version__, numpy_version=np.__version__, dtype="float32",
        shapes=dict(N=int(w.quality.shape[0]), K=k, T=steps, world="routerbench test split"),
        threefry_partitionable=False, quick=quick, rows=rows, linear_thompson=lin,
        ratios=dict(jax_over_numpy_vectorized=paired["jax_decisions_per_s"] / paired["numpy_decisions_per_s"],
                    jax_over_numpy_loop=jax_big / best("numpy_loop"),
                    paired=paired,
                    basis=f"JAX exact-Beta at E={e_vec} ({d_vec} devices) vs NumPy vectorized at E={e_vec}, timed "
                          f"alternately ({n_pairs} pairs, best of each); JAX at E={e_list[-1]} vs the NumPy per-step "
                          "loop"),
    )
    atomic_write(out / "bench.json", json.dumps(res, indent=2))
    lines = [f"# Routing-kernel throughput ({res['device']}, jax {res['jax_version']}, float32, "
             f"K={k}, T={steps})", "", "Made by `bandit-sim bench --out DIR" + (" --quick" if quick else "") + "`.", "",
             "| impl | episodes | grid | devices | decisions/s | compile s | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        g = "x".join(map(str, r["grid"])) if r["grid"] else "-"
        lines.append(f"| {r['impl']} | {r['episodes']} | {g} | {r['devices']} | {r['decisions_per_s']:.3g} | "
                     f"{r['compile_s']:.1f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "jax_exact_beta is `simulate`'s default path for Thompson (hand-batched over episodes, "
              "bandit_sim/sim/batched.py); jax_exact_beta_vmapped is the same episodes through the one-episode step "
              "vmapped over episodes (`impl=\"generic\"`, the path of every other policy). Decisions/s exclude "
              "compilation (its own column); JAX rows are the best of 1-5 runs after one untimed warm-up run. NumPy "
              "vectorized is timed alternately with the JAX row at the same E (best of "
              f"{paired['pairs']} each); in those pairs JAX ran at {paired['jax_decisions_per_s']:.3g} decisions/s, and the "
              f"ratio of each pair was {', '.join(f'{x:.2f}' for x in paired['ratio_per_pair'])}.",
              "", f"jax / numpy vectorized: {res['ratios']['jax_over_numpy_vectorized']:.2f}; "
              f"jax / numpy loop: {res['ratios']['jax_over_numpy_loop']:.1f} ({res['ratios']['basis']}).",
              "", f"Linear Thompson sampling (K={k}, D={lin['D']}, E={lin['episodes']}, T={steps}): "
              f"jax_linear_thompson (`simulate(policy=\"linear_thompson\")`, bandit_sim/sim/batched_linear.py) ran at "
              f"{lin['jax_decisions_per_s']:.3g} decisions/s ({lin['jax_devices']} devices, compile "
              f"{lin['compile_s']:.1f} s), numpy_linear_thompson_vectorized (benchmarks/numpy_linear_thompson.py) at "
              f"{lin['numpy_decisions_per_s']:.3g}, timed alternately ({lin['pairs']} pairs, best of each): ratio "
              f"{lin['ratio']:.2f} (per pair {', '.join(f'{x:.2f}' for x in lin['ratio_per_pair'])})."]
    atomic_write(out / "bench.md", "\n".join(lines) + "\n")
    return res


def _linear_rows(w, steps: int, e_vec: int, n_dev: int, n_pairs: int, rows: list) -> dict:
    """Linear Thompson rows: JAX (batched path, 1 and n_dev devices) and the NumPy vectorized twin, paired."""
    k, d = w.quality.shape[1], w.x.shape[1]
    h = with_linear_prior(default_hyper(k, d=d), flat_linear_prior(k, d, var=1.0, noise=0.2))
    kept = {}
    for dev in sorted({1, n_dev}):
        if e_vec % dev:
            continue
        rows.append(_jax_row(w, h, e_vec, steps, dev, {}, 2, "jax_linear_thompson", keep=kept, policy="linear_thompson"))
        rows[-1]["D"] = d
        print(json.dumps(rows[-1]), flush=True)
    best_row = max((r for r in rows if r["impl"] == "jax_linear_thompson"), key=lambda r: r["decisions_per_s"])
    compiled, args = kept[(e_vec, best_row["devices"])]
    pair_s = []
    for r in range(n_pairs):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        t_j = time.perf_counter() - t
        t = time.perf_counter()
        linear_thompson_vectorized(w, h, e_vec, steps, seed=r)
        pair_s.append((t_j, time.perf_counter() - t))
    tj, tn = min(p[0] for p in pair_s), min(p[1] for p in pair_s)
    rows.append(dict(impl="numpy_linear_thompson_vectorized", episodes=e_vec, grid=None, steps=steps, devices=1,
                     decisions=e_vec * steps, seconds=tn, decisions_per_s=e_vec * steps / tn, compile_s=0.0,
                     peak_rss_mb=_rss_mb(), D=d, note=f"vectorized over episodes (einsum quadratic forms, in-place "
                                                      f"rank-one update); best of {n_pairs} runs, each after a JAX run"))
    print(json.dumps(rows[-1]), flush=True)
    return dict(K=k, D=d, episodes=e_vec, steps=steps, pairs=n_pairs, jax_devices=best_row["devices"],
                compile_s=best_row["compile_s"], jax_decisions_per_s=e_vec * steps / tj,
                numpy_decisions_per_s=e_vec * steps / tn, ratio=tn / tj, ratio_per_pair=[p[1] / p[0] for p in pair_s])


def run_bench(out: Path, quick: bool = False, host_devices: int | None = None) -> dict:
    """Run the benchmark (re-executing with N host devices when needed) and write bench.json/bench.md.

    Args:
      out: output folder.
      quick: tiny sizes for CI smoke.
      host_devices: CPU devices to expose (default min(2, cores)).
    Returns:
      the bench.json content as a dict.
    """
    out = Path(out)
    want = host_devices or min(2, os.cpu_count() or 1)
    flag = "--xla_force_host_platform_device_count"
    if want > 1 and flag not in os.environ.get("XLA_FLAGS", "") and os.environ.get("_BANDIT_BENCH_CHILD") != "1":
        env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + f" {flag}={want}").strip(),
               "_BANDIT_BENCH_CHILD": "1"}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "benchmarks.bench_kernel", "--out", str(out)] + (["--quick"] if quick else [])
        subprocess.run(cmd, env=env, check=True)
        return json.loads((out / "bench.json").read_text())
    return _bench(out, quick)


def main(argv=None) -> int:
    """`python -m benchmarks.bench_kernel --out DIR [--quick]` (what `bandit-sim bench` runs)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_kernel",
                                description="throughput of the JAX routing kernel vs NumPy and MABWiser")
    p.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke)")
    a = p.parse_args(argv)
    if os.environ.get("_BANDIT_BENCH_CHILD") == "1":
        _bench(Path(a.out), a.quick)
        return 0
    res = run_bench(Path(a.out), quick=a.quick)
    r = res["ratios"]
    print(f"wrote {Path(a.out) / 'bench.json'}: jax/numpy-vectorized {r['jax_over_numpy_vectorized']:.2f}, "
          f"jax/numpy-loop {r['jax_over_numpy_loop']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
