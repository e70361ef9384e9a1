"""The SVI optimisation loop shared by the token fit (`fit.py`) and the quality fit (`quality.py`).

Learning rate, per step (computed on the host and handed to the compiled chunk as an array, so no schedule is baked
into the compiled step and a change of step budget does not recompile):

* warm-up: linear from 0 to ``peak_lr`` over ``warmup`` steps;
* constant: ``peak_lr`` until the loss has stopped falling, or until the budget ``num_steps`` less the decay is spent;
* decay: cosine from ``peak_lr`` to ``0.02 * peak_lr`` over ``decay_steps`` steps (it settles the jitter that a
  constant rate leaves in the iterate; the fit's parameters are those at its end).

Convergence is judged in the constant phase only. Under a decaying rate a flat loss says the steps have become too
small to move, not that the optimum is reached (the old check fired at step 2000 of 2500 under a cosine schedule
whose rate was already a fifth of its peak). At a constant rate the loss is the optimum's value plus stationary
noise once it has converged, so the check is a one-sided test of a trend: a least-squares line through the chunk
mean losses of the last ``2 * window`` steps, and the *upper* 95% bound of the decrease it implies per ``window``
steps (slope plus two standard errors) must be below ``tol * |mean loss|``, at two successive chunk boundaries,
after at least ``min_steps`` steps. The bound makes noise count against convergence: a noisy loss whose trend cannot
be told from zero has not been shown to be flat (RouterBench's token fit, whose likelihood has no maximum on its
tied 1- and 2-token answers, drifts by thousands under chunk-to-chunk noise of +-2000 and never passes; a plain
difference of two window means passed it by chance). A fit that spends its budget without passing reports
``converged = False``; every consumer records that flag (``meta["converged"]``, also ``meta["svi_converged"]``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import optax

__all__ = ["adam", "make_run_chunk", "run_svi", "LoopResult", "lr_schedule_chunk", "decrease_bound"]

END_FACTOR = 0.02  # the decay ends at END_FACTOR * peak_lr
PATIENCE = 2  # successive passing checks needed


def adam(clip_norm: float = 100.0) -> optax.GradientTransformation:
    """Adam behind a global-norm clip, its learning rate a state entry (`set_lr`) instead of a baked schedule."""
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.inject_hyperparams(optax.adam)(learning_rate=0.0))


def _set_lr(svi_state, lr):
    """The SVI state with the Adam learning rate set to `lr` (numpyro's optax state: (i, (params, opt_state)))."""
    i, (params, (clip_state, inject)) = svi_state.optim_state
    inject = inject._replace(hyperparams={**inject.hyperparams, "learning_rate": lr})
    return svi_state._replace(optim_state=(i, (params, (clip_state, inject))))


def make_run_chunk(svi) -> Callable:
    """Jitted (state, data tuple, lrs (chunk,)) -> (state, losses (chunk,)): one `lax.scan` of SVI steps."""

    @jax.jit
    def run_chunk(state, data, lrs):
        def body(s, lr):
            return svi.update(_set_lr(s, lr), *data)

        return jax.lax.scan(body, state, lrs)

    return run_chunk


def lr_schedule_chunk(start: int, chunk: int, peak_lr: float, warmup: int) -> np.ndarray:
    """Learning rates of steps [start, start + chunk) in the warm-up / constant phase: (chunk,) float32."""
    t = np.arange(start, start + chunk, dtype=np.float64) + 1.0
    return (peak_lr * np.minimum(t / max(warmup, 1), 1.0)).astype(np.float32)


def _decay(n: int, peak_lr: float) -> np.ndarray:
    frac = (np.arange(n, dtype=np.float64) + 1.0) / n
    return (peak_lr * (END_FACTOR + (1.0 - END_FACTOR) * 0.5 * (1.0 + np.cos(np.pi * frac)))).astype(np.float32)


class LoopResult(NamedTuple):
    state: Any  # final SVI state
    losses: np.ndarray  # (steps,) float32 loss trace
    converged: bool  # the constant-rate check passed before the budget ran out
    constant_steps: int  # steps before the decay (warm-up and constant phase)
    decay_steps: int
    rel_decrease: float | None  # the last check's upper bound of the relative decrease per window (None: no check)


def decrease_bound(chunk_means: np.ndarray, w: int) -> float:
    """Upper 95% bound of the decrease per `w` chunks of a least-squares line through `chunk_means` (>= 3 values)."""
    y = np.asarray(chunk_means, np.float64)
    t = np.arange(y.size) - (y.size - 1) / 2.0
    b = float(np.sum(t * (y - y.mean())) / np.sum(t * t))
    resid = y - y.mean() - b * t
    se = float(np.sqrt(np.sum(resid**2) / (y.size - 2) / np.sum(t * t)))
    return (-b + 2.0 * se) * w


def run_svi(run_chunk: Callable, state, data: tuple, *, num_steps: int, chunk: int, peak_lr: float, warmup: int,
            decay_steps: int, window: int, tol: float, min_steps: int,
            on_chunk: Callable[[int, float], None] | None = None, what: str = "SVI") -> LoopResult:
    """Run SVI chunk by chunk: warm-up, constant rate until converged or out of budget, then the decay.

    Args:
      run_chunk: from `make_run_chunk`. state: initial SVI state. data: the model's arguments.
      num_steps: budget (warm-up + constant + decay). chunk: steps per compiled call (one host sync each).
      peak_lr, warmup: the rate and its warm-up length. decay_steps: decay length (rounded up to whole chunks, at
        most a quarter of the budget). window: steps per window of the convergence check (whole chunks, >= 1).
      tol: relative decrease per window that the loss's upper bound must stay below. min_steps: no check before.
      on_chunk: optional callback (steps done, mean loss of the chunk) after every chunk (progress bars).
      what: name in the error message.
    Returns:
      LoopResult.
    Raises:
      FloatingPointError: the loss became non-finite.
    """
    n_chunks = max(1, math.ceil(num_steps / chunk))
    decay_chunks = min(max(1, math.ceil(decay_steps / chunk)), max(1, n_chunks // 4)) if decay_steps > 0 else 0
    w = max(1, math.ceil(window / chunk))  # window in chunks
    first_const = math.ceil(warmup / chunk)  # first chunk entirely at the constant rate
    losses: list[np.ndarray] = []
    means: list[float] = []
    converged, passes, rel = False, 0, None

    def step(lrs, i):
        nonlocal state
        state, chunk_losses = run_chunk(state, data, jax.numpy.asarray(lrs))
        chunk_losses = np.asarray(chunk_losses)  # one host sync per chunk
        if not np.all(np.isfinite(chunk_losses)):
            raise FloatingPointError(f"{what}: loss became non-finite in chunk {i} (try a smaller peak_lr)")
        losses.append(chunk_losses)
        means.append(float(chunk_losses.mean()))
        if on_chunk is not None:
            on_chunk(len(losses) * chunk, means[-1])

    i = 0
    while i < n_chunks - decay_chunks:
        step(lr_schedule_chunk(i * chunk, chunk, peak_lr, warmup), i)
        i += 1
        if i - first_const >= 2 * w and i * chunk >= min_steps:
            rel = decrease_bound(means[-2 * w:], w) / max(abs(float(np.mean(means[-w:]))), 1e-8)
            passes = passes + 1 if rel < tol else 0
            if passes >= PATIENCE:
                converged = True
                break
    constant_steps = i * chunk
    lrs = _decay(decay_chunks * chunk, peak_lr)
    for j in range(decay_chunks):
        step(lrs[j * chunk:(j + 1) * chunk], i + j)
    return LoopResult(state, np.concatenate(losses).astype(np.float32), converged, constant_steps,
                      decay_chunks * chunk, rel)
