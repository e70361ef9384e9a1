"""Routing metrics on tiny hand-computed examples (known truths)."""

from __future__ import annotations

import numpy as np
import pytest

from bandit_sim.experiments import metrics as M

# 4 queries x 3 models; model 2 is premium (expensive, best on average).
Q = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1], [1, 1, 0]], dtype=float)
C = np.array([[1, 2, 10], [1, 2, 10], [1, 2, 10], [1, 2, 10]], dtype=float)


def test_oracle_cheapest_best_and_best_fixed():
    # q0: best 1 at models 0,2 -> cheapest 0; q1: 1,2 -> 1; q2: only 2; q3: 0,1 -> 0
    np.testing.assert_array_equal(M.oracle_decisions(Q, C), [0, 1, 2, 0])
    assert M.best_fixed_model(Q, C) == 2  # mean quality 0.75 vs 0.5, 0.5
    # tie on quality -> lower total cost wins
    assert M.best_fixed_model(np.array([[1.0, 1.0]]), np.array([[5.0, 3.0]])) == 1
    # under a cost weight the best fixed model changes: utilities 0.5 - 0.1, 0.5 - 0.2, 0.75 - 1.0
    assert M.best_fixed_model(Q, C, lam=0.1) == 0
    # the oracle sweep: at lam ~ 0 the oracle, at a large lam the cheapest model everywhere
    d = M.oracle_sweep(Q, C, np.array([1e-9, 100.0]))
    np.testing.assert_array_equal(d[0], M.oracle_decisions(Q, C))
    np.testing.assert_array_equal(d[1], [0, 0, 0, 0])


def test_premium_is_best_on_training_quality_ties_cheaper():
    assert M.premium_model([0.7, 0.8, 0.8], [1.0, 3.0, 2.0]) == 2
    assert M.premium_model([0.7, 0.8], [1.0, 3.0], models=["a", "b"], name="a") == 0
    with pytest.raises(ValueError, match="premium model 'c'"):
        M.premium_model([0.7, 0.8], [1.0, 3.0], models=["a", "b"], name="c")


def test_premium_and_best_fixed_rankings_and_fixed_decisions_with_missing_answers():
    """The rankings behind premium_model / best_fixed_model (their first entries), and a fixed router that falls back
    down its ranking where its model has no answer."""
    np.testing.assert_array_equal(M.premium_order([0.7, 0.8, 0.8], [1.0, 3.0, 2.0]), [2, 1, 0])
    np.testing.assert_array_equal(M.best_fixed_order(Q, C), [2, 0, 1])  # 0.75; 0.5 at cost 4 before 0.5 at cost 8
    assert M.best_fixed_order(Q, C, lam=0.1)[0] == M.best_fixed_model(Q, C, lam=0.1) == 0
    mask = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 0], [1, 1, 1]], bool)
    np.testing.assert_array_equal(M.fixed_decisions(mask, [2, 0, 1]), [2, 0, 1, 2])
    np.testing.assert_array_equal(M.fixed_decisions(np.ones((2, 3), bool), [1, 2]), [1, 1])
    with pytest.raises(ValueError, match="no answer"):
        M.fixed_decisions(mask, [2, 0])  # query 2: only model 1 answered, and it is not in the order


def test_sweep_pgr_apgr_cpt():
    # a router that is random mixing: PGR = share -> APGR 0.5, CPT(50%) = 0.5
    share, pgr = M.sweep_pgr([0.25, 0.5, 0.75], [0.25, 0.5, 0.75], r_strong=1.0, r_weak=0.0)
    np.testing.assert_allclose(share, [0, 0.25, 0.5, 0.75, 1])
    assert M.apgr_from_sweep(share, pgr) == pytest.approx(0.5)
    assert M.cpt_from_sweep(share, pgr, 0.5) == pytest.approx(0.5)
    # a perfect router recovers everything at the share of queries where strong wins (0.2)
    share, pgr = M.sweep_pgr([0.2], [1.0], r_strong=1.0, r_weak=0.0)
    assert M.apgr_from_sweep(share, pgr) == pytest.approx(0.9)
    assert M.cpt_from_sweep(share, pgr, 0.8) == pytest.approx(0.16)


