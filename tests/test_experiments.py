"""Experiment commands: helpers, the sweep's checkpoint/resume, and smoke runs of compare / coldstart / run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bandit_sim.sim.priors import family_prior_from_train
from bandit_sim.experiments.protocol import prepare, select_models, zipped_hyper
from bandit_sim.data.loaders import RoutingData, load_data
from bandit_sim.sim.policies import default_hyper
from bandit_sim.experiments.sweep import pareto_front, parse_range, run_sweep


def _small_synthetic(n_prompts: int = 240, seed: int = 0) -> RoutingData:
    rd = load_data("synthetic", seed=seed, n_prompts=n_prompts, n_families=3, models_per_family=2, n_categories=3)
    return rd


def test_parse_range():
    np.testing.assert_allclose(parse_range("0:1:5", "lam"), [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(parse_range("0.1,0.3", "gam"), [0.1, 0.3], rtol=1e-6)
    for bad in ("0:1", "a:b:c", "0:1:0", "-1,2", "nan,1"):
        with pytest.raises(ValueError, match="--lam"):
            parse_range(bad, "lam")


def test_pareto_front_known_points():
    cost = np.array([1.0, 2.0, 3.0, 2.0, 0.5])
    qual = np.array([0.5, 0.7, 0.6, 0.9, 0.5])
    # 0.5@0.5 dominates 0.5@1.0; 0.9@2.0 dominates 0.7@2.0 and 0.6@3.0
    assert pareto_front(cost, qual).tolist() == [4, 3]


def test_zipped_hyper_pairs_cells():
    base = default_hyper(3)
    h = zipped_hyper(base, lam=[0.1, 0.2], gam=[0.5, 0.6])
    assert h.lam.shape == (2,) and h.prior_alpha.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(h.gam), [0.5, 0.6])
    with pytest.raises(ValueError, match="one length"):
        zipped_hyper(base, lam=[0.1], gam=[0.5, 0.6])


def test_family_prior_from_train_known_values():
    t = pd.DataFrame({
        "prompt_id": ["a", "a", "a", "b", "b", "b"],
        "model": ["m1", "m2", "m3"] * 2,
        "family": ["F", "F", "G"] * 2,
        "quality": [1.0, 0.0, 1.0, 1.0, 1.0, 0.0],
        "split": ["train"] * 6,
    })
    rd = RoutingData("t", t, "user", "full-information")
    a, b = family_prior_from_train(rd, ("m1", "m2", "m3"), strength=20.0)
    # m1's relative m2 scored 0 and 1: m = 0.5 on 2 rows -> w = 2
    np.testing.assert_allclose([a[0], b[0]], [1 + 2 * 0.5, 1 + 2 * 0.5])
    # m2's relative m1 scored 1, 1
    np.testing.assert_allclose([a[1], b[1]], [3.0, 1.0])
    # m3 has no relative: flat
    np.testing.assert_allclose([a[2], b[2]], [1.0, 1.0])


def test_select_models_and_prepare_refuse_token_only_data():
    rd = _small_synthetic()
    setup = prepare(rd, tokens="standin")
    w, info = setup.worlds["test"], setup.infos["test"]
    w2, i2 = select_models(w, info, [2, 0])
    assert w2.quality.shape == (w.quality.shape[0], 2) and i2.models == (info.models[2], info.models[0])
    np.testing.assert_array_equal(w2.quality[:, 0], w.quality[:, 2])
    with pytest.raises(ValueError, match="no quality signal"):
        prepare("arenahard", tokens="standin")


def test_sweep_resumes_from_checkpoint_with_identical_results(tmp_path):
    rd = _small_synthetic()
    lams, gams = parse_range("0:1:3", "lam"), parse_range("0,0.5", "gam")
    kw = dict(episodes=4, seed=3, tokens="standin", chunk_cells=2, progress=False)
    full = run_sweep(rd, tmp_path / "full", lams, gams, **kw)
    part = run_sweep(rd, tmp_path / "resumed", lams, gams, stop_after_chunks=1, **kw)
    assert part["interrupted"] and part["chunks_done"] == 1
    resumed = run_sweep(rd, tmp_path / "resumed", lams, gams, **kw)
    assert resumed["resumed_chunks"] == 1
    for key in ("quality_retention", "cost_reduction", "regret"):
        np.testing.assert_array_equal(resumed[key], full[key])
    # a different configuration is refused, and the finished checkpoint is kept
    with pytest.raises(ValueError, match="different sweep"):
        run_sweep(rd, tmp_path / "resumed", lams, gams, **{**kw, "episodes": 5})
    assert (tmp_path / "resumed" / "checkpoint.npz").exists()
    assert (tmp_path / "full" / "heatmaps.png").exists() and (tmp_path / "full" / "pareto.png").exists()


def test_sweep_checkpoint_from_other_code_is_moved_aside(tmp_path, monkeypatch):
    import bandit_sim.experiments.sweep as sweep_mod

    rd = _small_synthetic()
    lams, gams = parse_range("0:1:3", "lam"), parse_range("0,0.5", "gam")
    kw = dict(episodes=4, seed=3, tokens="standin", chunk_cells=2, progress=False)
    monkeypatch.setattr(sweep_mod, "_code_fingerprint", lambda: "oldcode")
    assert run_sweep(rd, tmp_path, lams, gams, stop_after_chunks=1, **kw)["interrupted"]
    monkeypatch.setattr(sweep_mod, "_code_fingerprint", lambda: "newcode")
    with pytest.warns(UserWarning, match="other code"):
        fresh = run_sweep(rd, tmp_path, lams, gams, **kw)
    assert fresh["resumed_chunks"] == 0 and (tmp_path / "checkpoint-oldcode.npz").exists()
    # a second stale checkpoint of the same code does not overwrite the first one moved aside
    monkeypatch.setattr(sweep_mod, "_code_fingerprint", lambda: "oldcode")
    with pytest.warns(UserWarning, match="3 finished chunk"):
        assert run_sweep(rd, tmp_path, lams, gams, **kw)["resumed_chunks"] == 0
    assert (tmp_path / "checkpoint-newcode.npz").exists()
    monkeypatch.setattr(sweep_mod, "_code_fingerprint", lambda: "newcode")
    with pytest.warns(UserWarning, match="other code"):
        run_sweep(rd, tmp_path, lams, gams, **kw)
    assert (tmp_path / "checkpoint-oldcode.npz").exists() and (tmp_path / "checkpoint-oldcode-1.npz").exists()


@pytest.mark.slow
def test_compare_quick_end_to_end_and_rerun_identical(tmp_path):
    from bandit_sim.experiments.compare import run_compare

    rd = _small_synthetic()
    r1 = run_compare(rd, tmp_path / "a", episodes=8, tokens="standin", quick=True, argv=["compare"], progress=False)
    r2 = run_compare(rd, tmp_path / "b", episodes=8, tokens="standin", quick=True, argv=["compare"], progress=False)
    m1 = json.loads((tmp_path / "a" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m1 == m2
    keys = {"thompson", "thompson_family_prior", "thompson_contextual", "random", "always_premium", "cheapest",
            "threshold", "simple_utility", "epsilon_greedy", "ucb1", "mf_router", "best_single", "oracle"}
    assert keys <= set(m1["policies"])
    for p in m1["policies"].values():
        for f in ("cost_reduction", "quality_retention", "quality_vs_oracle", "cost_usd", "convergence_queries"):
            lo, hi = p[f]["ci95"]
            assert lo <= p[f]["mean"] + 1e-9 and p[f]["mean"] <= hi + 1e-9
    assert m1["policies"]["always_premium"]["quality_retention"]["mean"] == pytest.approx(1.0)
    assert "zero_router" in m1["aiq"] and "oracle" in m1["aiq"]
    assert set(m1["significance"]["thompson"]) >= {"random", "always_premium"}
    assert (tmp_path / "a" / "report.md").read_text().count("png") >= 2
    assert r1["apgr"]["random"] == pytest.approx(0.5)
    assert r2["data"] == r1["data"]
    tr = m1["thompson_router"]
    assert tr["selected"] in m1["significance"] and tr["lam"] == m1["lambda_selection"][tr["selected"]]["lam"]
    assert tr["quality_retention"] == m1["policies"][tr["selected"]]["quality_retention"]


def test_thompson_router_is_chosen_on_validation_only():
    from bandit_sim.experiments.compare import select_thompson

    chosen = {"thompson": {"retention": 0.97, "cost_reduction": 0.2},
              "thompson_warm": {"retention": 0.951, "cost_reduction": 0.5},
              "thompson_contextual": {"retention": 0.94, "cost_reduction": 0.9}}
    assert select_thompson(chosen, 0.95) == "thompson_warm"  # the best reduction among those reaching the target
    assert select_thompson(chosen, 0.99) == "thompson"  # none reaches it: the highest retention


@pytest.mark.slow
def test_coldstart_quick(tmp_path):
    from bandit_sim.experiments.coldstart import run_coldstart

    rd = _small_synthetic(n_prompts=400)
    r = run_coldstart(rd, tmp_path, episodes=8, arrival=20, tokens="standin", quick=True, argv=["coldstart"],
                      progress=False)
    for k in ("family_prior", "flat_prior"):
        assert r[k]["convergence_queries_median"] >= 0
    assert 0.0 <= r["p_value"] <= 1.0
    assert (tmp_path / "convergence.png").exists()
