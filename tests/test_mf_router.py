"""MF router: fit on a synthetic world with a known query-dependent structure, routing, calibration, save/load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bandit_sim.router import mf as R
from bandit_sim.experiments import metrics as M

MODELS = ("cheap", "coder", "premium")


def _table(n: int, seed: int, split: str, offset: int = 0) -> pd.DataFrame:
    """Prompts about code or about history; 'coder' is right on code only, 'cheap' on history only."""
    rng = np.random.default_rng(seed)
    topic = rng.random(n) < 0.5
    words_code = ["python", "function", "compile", "loop", "array", "class", "debug"]
    words_hist = ["empire", "war", "king", "century", "treaty", "revolution", "dynasty"]
    rows = []
    for i in range(n):
        w = words_code if topic[i] else words_hist
        prompt = " ".join(rng.choice(w, 6)) + f" question {i}"
        p_ok = {"cheap": 0.15 if topic[i] else 0.85, "coder": 0.9 if topic[i] else 0.2, "premium": 0.9}
        for m, cost in zip(MODELS, (0.1, 0.3, 1.0)):
            rows.append(dict(prompt_id=f"{split}{i + offset}", prompt=prompt, model=m, family="x",
                             quality=float(rng.random() < p_ok[m]), output_tokens=10, input_tokens=8,
                             cost_usd=cost, order=i + offset, category="code" if topic[i] else "hist", split=split))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def data():
    return _table(400, 0, "train"), _table(150, 1, "val", 1000), _table(300, 2, "test", 2000)


@pytest.fixture(scope="module")
def fitted(data):
    tr, va, _ = data
    return R.fit(tr, va, seed=0, models=MODELS, dim=8, n_svd=8, max_steps=600, patience=60, lr=1e-2)


def test_fit_learns_query_dependence(fitted, data):
    _, _, te = data
    qm = R.query_matrix(te, MODELS)
    pred = R.predict_quality(fitted, qm)
    assert pred.shape == (300, 3) and pred.dtype == np.float32
    code = (te.drop_duplicates("prompt_id").sort_values("order").category == "code").to_numpy()
    # the known structure: coder good on code, cheap good on history
    assert pred[code, 1].mean() > 0.7 and pred[~code, 1].mean() < 0.35
    assert pred[~code, 0].mean() > 0.7 and pred[code, 0].mean() < 0.35
    # better Brier than the per-model mean on held-out prompts
    base = np.nanmean(R.query_matrix(data[0], MODELS).quality, 0)
    assert np.mean((pred - qm.quality) ** 2) < np.mean((base - qm.quality) ** 2) - 0.05
    assert fitted.info["best_step"] > 0 and np.isfinite(fitted.info["best_val_loss"])


def test_routing_and_calibration(fitted, data):
    _, va, te = data
    qm = R.query_matrix(te, MODELS)
    pred = R.predict_quality(fitted, qm)
    d0 = R.route(pred, 0.0, fitted.cost_norm)
    dl = R.route(pred, np.array([0.0, 0.5, 100.0]), fitted.cost_norm)
    np.testing.assert_array_equal(dl[0], d0)
    assert np.all(dl[2] == 0)  # huge lam -> cheapest
    # at a moderate lam the router avoids premium and sends code to coder, history to cheap
    s = M.summarize(dl[1], qm.quality, qm.cost, premium=2)
    assert s["cost_reduction"] > 0.6 and s["quality_retention"] > 0.9
    lam = R.calibrate(fitted, va, target_cost_share=0.35)
    share_val = R.routed_cost_share(R.route(R.predict_quality(fitted, va), lam, fitted.cost_norm),
                                    R.query_matrix(va, MODELS).cost)
    assert share_val <= 0.35 + 1e-9
    with pytest.raises(ValueError, match="exactly one"):
        R.calibrate(fitted, va)


def test_strong_weak_threshold(fitted, data):
    _, va, te = data
    wv = R.win_rate(fitted, va, "premium", "cheap")
    thr = R.calibrate_threshold(wv, 0.5)
    assert R.route_strong_weak(wv, thr).mean() == pytest.approx(0.5, abs=0.02)
    assert R.route_strong_weak(wv, R.calibrate_threshold(wv, 0.0)).sum() == 0
    qm = R.query_matrix(te, MODELS)
    wt = R.win_rate(fitted, qm, "premium", "cheap")
    # premium beats cheap on code prompts: the learned win rate recovers most of the gap early
    assert M.apgr(wt, qm.quality[:, 2], qm.quality[:, 0]) > 0.65  # random 0.5; topic-perfect ~0.72


def test_pairwise_objective_ranks_pairs(data):
    tr, va, te = data
    f = R.fit(tr, va, seed=0, models=MODELS, objective="pairwise", dim=8, n_svd=8, max_steps=400, patience=60,
              lr=1e-2)
    qm = R.query_matrix(te, MODELS)
    wt = R.win_rate(f, qm, "premium", "cheap")
    assert M.apgr(wt, qm.quality[:, 2], qm.quality[:, 0]) > 0.65  # random 0.5; topic-perfect ~0.72
    with pytest.raises(ValueError, match="pointwise"):
        R.predict_quality(f, qm)


def test_deterministic_and_save_load(fitted, data, tmp_path):
    tr, va, te = data
    again = R.fit(tr, va, seed=0, models=MODELS, dim=8, n_svd=8, max_steps=600, patience=60, lr=1e-2)
    for a, b in zip(fitted.params, again.params):
        np.testing.assert_array_equal(a, b)
    p = tmp_path / "mf.npz"
    R.save(fitted, p)
    back = R.load(p)
    assert back.models == fitted.models and back.info == fitted.info
    np.testing.assert_array_equal(R.predict_quality(back, te), R.predict_quality(fitted, te))


def test_bad_input_named(data):
    tr, va, _ = data
    with pytest.raises(ValueError, match="objective"):
        R.fit(tr, va, objective="listwise")
    with pytest.raises(ValueError, match="lacks columns"):
        R.query_matrix(tr.drop(columns=["order"]), MODELS)
    bad = va.copy()
    bad["quality"] = np.nan
    with pytest.raises(ValueError, match="no observed quality"):
        R.fit(tr, bad, models=MODELS)
    with pytest.raises(ValueError, match="not one of"):
        R.win_rate(R.fit(tr, va, models=MODELS, dim=4, n_svd=4, max_steps=5), va, "gpt-9", "cheap")
