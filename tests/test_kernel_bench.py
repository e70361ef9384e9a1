"""Smoke test of the throughput benchmark (quick mode, tiny sizes, writes to tmp_path)."""

import json

import pytest

from benchmarks.bench_kernel import run_bench


@pytest.mark.slow
def test_bench_quick(tmp_path):
    res = run_bench(tmp_path, quick=True, host_devices=1)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["rows"] == res["rows"]
    impls = {r["impl"] for r in data["rows"]}
    assert {"jax_exact_beta", "numpy_loop", "numpy_vectorized"} <= impls
    for r in data["rows"]:
        assert r["decisions_per_s"] > 0 and r["compile_s"] >= 0 and r["peak_rss_mb"] > 0
    assert data["ratios"]["jax_over_numpy_vectorized"] > 0
    p = data["ratios"]["paired"]  # NumPy vectorized is timed alternately with the JAX run at the same E
    assert p["pairs"] >= 1 and p["episodes"] == 64 and len(p["ratio_per_pair"]) == p["pairs"]
    assert data["ratios"]["jax_over_numpy_vectorized"] == pytest.approx(p["jax_decisions_per_s"] / p["numpy_decisions_per_s"])
    assert (tmp_path / "bench.md").read_text().startswith("# Routing-kernel throughput")
