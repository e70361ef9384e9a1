"""What every path of the simulator shares about an episode: its keys, its query order, its outputs.

- `episode_keys(key, episodes, e)`: the keys episode e of `simulate(world, key, episodes=E)` uses (the live
  router reuses them to replay an episode);
- `episode_order`: concatenated random permutations of the world's N queries, cut to T steps;
- `chunk_length`: the chunk of steps whose policy noise is drawn in bulk;
- `Metrics` and `Trajectory`: what the kernels return; `hyper_grid`: a grid of hyper-parameters.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bandit_sim.sim.policies import Hyper

__all__ = ["Metrics", "Trajectory", "EpisodeKeys", "episode_keys", "episode_order", "chunk_length", "hyper_grid"]


class Metrics(NamedTuple):
    reward: jax.Array  # (..., E) float32 total reward
    quality: jax.Array  # (..., E) float32 total observed quality of chosen arms
    cost: jax.Array  # (..., E) float32 total normalised realised cost
    regret: jax.Array  # (..., E) float32 cumulative pseudo-regret: against the best available arm by its mean
    # quality over the World minus its cost terms (formulas.hindsight_mean), not the per-query oracle; the
    # experiments compute the named regrets (per-query oracle, best fixed model) in experiments.metrics
    choices: jax.Array  # (..., E, K) int32 pulls per arm
    convergence: jax.Array  # (..., E) int32 convergence time (steps)
    converged: jax.Array  # (..., E) bool


class Trajectory(NamedTuple):
    query: jax.Array  # (..., E, T) int32 world row of each step
    arm: jax.Array  # (..., E, T) int32
    reward: jax.Array  # (..., E, T) float32
    regret: jax.Array  # (..., E, T) float32 instantaneous regret
    u_reward: jax.Array  # (..., E, T) float32 Bernoulli reward uniforms
    draws: Any  # policy draws, leaves (..., E, T, ...)


def hyper_grid(base: Hyper, **axes) -> Hyper:
    """Outer product grid of hyper-parameters, flattened to a leading axis G.

    Args:
      base: Hyper of scalars / (K,) priors.
      **axes: field name -> 1-D values, e.g. lam=[0, .1], gam=[0, .25] (G = 4, lam varies slowest).
    Returns:
      Hyper whose every leaf has a leading axis G.
    """
    bad = set(axes) - set(Hyper._fields)
    if bad:
        raise ValueError(f"hyper_grid: unknown fields {sorted(bad)}")
    vals = [np.asarray(v, np.float32).reshape(-1) for v in axes.values()]
    mesh = np.meshgrid(*vals, indexing="ij") if vals else []
    g = int(np.prod([len(v) for v in vals])) if vals else 1
    flat = dict(zip(axes, (m.reshape(-1) for m in mesh)))
    out = {}
    for name in Hyper._fields:
        leaf = jnp.asarray(getattr(base, name), jnp.float32)
        out[name] = jnp.asarray(flat[name]) if name in flat else jnp.broadcast_to(leaf, (g, *leaf.shape))
    return Hyper(**out)


class EpisodeKeys(NamedTuple):
    """The keys of one episode, named by purpose (the router reuses them to replay an episode)."""

    order: jax.Array  # query order (`episode_order`)
    noise: jax.Array  # policy noise of chunk c: pol.noise(fold_in(noise, c), chunk)
    fallback: jax.Array  # the key `sample` gets at step t is fold_in(fallback, t) (unused by today's policies)
    reward: jax.Array  # Bernoulli reward uniforms of chunk c: fold_in(reward, c)


def episode_keys(key: jax.Array, episodes: int = 1, episode: int = 0) -> EpisodeKeys:
    """The keys episode `episode` of `simulate(world, key, ..., episodes=episodes)` uses.

    Call under ``jax.threefry_partitionable(False)`` (simulate's default) to get the same keys.

    Args:
      key: the key given to `simulate`.
      episodes: E given to `simulate`.
      episode: e in [0, E).
    Returns:
      EpisodeKeys.
    """
    return EpisodeKeys(*jax.random.split(jax.random.split(key, episodes)[episode], 4))


def episode_order(k_order: jax.Array, n_queries: int, steps: int) -> jax.Array:
    """Query order of an episode: concatenated random permutations of the N queries, cut to T steps.

    Args:
      k_order: EpisodeKeys.order.
      n_queries: N (static). steps: T (static).
    Returns:
      (T,) int32 world rows.
    """
    n_perm = math.ceil(steps / n_queries)
    order = jax.vmap(lambda kk: _permutation(kk, n_queries))(jax.random.split(k_order, n_perm))
    return order.reshape(-1)[:steps].astype(jnp.int32)


def _permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly random permutation of range(n), via single-operand sorts of packed uint32 words.

    Each round sorts (random bits << b) | position (b = bits of n - 1) and applies the order: a plain
    uint32 sort runs ~6x faster on XLA:CPU than jax.random.permutation's key/value sort. Two
    positions only keep their relative order if their 32 - b random bits tie, and then the other
    round still shuffles them, as jax.random.permutation does with its rounds.
    """
    b = max(1, (n - 1).bit_length())
    if b > 16:
        return jax.random.permutation(key, n)
    mask = jnp.uint32((1 << b) - 1)
    perm = jnp.arange(n, dtype=jnp.int32)
    for kr in jax.random.split(key, 2):
        packed = (jax.random.bits(kr, (n,), jnp.uint32) << jnp.uint32(b)) | jnp.arange(n, dtype=jnp.uint32)
        perm = perm[(jnp.sort(packed) & mask).astype(jnp.int32)]
    return perm


def chunk_length(steps: int, chunk: int) -> int:
    """The chunk length `simulate` uses for T steps when asked for `chunk` (a divisor of T when one is close).

    Args:
      steps: T. chunk: requested chunk.
    Returns:
      int, the effective chunk (per-step noise of step t is row t % chunk of chunk t // chunk).
    """
    chunk = min(int(chunk), int(steps))
    # prefer a chunk that divides T: a remainder chunk would duplicate the step body (compile time)
    div = max(d for d in range(1, chunk + 1) if steps % d == 0)
    return div if 2 * div >= chunk else chunk
