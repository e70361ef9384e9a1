"""The shared SVI loop (hierarchical/svi_loop.py): schedule, convergence check and the flag every fit reports."""

from __future__ import annotations

import numpy as np
import pytest

from hierarchical.svi_loop import decrease_bound, run_svi

CHUNK = 250
KW = dict(chunk=CHUNK, peak_lr=0.02, warmup=200, decay_steps=2000, window=2000, tol=1e-3, min_steps=1500)


def _fake(loss_of_step):
    """A run_chunk whose 'loss' is a given function of (step, learning rate, rng); records the rates it was given."""
    rates = []

    def run_chunk(state, data, lrs):
        step, rng = state
        lrs = np.asarray(lrs, np.float64)
        rates.append(lrs)
        out = np.array([loss_of_step(step + j, lr, rng) for j, lr in enumerate(lrs)], np.float32)
        return (step + len(lrs), rng), out

    return run_chunk, rates


def test_decrease_bound_covers_the_true_trend():
    rng = np.random.default_rng(0)
    t = np.arange(16)
    hits = [decrease_bound(1000.0 - 3.0 * t + 5.0 * rng.standard_normal(16), 8) >= 3.0 * 8 for _ in range(2000)]
    assert 0.95 < np.mean(hits) < 0.995  # a one-sided 97.5% bound (t with 14 df is a little wider than 2 sd)
    assert decrease_bound(np.full(16, 5.0), 8) == pytest.approx(0.0, abs=1e-9)


def test_plateau_converges_and_the_decay_follows():
    # loss 1e4 * (1 + exp(-step / 800)) + noise: it falls by less than tol = 1e-3 (10) per 2000 steps after step
    # 5457; the line through the last 4000 steps sees that some steps later
    run, rates = _fake(lambda s, lr, rng: 1e4 * (1 + np.exp(-s / 800)) + 2.0 * rng.standard_normal())
    res = run_svi(run, (0, np.random.default_rng(1)), (), num_steps=20000, **KW)
    assert res.converged and 5457 <= res.constant_steps <= 11000
    assert res.decay_steps == 2000 and res.losses.size == res.constant_steps + 2000
    lrs = np.concatenate(rates)
    assert np.all(lrs[200:res.constant_steps] == np.float32(0.02))  # the check only ever saw the constant rate
    assert lrs[-1] == pytest.approx(0.02 * 0.02, rel=1e-3) and np.all(np.diff(lrs[res.constant_steps:]) <= 0)


def test_a_loss_that_only_falls_with_the_rate_is_not_converged():
    # progress in proportion to the learning rate, no optimum: a decaying rate flattens the loss (the old check
    # fired there), a constant one does not -- the budget runs out and the fit says so
    def loss(s, lr, rng, state={"v": 1e4}):
        state["v"] -= 5.0 * lr / 0.02
        return state["v"] + 2.0 * rng.standard_normal()

    run, _ = _fake(loss)
    res = run_svi(run, (0, np.random.default_rng(2)), (), num_steps=14000, **KW)
    assert not res.converged and res.losses.size == 14000


def test_noise_that_hides_the_trend_is_not_converged():
    # a slow drift (-0.5 per step) under chunk-to-chunk noise far larger than tol: the upper bound never passes
    run, _ = _fake(lambda s, lr, rng: -2e4 - 0.5 * s + 3000.0 * rng.standard_normal())
    res = run_svi(run, (0, np.random.default_rng(3)), (), num_steps=14000, **KW)
    assert not res.converged


def test_non_finite_loss_is_an_error():
    run, _ = _fake(lambda s, lr, rng: np.nan if s > 600 else 1.0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        run_svi(run, (0, np.random.default_rng(0)), (), num_steps=3000, **KW)
