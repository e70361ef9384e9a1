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
    assert np.all(np.asarray(m.regret) >= -1e-3)


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
