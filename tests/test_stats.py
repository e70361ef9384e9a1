"""Bootstrap CIs, paired tests and Holm correction with fixed seeds and known truths."""

from __future__ import annotations

import numpy as np
import pytest

from bandit_sim.experiments import stats as S


def test_bootstrap_ci_reproducible_and_contains_mean():
    x = np.random.default_rng(1).normal(2.0, 1.0, 200)
    a = S.bootstrap_ci(x, seed=3)
    b = S.bootstrap_ci(x, seed=3)
    assert a == b
    assert a.low < x.mean() < a.high
    # half-width close to the normal-theory 1.96 * sd / sqrt(n)
    hw = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert (a.high - a.low) / 2 == pytest.approx(hw, rel=0.15)
    p = S.bootstrap_ci(x, method="percentile", seed=3)
    assert p.low < x.mean() < p.high


def test_bootstrap_degenerate_and_bad_input():
    ci = S.bootstrap_ci(np.full(10, 0.3))
    assert ci.low == ci.estimate == ci.high == pytest.approx(0.3)
    with pytest.raises(ValueError, match="samples"):
        S.bootstrap_ci(np.array([1.0]))
    with pytest.raises(ValueError, match="non-finite"):
        S.bootstrap_ci(np.array([1.0, np.nan]))


def test_bootstrap_coverage_sanity():
    rng = np.random.default_rng(0)
    hits = 0
    reps = 200
    for i in range(reps):
        x = rng.exponential(1.0, 60)  # true mean 1
        ci = S.bootstrap_ci(x, n_resamples=999, method="percentile", seed=i)
        hits += ci.low <= 1.0 <= ci.high
    # nominal 0.95; percentile intervals on skewed n=60 under-cover slightly; 200 reps -> sd ~0.015
    assert 0.87 <= hits / reps <= 0.99


@pytest.mark.parametrize("test", ["wilcoxon", "ttest"])
def test_paired_identical_gives_p_one(test):
    x = np.random.default_rng(2).normal(size=50)
    r = S.paired_test(x, x.copy(), test=test)
    assert r.p_value == 1.0 and r.mean_diff == 0.0 and r.ci_low == r.ci_high == 0.0


@pytest.mark.parametrize("test", ["wilcoxon", "ttest"])
def test_paired_known_shift_detected(test):
    rng = np.random.default_rng(3)
    base = rng.normal(size=100)  # a shared random stream: large between-episode variance
    a = base * 5 + 0.3 + rng.normal(0, 0.5, 100)
    b = base * 5 + rng.normal(0, 0.5, 100)
    r = S.paired_test(a, b, test=test)
    assert r.p_value < 1e-3
    assert r.ci_low < 0.3 < r.ci_high and r.ci_low > 0
    assert r.n == 100
    assert r.test == ("wilcoxon signed-rank" if test == "wilcoxon" else "paired t")


def test_paired_no_shift_not_significant_and_matches_scipy():
    from scipy import stats as sps

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=80), rng.normal(size=80)
    r = S.paired_test(a, b, test="ttest")
    assert r.p_value == pytest.approx(sps.ttest_rel(a, b).pvalue)
    w = S.paired_test(a, b, test="wilcoxon")
    assert w.p_value == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert w.p_value > 0.05
    with pytest.raises(ValueError, match="same number of episodes"):
        S.paired_test(a, b[:10])
    with pytest.raises(ValueError, match="test must be"):
        S.paired_test(a, b, test="sign")


def test_holm_hand_computed():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    adj, rej = S.holm(p, alpha=0.05)
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4*.01=.04, 3*.03=.09, 2*.04=.08 -> max .09, 1*.5=.5
    np.testing.assert_allclose(adj, [0.04, 0.09, 0.09, 0.5])
    np.testing.assert_array_equal(rej, [True, False, False, False])
    adj2, _ = S.holm(np.array([0.9, 0.8]))
    np.testing.assert_allclose(adj2, [1.0, 1.0])  # 2 * 0.8 capped at 1; monotone step-down


def test_compare_to_baselines():
    rng = np.random.default_rng(5)
    base = rng.normal(size=60)
    target = base + 1.0 + rng.normal(0, 0.1, 60)
    res = S.compare_to_baselines(target, {"same": target.copy(), "worse": base}, test="ttest")
    assert res["same"]["p_value"] == 1.0 and not res["same"]["reject"]
    assert res["worse"]["reject"] and res["worse"]["mean_diff"] == pytest.approx(1.0, abs=0.05)
    assert res["worse"]["p_holm"] >= res["worse"]["p_value"]


def test_constant_shift_ttest_is_certain():
    a = np.linspace(0, 1, 20)
    r = S.paired_test(a + 0.1, a, test="ttest")
    assert r.p_value == 0.0 and r.mean_diff == pytest.approx(0.1)
