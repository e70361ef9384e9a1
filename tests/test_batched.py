"""The hand-batched Thompson path computes the same episodes as the generic vmapped kernel.

Both paths draw from the same keys and proposal streams; decisions (hence choices, pulls and every
reward) must be identical and float totals equal to float32 rounding.
"""

import jax
import numpy as np
import pytest

from bandit_sim.sim import batched
from bandit_sim.sim.episode import hyper_grid
from bandit_sim.sim.simulate import simulate
from bandit_sim.sim.policies import default_hyper, thompson
from bandit_sim.sim.world import toy_world


def _both(world, hyper, **kw):
    key = jax.random.key(kw.pop("seed", 0))
    fast, _ = simulate(world, key, hyper, impl="batched", **kw)
    slow, _ = simulate(world, key, hyper, impl="generic", **kw)
    return fast, slow


def _assert_same(fast, slow):
    np.testing.assert_array_equal(np.asarray(fast.choices), np.asarray(slow.choices))
    for name in ("reward", "quality", "cost", "regret"):
        np.testing.assert_allclose(np.asarray(getattr(fast, name)), np.asarray(getattr(slow, name)),
                                   rtol=1e-5, atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(np.asarray(fast.convergence), np.asarray(slow.convergence))
    np.testing.assert_array_equal(np.asarray(fast.converged), np.asarray(slow.converged))


@pytest.fixture(scope="module")
def world():
    return toy_world(n=90, k=5, n_categories=3, seed=7, missing=0.2)[0]


def test_thompson_same_as_generic(world):
    # 37 steps in chunks of 8: a remainder chunk; priors from 0.05 to 30 (boosted and not)
    h = default_hyper(5, prior_alpha=np.array([1.0, 0.5, 2.0, 30.0, 0.07]), prior_beta=np.array([1.0, 3.0, 0.2, 9.0, 0.05]))
    fast, slow = _both(world, h, policy="thompson", episodes=12, steps=37, chunk=8, conv_threshold=0.1,
                       options={"n_candidates": 2})
    _assert_same(fast, slow)
    assert np.asarray(fast.choices).sum() == 12 * 37


def test_blocks_do_not_change_episodes(world, monkeypatch):
    h = default_hyper(5)
    whole, _ = simulate(world, jax.random.key(1), h, episodes=64, steps=40, chunk=10)
    monkeypatch.setattr(batched, "BLOCK", 16)
    jax.clear_caches()
    try:
        assert batched.block_size(64, 16) == 16
        blocks, _ = simulate(world, jax.random.key(1), h, episodes=64, steps=40, chunk=10, impl="batched")
    finally:
        jax.clear_caches()
    np.testing.assert_array_equal(np.asarray(whole.choices), np.asarray(blocks.choices))
    np.testing.assert_array_equal(np.asarray(whole.reward), np.asarray(blocks.reward))


def test_contextual_bernoulli_grid_same_as_generic(world):
    pa = np.array([[1.0, 2.0, 1.0, 5.0, 1.0], [0.3, 1.0, 1.0, 1.0, 8.0], [1.0, 1.0, 40.0, 1.0, 1.0]])
    h = default_hyper(5, prior_alpha=pa, prior_beta=pa[::-1].copy())
    g = hyper_grid(h, lam=[0.0, 0.6], gam=[0.0, 0.3])
    fast, slow = _both(world, g, policy="contextual_thompson", episodes=6, steps=60, chunk=16,
                       reward="bernoulli", options={"n_categories": 3}, seed=3)
    assert fast.choices.shape == (4, 6, 5)
    _assert_same(fast, slow)


def test_arrivals_with_family_prior_same_as_generic():
    w = toy_world(n=70, k=4, seed=3, bernoulli=False, arrival_step=[0, 0, 25, 40])[0]
    w = w._replace(family=np.array([0, 1, 0, 1], np.int32))
    h = default_hyper(4, family_strength=20.0, min_explore=0.1)
    fast, slow = _both(w, h, policy="thompson", episodes=8, steps=90, chunk=30, seed=5)
    _assert_same(fast, slow)
    # the arriving arms were pulled only after they arrived
    assert np.all(np.asarray(fast.choices)[:, 2:].sum(-1) <= 90 - 25)


def test_impl_argument_is_checked(world):
    h = default_hyper(5)
    with pytest.raises(ValueError, match="impl must be one of"):
        simulate(world, jax.random.key(0), h, impl="fast")
    with pytest.raises(ValueError, match="impl='batched' runs the Thompson"):
        simulate(world, jax.random.key(0), h, policy="ucb1", impl="batched")
    with pytest.raises(ValueError, match="impl='batched' runs the Thompson"):
        simulate(world, jax.random.key(0), h, impl="batched", trajectories=True)
    assert batched.serves(thompson, {"sampler": "gaussian"}, False)
    assert not batched.serves(thompson, {"sampler": "other"}, False)


def test_gaussian_option_same_as_generic(world):
    h = default_hyper(5, prior_alpha=np.array([1.0, 0.5, 2.0, 30.0, 0.07]))
    fast, slow = _both(world, h, policy="thompson", episodes=5, steps=30, chunk=10, options={"sampler": "gaussian"})
    _assert_same(fast, slow)


def test_recorded_arms_match_the_generic_trajectories():
    """trajectories="arms": the batched kernel records the query and arm of every step, the same as the generic path."""
    world, _ = toy_world(n=50, k=5, seed=2)
    h = hyper_grid(default_hyper(5), lam=[0.0, 0.3])
    kw = dict(policy="thompson", episodes=6, steps=70, chunk=16)
    m_b, t_b = simulate(world, jax.random.key(4), h, trajectories="arms", impl="batched", **kw)
    m_g, t_g = simulate(world, jax.random.key(4), h, trajectories=True, impl="generic", **kw)
    np.testing.assert_array_equal(np.asarray(t_b.query), np.asarray(t_g.query))
    np.testing.assert_array_equal(np.asarray(t_b.arm), np.asarray(t_g.arm))
    np.testing.assert_array_equal(np.asarray(m_b.choices), np.asarray(m_g.choices))
    assert t_b.draws is None and t_b.reward is None
    m_a, t_a = simulate(world, jax.random.key(4), h, trajectories="arms", impl="generic", **kw)
    np.testing.assert_array_equal(np.asarray(t_a.arm), np.asarray(t_g.arm))
