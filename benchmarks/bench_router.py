"""Latency of the live router: one `route`, one `observe`, and a 1,000-query `route_batch`, after warm-up.

    python benchmarks/bench_router.py --out results/bench/router.json

Compile time is measured separately (the first call of each shape); the timed calls reuse the compiled steps
(the trace counters are checked to stay put). Queries are RouterBench test prompts; token forecasts are the
stand-in (per-model statistics) unless --hierarchical (the fitted posterior; adds one `hierarchical.predict`
call per route).

Two routers are timed in the same run: Beta Thompson (the reference) and linear Thompson on the query text, whose
`route` featurises the text (TF-IDF -> SVD, D = 33) before its draw (key ``linear_thompson``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from bandit_sim.data.loaders import load_data
from bandit_sim.router.router import TRACE_COUNT, Query, Router
from bandit_sim.router.tokens import PosteriorTokens
from bandit_sim.sim.token_model import fit_token_model
from hierarchical.storage import atomic_write


def _stats(xs) -> dict:
    a = np.asarray(xs) * 1e3
    return dict(median_ms=float(np.median(a)), p90_ms=float(np.percentile(a, 90)), min_ms=float(a.min()),
                repeats=len(a))


def _time_router(router: Router, queries: list, args) -> dict:
    """Compile times, then timed single routes/observes and batches (no recompilation allowed while timing)."""
    t0 = time.perf_counter()
    d = router.route(queries[0])
    compile_route = time.perf_counter() - t0
    t0 = time.perf_counter()
    router.observe(d, 1.0, 10)
    compile_observe = time.perf_counter() - t0
    batch = [queries[i % len(queries)] for i in range(args.batch)]
    t0 = time.perf_counter()
    router.route_batch(batch)
    compile_batch = time.perf_counter() - t0
    router.pending.clear()
    traces = dict(TRACE_COUNT)

    route_t, observe_t = [], []
    for i in range(args.repeats):
        q = queries[(i + 1) % len(queries)]
        t0 = time.perf_counter()
        d = router.route(q)
        route_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        router.observe(d, float(i % 2), 10)
        observe_t.append(time.perf_counter() - t0)
    batch_t = []
    for _ in range(args.batch_repeats):
        t0 = time.perf_counter()
        router.route_batch(batch)
        batch_t.append(time.perf_counter() - t0)
        router.pending.clear()
    assert TRACE_COUNT == traces, f"recompiled while timing: {traces} -> {TRACE_COUNT}"
    return dict(compile_s=dict(route=compile_route, observe=compile_observe, route_batch=compile_batch),
                route=_stats(route_t), observe=_stats(observe_t),
                route_batch=dict(_stats(batch_t), batch=args.batch,
                                 per_query_us=float(np.median(batch_t)) / args.batch * 1e6))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/bench/router.json")
    p.add_argument("--repeats", type=int, default=200, help="timed single routes")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--batch-repeats", type=int, default=10)
    p.add_argument("--hierarchical", action="store_true", help="forecast tokens with the fitted posterior")
    args = p.parse_args(argv)

    import jax

    rd = load_data("routerbench")
    test = rd.table[rd.table["split"] == "test"].drop_duplicates("prompt_id")
    queries = [Query(t, input_tokens=int(n)) for t, n in zip(test["prompt"], test["input_tokens"])]
    tokens = None
    if args.hierarchical:
        tokens = PosteriorTokens.from_fit(fit_token_model(rd, quick=True))
    router = Router.from_data(rd, tokens=tokens, seed=0)
    beta = _time_router(router, queries, args)
    # the text router, timed in the same run: route(text) featurises the query (TF-IDF -> SVD, D = 33) and draws
    # x'w_k per model; flat weight priors (the SVI fit changes the numbers in the posterior, not the work)
    lin_router = Router.from_data(rd, tokens=tokens, seed=0, policy="linear_thompson", linear_fit="flat", warm=True)
    lin = _time_router(lin_router, queries, args)

    out = dict(
        command="python benchmarks/bench_router.py" + (" --hierarchical" if args.hierarchical else ""),
        tokens="hierarchical posterior (quick SVI fit)" if args.hierarchical else "stand-in (per-model statistics)",
        models=len(router.models), capacity=router.capacity, policy=router.policy,
        **beta,
        linear_thompson=dict(policy=lin_router.policy, features=int(lin_router.featurizer.dim), warm=True, **lin),
        device=str(jax.devices()[0]), jax=jax.__version__, python=platform.python_version(),
        machine=platform.machine(), dtype="float32",
    )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
