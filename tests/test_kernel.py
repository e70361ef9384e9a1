"""Kernel properties: no recompilation on new numbers, grids, sharding invariance, long episodes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from bandit_sim.sim import simulate as kernel
from bandit_sim.sim.episode import hyper_grid
from bandit_sim.sim.simulate import simulate
from bandit_sim.sim.policies import default_hyper
from bandit_sim.sim.world import toy_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world():
    return toy_world(n=80, k=4, seed=2)[0]


def test_no_recompile_when_only_numbers_change(world):
    h = default_hyper(4)
    kw = dict(policy="thompson", episodes=4, steps=64, chunk=16)
    simulate(world, jax.random.key(0), h, **kw)
    n0 = kernel.TRACE_COUNT["simulate"]
    w2 = world._replace(quality=world.quality * 0.5, pred_cost=world.pred_cost + 0.1)
    m1, _ = simulate(w2, jax.random.key(1), h._replace(lam=np.float32(0.7), gam=np.float32(0.0)),
                     conv_threshold=0.2, **kw)
    simulate(world, jax.random.key(2), default_hyper(4, prior_alpha=np.full(4, 3.0)), **kw)
    assert kernel.TRACE_COUNT["simulate"] == n0
    simulate(world, jax.random.key(0), h, **{**kw, "episodes": 8})  # a new shape does retrace
    assert kernel.TRACE_COUNT["simulate"] == n0 + 1
    assert np.all(np.asarray(m1.choices).sum(-1) == 64)


def test_grid_matches_single_runs(world):
    base = default_hyper(4)
    g = hyper_grid(base, lam=[0.0, 1.0], gam=[0.0, 0.5])
    assert g.lam.shape == (4,) and g.prior_alpha.shape == (4, 4)
    mg, _ = simulate(world, jax.random.key(3), g, episodes=4, steps=100, chunk=25)
    assert mg.reward.shape == (4, 4) and mg.choices.shape == (4, 4, 4)
    m1, _ = simulate(world, jax.random.key(3), base._replace(lam=np.float32(1.0), gam=np.float32(0.5)),
                     episodes=4, steps=100, chunk=25)
    np.testing.assert_array_equal(np.asarray(mg.choices[3]), np.asarray(m1.choices))
    np.testing.assert_allclose(np.asarray(mg.regret[3]), np.asarray(m1.regret), rtol=1e-5)
    # lam = 1 makes the expensive arms unattractive: less cost than lam = 0
    assert float(mg.cost[2:].mean()) < float(mg.cost[:2].mean())


@pytest.mark.slow
def test_thompson_learns_and_converges(world):
    h = default_hyper(4, min_explore=0.0)
    m, _ = simulate(world, jax.random.key(4), h, episodes=32, steps=1500, chunk=50, conv_threshold=0.05)
    r, _ = simulate(world, jax.random.key(4), h, policy="random", episodes=32, steps=1500, chunk=50)
    assert float(m.regret.mean()) < 0.3 * float(r.regret.mean())
    assert float(np.mean(m.converged)) > 0.5


def test_bad_arguments(world):
    h = default_hyper(4)
    with pytest.raises(ValueError, match="reward"):
        simulate(world, jax.random.key(0), h, reward="coin")
    with pytest.raises(ValueError, match="unknown policy"):
        simulate(world, jax.random.key(0), h, policy="nope", steps=4)
    with pytest.raises(ValueError, match="arms"):
        simulate(world, jax.random.key(0), default_hyper(5), steps=4)
    with pytest.raises(ValueError, match="unknown fields"):
        default_hyper(4, lamda=1.0)


_SHARD_SCRIPT = textwrap.dedent("""
    import json, sys, jax, numpy as np
    from bandit_sim.sim.episode import hyper_grid
    from bandit_sim.sim.simulate import simulate
    from bandit_sim.sim.policies import default_hyper
    from bandit_sim.sim.world import toy_world
    w = toy_world(n=80, k=4, seed=2)[0]
    g = hyper_grid(default_hyper(4), lam=[0.0, 0.3])
    m, _ = simulate(w, jax.random.key(9), g, episodes=8, steps=120, chunk=40)
    print(json.dumps({"n_dev": len(jax.devices()), "choices": np.asarray(m.choices).tolist(),
                      "regret": np.asarray(m.regret).tolist(), "conv": np.asarray(m.convergence).tolist()}))
