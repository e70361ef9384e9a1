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


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One small end-to-end comparison (3 folds, both tracks), run twice with the same seed."""
    from bandit_sim.experiments.compare import run_compare

    rd = _small_synthetic(n_prompts=150)
    base = tmp_path_factory.mktemp("compare")
    kw = dict(folds=3, episodes=3, bootstrap=40, tokens="standin", quick=True, argv=["compare"], progress=False,
              learning_curve=(0.5, 1.0))
    r1 = run_compare(rd, base / "a", **kw)
    run_compare(rd, base / "b", **kw)
    return base, r1


def test_compare_same_seed_identical_metrics(compared):
    base, _ = compared
    a = json.loads((base / "a" / "metrics.json").read_text())
    b = json.loads((base / "b" / "metrics.json").read_text())
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_compare_layout_and_definitions(compared):
    base, r = compared
    m = json.loads((base / "a" / "metrics.json").read_text())
    assert m["folds"] == 3
    cold, warm = m["tracks"]["cold"]["routers"], m["tracks"]["warm"]["routers"]
    assert {"thompson", "epsilon_greedy", "ucb1", "always_premium", "cheapest", "random", "oracle",
            "zero_router"} <= set(cold)
    assert {"thompson", "epsilon_greedy", "ucb1", "mf_router", "knn_router", "always_premium", "cheapest", "random",
            "oracle", "zero_router"} <= set(warm)
    assert cold["thompson_label"]["label_aware"] and warm["thompson_label"]["label_aware"]
    assert not warm["thompson"]["label_aware"] and not m["headline"]["router"].endswith("_label")
    for track in (cold, warm):
        for name, e in track.items():
            for key in ("quality_retention", "cost_reduction", "aiq"):
                if key not in e:
                    assert name == "zero_router" and key != "aiq"
                    continue
                lo, hi = e[key]["ci95"]
                assert lo <= e[key]["mean"] + 1e-9 <= hi + 2e-9, (name, key, e[key])
        # always-premium retention is 1 by definition; a deterministic router's interval has non-zero width
        assert track["always_premium"]["quality_retention"]["mean"] == pytest.approx(1.0)
        lo, hi = track["cheapest"]["quality_retention"]["ci95"]
        assert hi - lo > 0
        # the oracle's AIQ is at or above every router's on every fold
        orc = track["oracle"]["aiq_per_fold"]
        for name, e in track.items():
            for f, a in enumerate(e["aiq_per_fold"]):
                assert orc[f] >= a - 1e-9, (name, f, a, orc[f])
    # p-values at full precision, one per comparison, Holm-adjusted (>= raw)
    for t in ("cold", "warm"):
        for name, c in m["comparisons"][t].items():
            assert m["p_values"][t][name] == c["p_holm"] >= c["p_value"] - 1e-15
    h = m["headline"]
    assert h["track"] == "warm" and set(h["validation"]) >= {"retention", "cost_reduction"}
    assert set(h["test"]) >= {"quality_retention", "cost_reduction"}
    for name in ("thompson", "mf_router", "knn_router"):
        assert warm[name]["apgr"] is None or 0.0 <= warm[name]["apgr"] <= 1.0 + 1e-9
    report = (base / "a" / "report.md").read_text()
    assert "wins against" in report and "loses to" in report and "cost_quality.png" in report
    assert (base / "a" / "aiq.png").exists()


def test_compare_learning_curve(compared):
    """`compare --learning-curve`: the full share reproduces the warm track's AIQ exactly; the half share refits
    every warm router on half the training prompts; intervals hold their means; the report shows it."""
    base, _ = compared
    m = json.loads((base / "a" / "metrics.json").read_text())
    lc, warm = m["learning_curve"], m["tracks"]["warm"]["routers"]
    assert lc["fractions"] == [0.5, 1.0]
    full, half = lc["train_prompts"]["1"], lc["train_prompts"]["0.5"]
    assert [round(0.5 * n) for n in full] == half
    assert {"linear_thompson", "linucb", "mf_router", "knn_router", "best_fixed", "thompson", "zero_router"} <= set(
        lc["routers"])
    for name, e in lc["routers"].items():
        assert e["aiq"][-1]["mean"] == pytest.approx(warm[name]["aiq"]["mean"], abs=1e-12), name
        assert e["aiq_per_fold"][-1] == pytest.approx(warm[name]["aiq_per_fold"], abs=1e-12)
        for a in e["aiq"] + e["minus_zero_router"]:
            assert a["ci95"][0] <= a["mean"] + 1e-9 <= a["ci95"][1] + 2e-9, (name, a)
        if name == "zero_router":  # the fixed models do not learn: the same test points at every share (up to
            # the float32 rounding of costs normalised by each share's training cost unit)
            assert e["aiq"][0]["mean"] == pytest.approx(e["aiq"][1]["mean"], abs=1e-6)
    # the half share really trained on less: some learner's AIQ moved
    assert any(abs(e["aiq"][0]["mean"] - e["aiq"][1]["mean"]) > 1e-6 for e in lc["routers"].values())
    assert "## Learning curve" in (base / "a" / "report.md").read_text()
    assert (base / "a" / "learning_curve.png").exists()


def test_learning_curve_fractions_are_checked(tmp_path, capsys):
    from bandit_sim.cli import main
    from bandit_sim.experiments.compare import check_fractions

    assert check_fractions([1, 0.25, 0.25]) == (0.25, 1.0)
    for bad in ([0.0, 1.0], [1.5], [float("nan")], [], ["x"]):
        with pytest.raises(ValueError, match="fractions"):
            check_fractions(bad)
    assert main(["compare", "--out", str(tmp_path / "lc"), "--learning-curve", "0.1,abc"]) == 2
    assert "--learning-curve takes a comma list" in capsys.readouterr().err
    assert main(["compare", "--out", str(tmp_path / "lc"), "--learning-curve", "0,1"]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "lc").exists()


def test_select_on_validation_target_rule():
    from bandit_sim.experiments.compare import select_on_validation

    q = np.array([0.9, 0.88, 0.8, 0.5])
    c = np.array([1.0, 0.6, 0.3, 0.1])
    j, v = select_on_validation(q, c, q_prem=0.9, c_prem=1.0, target=0.95)
    assert j == 1 and v["met_target"]  # the largest cost reduction with retention >= 0.95 (0.88 / 0.9)
    j, v = select_on_validation(q, c, q_prem=0.99, c_prem=1.0, target=0.95)
    assert j == 0 and not v["met_target"]  # none reaches it: the highest retention


def test_folds_group_prompts_and_have_equal_sizes():
    from bandit_sim.experiments.protocol import make_folds

    rd = _small_synthetic(n_prompts=103)
    folds, notes = make_folds(rd.table, 5, seed=0)
    n = rd.table["prompt_id"].nunique()
    sizes = {(len(f.train), len(f.val), len(f.test)) for f in folds}
    assert len(sizes) == 1 and sizes.pop()[2] == n // 5
    tested = [p for f in folds for p in f.test]
    assert len(tested) == len(set(tested)) == 5 * (n // 5)
    for f in folds:
        assert not set(f.train) & set(f.val) and not set(f.val) & set(f.test) and not set(f.train) & set(f.test)
        assert len(set(f.train) | set(f.val) | set(f.test)) == n
    assert any("in no test fold" in x for x in notes)


def test_thompson_learns_and_converges_on_a_known_world():
    """Cold Thompson on a synthetic world with one clearly best arm: per-step regret falls and it converges."""
    import jax

    from bandit_sim.experiments import metrics as M
    from bandit_sim.sim.policies import default_hyper
    from bandit_sim.sim.simulate import simulate
    from bandit_sim.sim.world import toy_world

    w, _ = toy_world(n=400, k=4, f=2, n_categories=1, seed=0, bernoulli=True)
    p = np.array([0.3, 0.45, 0.85, 0.5], np.float32)  # arm 2 is best by a wide margin
    rng = np.random.default_rng(1)
    q = (rng.random((400, 4)) < p).astype(np.float32)
    z = np.zeros_like(q)
    w = w._replace(quality=q, cost=z, pred_cost=z, pred_unc=z, mask=np.ones_like(q, bool))
    h = default_hyper(4, lam=0.0, gam=0.0, explore_decay=0.0, min_explore=0.0)
    m, tr = simulate(w, jax.random.key(0), h, policy="thompson", episodes=32, steps=1200, trajectories=True,
                     reward="bernoulli", conv_threshold=0.05)
    reg = np.asarray(tr.regret, np.float64)  # (E, T) against the best arm in hindsight
    first, last = reg[:, :100].mean(), reg[:, -200:].mean()
    assert last < 0.25 * first
    conv = M.convergence_time(reg, 0.05, 50)
    assert conv.converged.mean() >= 0.9 and np.median(conv.queries) < 600
    assert (np.asarray(m.choices)[:, 2] / 1200).mean() > 0.85


def test_coldstart_end_to_end(tmp_path):
    from bandit_sim.experiments.coldstart import run_coldstart

    rd = _small_synthetic(n_prompts=300)
    r = run_coldstart(rd, tmp_path, episodes=4, arrival=20, horizon=100, tokens="standin", quick=True,
                      argv=["coldstart"], progress=False)
    m = json.loads((tmp_path / "metrics.json").read_text())
    for k in ("family_prior", "flat_prior"):
        for key in ("regret_next_100", "regret_next_500", "identification_queries"):
            lo, hi = m[k][key]["ci95"]
            assert lo <= m[k][key]["mean"] + 1e-9 <= hi + 2e-9
    assert 0.0 <= m["p_value"] <= 1.0 and "regret_next_500_reduction" in m
    assert m["cost_scale_usd"] > 0 and r["exploration"].startswith("pure Thompson")
    assert (tmp_path / "convergence.png").exists()
