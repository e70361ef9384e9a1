"""Bradley-Terry fitting: recovery of known strengths, gradient, ties, shrinkage, an sklearn cross-check."""

import numpy as np
import pytest
from scipy.special import expit

from bandit_sim.data.bradley_terry import (
    BradleyTerryModel,
    bt_negative_log_posterior,
    fit_bradley_terry,
    fit_bradley_terry_by_category,
)

TRUE = np.array([-1.2, -0.5, 0.0, 0.3, 0.9, 1.5])


def _comparisons(strength, m, seed, tie_rate=0.0):
    rng = np.random.default_rng(seed)
    k = strength.shape[0]
    a = rng.integers(0, k, m)
    b = (a + rng.integers(1, k, m)) % k  # never a == b
    p = expit(strength[a] - strength[b])
    y = (rng.random(m) < p).astype(np.float64)
    tie = rng.random(m) < tie_rate
    y[tie] = 0.5
    return a, b, y


def test_recovers_known_strengths():
    a, b, y = _comparisons(TRUE, 30_000, seed=0)
    s, se = fit_bradley_terry(a, b, y, TRUE.size, l2=1e-3, return_se=True)
    centred = s - s.mean()
    truth = TRUE - TRUE.mean()
    assert np.all(np.abs(centred - truth) < 4 * se + 1e-3), (centred, truth, se)
    assert np.max(np.abs(centred - truth)) < 0.08
    np.testing.assert_array_equal(np.argsort(s), np.argsort(TRUE))


def test_gradient_matches_finite_differences():
    a, b, y = _comparisons(TRUE, 500, seed=1, tie_rate=0.2)
    w = np.random.default_rng(2).random(500)
    prior = np.linspace(-0.3, 0.3, TRUE.size)
    x = np.random.default_rng(3).normal(size=TRUE.size)
    _, g = bt_negative_log_posterior(x, a, b, y, w, 0.7, prior)
    eps = 1e-6
    num = np.array([
        (bt_negative_log_posterior(x + eps * e, a, b, y, w, 0.7, prior)[0]
         - bt_negative_log_posterior(x - eps * e, a, b, y, w, 0.7, prior)[0]) / (2 * eps)
        for e in np.eye(TRUE.size)])
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-6)


def test_tie_equals_half_win_each_side():
    # one tie between 0 and 1 is the same data as a half-weighted win for each side
    s_tie = fit_bradley_terry([0, 0, 2], [1, 2, 1], [0.5, 1.0, 1.0], 3, l2=0.5)
    s_split = fit_bradley_terry([0, 1, 0, 2], [1, 0, 2, 1], [1.0, 1.0, 1.0, 1.0], 3, l2=0.5,
                                weights=[0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(s_tie, s_split, atol=1e-6)


def test_matches_sklearn_logistic_regression():
    sklearn = pytest.importorskip("sklearn.linear_model")
    a, b, y = _comparisons(TRUE, 3000, seed=4, tie_rate=0.1)
    k = TRUE.size
    x = np.zeros((a.size, k))
    x[np.arange(a.size), a] = 1.0
    x[np.arange(a.size), b] = -1.0
    # ties -> one half-weighted row per outcome
    xx = np.concatenate([x, x])
    yy = np.concatenate([np.ones(a.size), np.zeros(a.size)])
    ww = np.concatenate([y, 1.0 - y])
    keep = ww > 0
    l2 = 2.0
    clf = sklearn.LogisticRegression(C=1.0 / l2, fit_intercept=False, tol=1e-10, max_iter=10_000)
    clf.fit(xx[keep], yy[keep], sample_weight=ww[keep])
    ours = fit_bradley_terry(a, b, y, k, l2=l2)
    np.testing.assert_allclose(ours, clf.coef_[0], atol=1e-4)


def test_category_shrinkage_and_fallback():
    # category "x": lots of data with reversed strengths; "y": a handful; "z": none
    a1, b1, y1 = _comparisons(TRUE, 20_000, seed=5)
    a2, b2, y2 = _comparisons(-TRUE, 20_000, seed=6)
    a3, b3, y3 = _comparisons(-TRUE, 12, seed=7)
    names = np.array([f"m{i}" for i in range(TRUE.size)], dtype=object)
    ma = np.concatenate([names[a1], names[a2], names[a3]])
    mb = np.concatenate([names[b1], names[b2], names[b3]])
    y = np.concatenate([y1, y2, y3])
    cat = np.array(["w"] * y1.size + ["x"] * y2.size + ["y"] * y3.size, dtype=object)
    bt = fit_bradley_terry_by_category(ma, mb, y, cat, categories=["w", "x", "y", "z"],
                                       l2_global=1.0, l2_category=4.0)
    s = bt.category_strength
    np.testing.assert_array_equal(np.argsort(s[0]), np.argsort(TRUE))      # plenty of data: own ordering
    np.testing.assert_array_equal(np.argsort(s[1]), np.argsort(-TRUE))
    np.testing.assert_allclose(s[3], bt.global_strength)  # no data: global
    # little data: pulled much closer to the global fit than to its own (reversed) truth
    assert np.abs(s[2] - bt.global_strength).max() < 0.5 * np.abs(-TRUE - bt.global_strength).max()
    q = bt.quality_table()
    assert q.shape == (4, TRUE.size) and np.all((q > 0) & (q < 1))
    assert np.argmax(q[0]) == 5 and np.argmax(q[1]) == 0
    assert bt.n_comparisons[3].sum() == 0 and bt.n_comparisons[0].sum() == 2 * y1.size
    np.testing.assert_allclose(bt.quality(["w", "x"], ["m5", "m0"]), [q[0, 5], q[1, 0]])
    assert bt.prob_beats("w", "m5", "m0") > 0.9
    back = BradleyTerryModel.from_dict(bt.to_dict())
    np.testing.assert_array_equal(back.category_strength, bt.category_strength)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="idx_b has indices outside"):
        fit_bradley_terry([0, 1], [1, 5], [1.0, 0.0], 3)
    with pytest.raises(ValueError, match="score_a must lie in"):
        fit_bradley_terry([0, 1], [1, 2], [1.0, 2.0], 3)
    with pytest.raises(ValueError, match="compared with itself"):
        fit_bradley_terry_by_category(["a", "b"], ["b", "b"], [1.0, 0.0], ["c", "c"])
    with pytest.raises(KeyError, match="unknown model 'q'"):
        fit_bradley_terry_by_category(["a", "q"], ["b", "a"], [1.0, 0.0], ["c", "c"], models=["a", "b"])