""")


def _run_sharded(n_dev):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_dev}",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_same_numbers_on_1_and_4_devices():
    one, four = _run_sharded(1), _run_sharded(4)
    assert one["n_dev"] == 1 and four["n_dev"] == 4
    assert one["choices"] == four["choices"]
    assert one["conv"] == four["conv"]
    np.testing.assert_allclose(one["regret"], four["regret"], rtol=1e-6)


@pytest.mark.slow
def test_million_step_episode_stays_finite_and_exact():
    # constant fractional reward 0.3 on every arm: a naive float32 sum would drift by ~1e3 at 1e6 steps
    w, _ = toy_world(n=50, k=3, seed=0, bernoulli=False)
    w = w._replace(quality=np.full_like(w.quality, 0.3))
    steps = 1_000_000
    m, _ = simulate(w, jax.random.key(0), default_hyper(3), episodes=2, steps=steps, chunk=1000)
    assert np.asarray(m.choices).sum(-1).tolist() == [steps, steps]
    np.testing.assert_allclose(np.asarray(m.reward), 0.3 * steps, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(m.regret)))


def test_simulate_refuses_inputs_that_would_hang_or_learn_garbage():
    """Non-finite quality (the exact sampler never accepts a NaN shape), a query with no model available at step 0
    (argmax of all -inf picked arm 0 and learnt a fake reward), categories beyond n_categories (NaN draws), a
    device count that does not divide E: each named at once. A Python-float lam is accepted."""
    w, _ = toy_world(n=20, k=3, seed=0, bernoulli=False)
    h = default_hyper(3)
    q = np.array(w.quality)
    q[3, 1] = np.nan
    with pytest.raises(ValueError, match="World.quality: query row 3, model column 1 is not finite"):
        simulate(w._replace(quality=q), jax.random.key(0), h, episodes=2, steps=5)
    late, _ = toy_world(n=20, k=3, seed=0, bernoulli=False, arrival_step=[0, 0, 10])
    mask = np.array(late.mask)
    mask[0] = [False, False, True]
    bad = late._replace(mask=mask, quality=np.where(mask, late.quality, 0).astype(np.float32))
    with pytest.raises(ValueError, match=r"query rows \[0\] have no model available from step 0"):
        simulate(bad, jax.random.key(0), h, episodes=2, steps=5)
    cat = w._replace(category=(np.arange(20) % 3).astype(np.int32))
    with pytest.raises(ValueError, match="category goes up to 2 but options n_categories = 2"):
        simulate(cat, jax.random.key(0), h, policy="contextual_thompson", episodes=2, steps=5,
                 options={"n_categories": 2})
    with pytest.raises(ValueError, match="hyper.prior_alpha has non-finite"):
        simulate(w, jax.random.key(0), h._replace(prior_alpha=np.full(3, np.nan, np.float32)), episodes=2, steps=5)
    if len(jax.local_devices()) >= 2:  # CPU runs have one device unless XLA_FLAGS asks for more
        with pytest.raises(ValueError, match="does not divide episodes"):
            simulate(w, jax.random.key(0), h, episodes=3, steps=5, devices=2)
    m, _ = simulate(w, jax.random.key(0), h._replace(lam=0.3), episodes=2, steps=5)  # a Python float
    assert np.asarray(m.choices).sum() == 10


@pytest.mark.parametrize("impl", ["generic", "batched"])
def test_exact_sampler_returns_nan_for_a_nan_shape_instead_of_looping(impl):
    """A NaN Beta parameter reaching the sampler directly (past the checks) gives a NaN draw, not an endless loop."""
    import jax.numpy as jnp

    from bandit_sim.sim import batched, sampling

    seed = jnp.array([1, 2], jnp.uint32)
    shapes = jnp.array([[[0.5], [np.nan], [3.0]], [[2.0], [1.0], [np.inf]]], jnp.float32)  # (M=2, K=3, E=1)
    if impl == "generic":
        out = jax.jit(sampling.log_gamma_from_seed, static_argnums=2)(shapes, seed, 1)
    else:
        lanes = jnp.array([0, 3], jnp.uint32)[:, None, None] + jnp.arange(3, dtype=jnp.uint32)[None, :, None]
        out = jax.jit(batched._log_gammas)(jnp.int32(0), shapes, lanes, seed[:1], seed[1:])
    out = np.asarray(out)
    assert np.isnan(out[0, 1, 0]) and not np.isfinite(out[1, 2, 0])
    assert np.isfinite(out[0, 0, 0]) and np.isfinite(out[0, 2, 0]) and np.isfinite(out[1, :2, 0]).all()
