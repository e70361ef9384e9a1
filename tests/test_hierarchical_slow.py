"""Heavier token-model checks (deselected by default; run with -m slow): NUTS vs SVI, low-rank guide, bench smoke."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hierarchical import FitConfig, fit_nuts, fit_svi

pytestmark = pytest.mark.slow


def _small_world(seed=3):
    rng = np.random.default_rng(seed)
    k, g = 6, 2
    fam = np.repeat(np.arange(g), k // g).astype(np.int32)
    theta = np.array([5.5, 0.4]) + np.array([0.4, 0.1]) * rng.standard_normal((k, 2))
    m = np.repeat(np.arange(k), 150)
    x = rng.standard_normal((m.size, 1)).astype(np.float32)
    y = theta[m, 0] + theta[m, 1] * x[:, 0] + 0.4 * rng.standard_t(6, m.size)
    return x, m, fam, np.expm1(y).clip(0)


def test_nuts_and_lowrank_svi_agree_on_small_data():
    x, m, fam, t = _small_world()
    nuts = fit_nuts(x, m, fam, t, num_warmup=300, num_samples=300)
    svi = fit_svi(x, m, fam, t, config=FitConfig(guide="lowrank", num_steps=3000, min_steps=3000), progress=False)
    diff = np.abs(nuts.draws["theta"].mean(0) - svi.draws["theta"].mean(0))
    assert diff.max() < 0.05
    np.testing.assert_allclose(np.exp(svi.draws["log_sigma"]).mean(0), np.exp(nuts.draws["log_sigma"]).mean(0),
                               rtol=0.08)
    assert nuts.meta["divergences"] < 30


def test_bench_smoke(tmp_path):
    import pandas as pd

    from benchmarks.bench_tokens import run_bench

    x, m, fam, t = _small_world()
    table = pd.DataFrame({"prompt_id": [f"p{i % 150}" for i in range(len(m))],
                          "prompt": [f"How do I write item {i % 150}?" for i in range(len(m))],
                          "model": [f"m{j}" for j in m], "family": [f"f{fam[j]}" for j in m],
                          "output_tokens": t.astype(int)})
    rec = run_bench(tmp_path / "b.json", "tiny", table=table, svi_steps=250, batch_size=None, nuts_models=3,
                    nuts_prompts=40, nuts_warmup=50, nuts_samples=50)
    on_disk = json.loads((tmp_path / "b.json").read_text())
    assert on_disk["full"]["svi"]["steps"] == 250 and rec["subset"]["nuts"]["seconds"] > 0
    assert on_disk["env"]["dtype"] == "float32"


def test_censoring_corrects_capped_lengths():
    # lengths capped at a max: the censored likelihood recovers the intercepts, treating caps as exact does not
    x, m, fam, t = _small_world(seed=4)
    cap = float(np.quantile(t, 0.7))
    tc = np.minimum(t, cap)
    cfg = FitConfig(num_steps=2000, min_steps=2000)
    cens = fit_svi(x, m, fam, tc, censor_at=np.full(t.shape, cap), config=cfg, progress=False)
    naive = fit_svi(x, m, fam, tc, config=cfg, progress=False)
    full = fit_svi(x, m, fam, t, config=cfg, progress=False)
    truth = full.draws["theta"].mean(0)[:, 0]
    err_cens = np.abs(cens.draws["theta"].mean(0)[:, 0] - truth).mean()
    err_naive = np.abs(naive.draws["theta"].mean(0)[:, 0] - truth).mean()
    assert err_cens < 0.5 * err_naive
    assert cens.meta["censoring"] and not naive.meta["censoring"]