def test_regret_against_oracle_and_best_fixed():
    rows_q, rows_c = Q[None], C[None]
    d = np.array([[2, 2, 2, 2]])  # always premium
    q, c = Q[np.arange(4), d[0]][None], C[np.arange(4), d[0]][None]
    r_orc = M.regret_per_step(q, c, rows_q, rows_c, lam=0.0, reference="oracle")
    np.testing.assert_allclose(r_orc, [[0, 0, 0, 1]])  # the oracle gets 1 on every query
    r_fix = M.regret_per_step(q, c, rows_q, rows_c, lam=0.0, reference="best_fixed", fixed=2)
    np.testing.assert_allclose(r_fix, 0.0)  # premium is the best fixed model at lam 0


def test_summarize_hand_computed():
    d = np.array([[0, 1, 2, 0], [2, 2, 2, 2]])  # episode 0 = oracle, episode 1 = always premium
    s = M.summarize(d, Q, C, premium=2)
    # oracle: quality 1,1,1,1 -> 1.0; cost 1+2+10+1 = 14; premium: quality 0.75, cost 40
    np.testing.assert_allclose(s["quality"], [1.0, 0.75])
    np.testing.assert_allclose(s["cost_usd"], [14.0, 40.0])
    np.testing.assert_allclose(s["quality_retention"], [1 / 0.75, 1.0])
    np.testing.assert_allclose(s["quality_vs_oracle"], [1.0, 0.75])
    np.testing.assert_allclose(s["cost_reduction"], [1 - 14 / 40, 0.0])
    np.testing.assert_allclose(s["utilization"], [[0.5, 0.25, 0.25], [0, 0, 1]])


def test_routed_outcomes_with_query_index():
    d = np.array([[1, 0]])
    qi = np.array([[1, 3]])  # step 0 serves query 1 with model 1 (q=1, c=2); step 1 query 3 with model 0 (1, 1)
    q, c = M.routed_outcomes(d, Q, C, qi)
    np.testing.assert_array_equal(q, [[1, 1]])
    np.testing.assert_array_equal(c, [[2, 1]])


def test_bad_inputs_named():
    with pytest.raises(ValueError, match="decisions must lie"):
        M.routed_outcomes(np.array([0, 1, 2, 3]), Q, C)
    with pytest.raises(ValueError, match="integer"):
        M.routed_outcomes(np.array([0.0, 1, 2, 0]), Q, C)
    with pytest.raises(ValueError, match="strong model mean quality"):
        M.apgr(np.zeros(2), np.array([0.0, 0.0]), np.array([1.0, 1.0]))


def test_hull_drops_dominated_and_concave_interior():
    c = np.array([0.0, 1.0, 2.0, 3.0, 2.5])
    q = np.array([0.0, 0.2, 1.0, 1.0, 0.5])
    hc, hq = M.nondecreasing_hull(c, q)
    # (1, 0.2) lies below the chord (0,0)-(2,1); (3,1) and (2.5,0.5) are dominated by (2,1)
    np.testing.assert_array_equal(hc, [0.0, 2.0])
    np.testing.assert_array_equal(hq, [0.0, 1.0])


def test_aiq_hand_computed():
    # hull (0,0)-(2,1), flat to 4: integral = 1 + 2 = 3 over [0,4] -> 0.75
    assert M.aiq([0.0, 2.0], [0.0, 1.0], 0.0, 4.0) == pytest.approx(0.75)
    # default bounds = the points' range -> mean of a line from 0 to 1 = 0.5
    assert M.aiq([0.0, 2.0], [0.0, 1.0]) == pytest.approx(0.5)
    # unreachable left part counts 0: single point (1, 0.8) over [0, 2] -> 0.8 * 1 / 2
    assert M.aiq([1.0], [0.8], 0.0, 2.0) == pytest.approx(0.4)
    # a dominated extra point does not change the area
    assert M.aiq([0.0, 2.0, 1.0], [0.0, 1.0, 0.3], 0.0, 4.0) == pytest.approx(0.75)


def test_zero_router_and_table():
    mc = np.array([1.0, 2.0, 10.0])
    mq = np.array([0.5, 0.5, 0.75])
    hc, hq = M.zero_router_hull(mc, mq)
    np.testing.assert_array_equal(hc, [1.0, 10.0])  # model 1 dominated by model 0
    t = M.aiq_table({"zero_router": (mc, mq), "oracle": (np.array([3.5]), np.array([1.0]))})
    assert t["_c_lo"] == 1.0 and t["_c_hi"] == 10.0
    # zero: trapezoid 0.5 -> 0.75 over 9 -> mean 0.625; oracle: 0 on [1, 3.5), 1 on [3.5, 10] -> 6.5/9
    assert t["zero_router"] == pytest.approx(0.625)
    assert t["oracle"] == pytest.approx(6.5 / 9)


def test_pgr_apgr_cpt_known_truths():
    qs = np.array([1.0, 1.0, 0.0, 1.0])
    qw = np.array([0.0, 0.0, 0.0, 1.0])  # gap = 0.5; gains 1,1,0,0
    perfect = np.array([0.9, 0.8, 0.1, 0.2])
    curve = M.pgr_curve(perfect, qs, qw)
    np.testing.assert_allclose(curve.pgr, [0, 0.5, 1, 1, 1])
    # trapezoid: (0+.5)/2*.25 + (.5+1)/2*.25 + 2*.25 = 0.0625 + 0.1875 + 0.5 = 0.75
    assert M.apgr(perfect, qs, qw) == pytest.approx(0.75)
    assert M.cpt(perfect, qs, qw, 0.5) == pytest.approx(0.25)
    assert M.cpt(perfect, qs, qw, 0.8) == pytest.approx(0.25 + 0.6 * 0.25)
    # on the grid 0, 1/4, ..., 1 (the 0% point included) the trapezoid rule equals the exact integral here;
    # averaging 1/4 .. 1 only, (0.5 + 1 + 1 + 1) / 4 = 0.875, would read 1/8 high
    assert M.apgr(perfect, qs, qw, n_points=4) == pytest.approx(0.75)
    # constant scores = random router: PGR(c) = c, APGR = 0.5, CPT(x) = x
    const = np.zeros(4)
    np.testing.assert_allclose(M.pgr_curve(const, qs, qw).pgr, [0, 0.25, 0.5, 0.75, 1])
    assert M.apgr(const, qs, qw) == pytest.approx(0.5)
    assert M.cpt(const, qs, qw, 0.8) == pytest.approx(0.8)
    # reversed scores are worse than random
    assert M.apgr(-perfect, qs, qw) < 0.5


def test_apgr_random_scores_near_half():
    rng = np.random.default_rng(0)
    n = 4000
    qs = (rng.random(n) < 0.8).astype(float)
    qw = (rng.random(n) < 0.6).astype(float)
    vals = [M.apgr(rng.random(n), qs, qw) for _ in range(20)]
    assert abs(np.mean(vals) - 0.5) < 0.03


def test_rolling_mean_and_convergence():
    # trailing windows, shorter at the start
    np.testing.assert_allclose(M.rolling_mean(np.arange(5.0), 2), [0.0, 0.5, 1.5, 2.5, 3.5])
    t = 200
    reg = np.zeros((3, t))
    reg[0, :100] = 1.0  # windows ending at step <= 148 contain a 1 above the threshold 0.01
    reg[1, :] = 0.0  # below from the first step: converges at 0 queries
    reg[2, -1] = 1.0  # the last window is above: never converges
    res = M.convergence_time(reg, threshold=0.01, window=50)
    # episode 0: the window ending at step 148 covers steps 99..148 (contains step 99): last above t = 148 -> 149
    np.testing.assert_array_equal(res.queries, [149, 0, t])
    np.testing.assert_array_equal(res.converged, [True, True, False])
    # a spike that lifts the windows ending at 120..169 above the threshold later resets convergence
    reg2 = np.zeros(t)
    reg2[120] = 1.0
    assert M.convergence_time(reg2, 0.01).queries[0] == 170


def test_convergence_is_the_kernels_definition():
    """The kernel's in-scan convergence equals metrics.convergence_time on the kernel's own regret trajectory."""
    import jax

    from bandit_sim.sim.policies import default_hyper
    from bandit_sim.sim.simulate import simulate
    from bandit_sim.sim.world import toy_world

    w, _ = toy_world(n=120, k=4, seed=3)
    m, traj = simulate(w, jax.random.key(1), default_hyper(4), policy="thompson", episodes=6, steps=300,
                       trajectories=True, conv_threshold=0.08)
    res = M.convergence_time(np.asarray(traj.regret, np.float64), 0.08, 50)
    np.testing.assert_array_equal(res.queries, np.asarray(m.convergence))
    np.testing.assert_array_equal(res.converged, np.asarray(m.converged))


def test_aiq_routerbench_code_normalisation():
    # one router: hull (1, 0.5) -> (2, 1.0), flat to c_max = 4: area 0.75 + 2 = 2.75 over 4
    c, q = np.array([1.0, 2.0]), np.array([0.5, 1.0])
    assert M.aiq_routerbench_code(c, q, 4.0) == pytest.approx(2.75 / 4)
    # the paper's formula over [1, 4]: the same area over the range 3
    assert M.aiq(c, q, 1.0, 4.0) == pytest.approx(2.75 / 3)
