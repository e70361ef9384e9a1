"""Linear Thompson routing hand-batched over episodes: the fast path of `simulate` for `policies.linear_thompson`.

The generic kernel vmaps the one-episode step; this module computes the same episodes, draw for draw (the same keys,
the policy's own `noise`, the same formulas), arranged for the machine:

- the step is memory-bound: every decision reads each arm's D x D covariance for x'S_k x (K*D^2 floats). So
  episodes run in blocks of `block_size` per device (``lax.map``), and a block's E_b*K*D^2 state (E_b = 32:
  1.5 MB at K = 11, D = 33; 16..64 measured within noise of each other, 1024 at once ~2x slower) stays in cache for all T steps instead of streaming E*K*D^2 floats (49 MB at
  E = 1024) from memory at every step;
- the posteriors are laid out episode-major, (E_b, K, D) means and (E_b, K, D, D) covariances, and the quadratic
  forms are batched matrix-vector products (`formulas.linear_moments`, einsum). Unlike the Beta kernel
  (`batched.py`, episodes on the minor axis), the episodes-minor layout measured ~5x slower here: XLA:CPU
  reduces the middle D axis of a (K, D, D, E) array with scalar loops;
- the chosen arm of every episode is gathered (D^2 floats) and its rank-one increment added in place with one
  scatter (`.at[e, arm].add`): K times fewer writes than a one-hot masked update of all arms;
- a chunk's rows (features, availability, predicted costs) are gathered once as (n, E_b, .) and step i reads [i].

Memory: O(E_b*K*D^2) per device for the state, O(chunk*E_b*(K + D)) for a chunk's rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bandit_sim.sim import formulas
from bandit_sim.sim.episode import Metrics, episode_order
from bandit_sim.sim.formulas import argmax_first as _argmax
from bandit_sim.sim.policies import Hyper, linear_thompson
from bandit_sim.sim.world import World

__all__ = ["SERVES", "serves", "run_episodes", "block_size", "BLOCK"]

BLOCK = 32  # episodes per block and device: the block's posteriors stay in cache (module doc)

SERVES = (linear_thompson,)
"""The policy factories this kernel computes (without trajectories)."""


def serves(policy, options: dict, trajectories: bool) -> bool:
    """Whether this path computes `policy` with `options` (else the generic vmapped kernel).

    Args:
      policy: a policy factory. options: static policy options. trajectories: full trajectories requested.
    Returns:
      bool.
    """
    return policy in SERVES and not trajectories and not dict(options)


def block_size(episodes: int, block: int | None = None) -> int:
    """Episodes per block: the largest divisor of `episodes` <= block (all of them when that is small)."""
    block = BLOCK if block is None else int(block)
    if episodes <= block:
        return episodes
    div = max(d for d in range(1, block + 1) if episodes % d == 0)
    return div if 4 * div >= block else episodes


class _State(NamedTuple):
    mean: jax.Array  # (E, K, D) float32
    cov: jax.Array  # (E, K, D, D) float32
    choices: jax.Array  # (E, K) int32
    acc: formulas.Accumulators  # trailing axis E


def _block(hyper: Hyper, world: World, keys, conv_threshold, *, steps, chunk, reward_mode, conv_window) -> Metrics:
    """Episodes of one block (keys (E,)): Metrics with leaves (E, ...)."""
    pol = linear_thompson(hyper, world)
    n_q, k = world.quality.shape
    e = keys.shape[0]
    ks = jax.vmap(lambda kk: jax.random.split(kk, 4))(keys)  # order, noise, fallback (unused), reward
    k_noise, k_rew = ks[:, 1], ks[:, 3]
    order = jax.vmap(lambda ko: episode_order(ko, n_q, steps))(ks[:, 0]).T  # (T, E)
    mu_all = formulas.hindsight_mean(world.quality, world.mask, world.pred_cost, world.pred_unc, hyper.lam,
                                     hyper.gam)
    q_flat, cost_flat, mu_flat = world.quality.reshape(-1), world.cost.reshape(-1), mu_all.reshape(-1)
    ep = jnp.arange(e, dtype=jnp.int32)

    def step(st: _State, xs):
        t, z, u, g, u_r, qi, best, avail, pc, pu, x = xs  # z, g, avail, pc, pu: (E, K); x: (E, D); the rest (E,)
        # select: the exact scalar draw of x'w_k per arm
        m, v, _ = formulas.linear_moments(x, st.mean, st.cov)
        pi, raw = formulas.linear_draw(m, v, z)
        greedy = formulas.argmax_ties_by(formulas.utility(pi, pc, pu, hyper.lam, hyper.gam, avail), raw, axis=-1)
        rand = _argmax(jnp.where(avail, g, -1.0), axis=-1)
        eps = formulas.explore_rate(t, hyper.explore_decay, hyper.min_explore)
        arm = jnp.where(u < eps, rand, greedy)
        # observe
        flat = qi * k + arm
        r, _, acc = formulas.observe(st.acc, t, q_flat[flat], cost_flat[flat], mu_flat[flat], best, u_r,
                                     conv_threshold, reward_mode=reward_mode)
        # update: gather the chosen arm of every episode, add its rank-one increment in place
        dm, dc = formulas.linear_update(st.mean[ep, arm], st.cov[ep, arm], x, r, hyper.lin_noise[arm])
        hot = jnp.arange(k, dtype=jnp.int32)[None, :] == arm[:, None]
        return _State(st.mean.at[ep, arm].add(dm), st.cov.at[ep, arm].add(dc),
                      st.choices + hot.astype(jnp.int32), acc)

    def run_chunk(st, c, n):
        nz = jax.vmap(lambda kn: pol.noise(jax.random.fold_in(kn, c), n))(k_noise)  # leaves (E, n, ...)
        if reward_mode == "bernoulli":
            u_r = jax.vmap(lambda kr: jax.random.uniform(jax.random.fold_in(kr, c), (n,)))(k_rew).T
        else:
            u_r = jnp.zeros((n, e), jnp.float32)
        ts = c * chunk + jnp.arange(n, dtype=jnp.int32)
        idx = jax.lax.dynamic_slice_in_dim(order, c * chunk, n)  # (n, E)
        avail = world.mask[idx] & (world.arrival_step <= ts[:, None, None])  # (n, E, K)
        best = jnp.max(jnp.where(avail, mu_all[idx], -jnp.inf), -1)
        xs = (ts, jnp.swapaxes(nz.z, 0, 1), nz.u.T, jnp.swapaxes(nz.g, 0, 1), u_r, idx, best, avail,
              world.pred_cost[idx], world.pred_unc[idx], world.x[idx])
        return jax.lax.scan(lambda st, i: (step(st, jax.tree.map(lambda a: a[i], xs)), None), st,
                            jnp.arange(n, dtype=jnp.int32))[0]

    mean0 = jnp.broadcast_to(hyper.lin_mean, (e,) + hyper.lin_mean.shape).astype(jnp.float32)
    cov0 = jnp.broadcast_to(hyper.lin_cov, (e,) + hyper.lin_cov.shape).astype(jnp.float32)
    st = _State(mean0, cov0, jnp.zeros((e, k), jnp.int32), formulas.init_accumulators(conv_window, (e,)))
    n_full, rem = divmod(steps, chunk)
    if n_full:
        st = jax.lax.scan(lambda st, c: (run_chunk(st, c, chunk), None), st, jnp.arange(n_full, dtype=jnp.int32))[0]
    if rem:
        st = run_chunk(st, jnp.int32(n_full), rem)
    s = st.acc.sums
    return Metrics(s[0], s[1], s[2], s[3], st.choices, *formulas.convergence(st.acc, steps))


def run_episodes(hyper: Hyper, world: World, keys, conv_threshold, *, policy, options: dict, steps: int, chunk: int,
                 reward_mode: str, conv_window: int, block: int | None = None) -> Metrics:
    """Metrics of the episodes with the given per-episode keys, blocks of episodes in sequence.

    Args:
      hyper: Hyper of one grid cell. world: World. keys: (E,) episode keys (split(key, episodes) of `simulate`).
      conv_threshold: traced threshold. policy: `linear_thompson`. options: static (none).
      steps, chunk, reward_mode, conv_window: as `simulate`. block: episodes per block (default BLOCK).
    Returns:
      Metrics with leaves (E, ...).
    """
    kw = dict(steps=steps, chunk=chunk, reward_mode=reward_mode, conv_window=conv_window)
    e = keys.shape[0]
    b = block_size(e, block)
    if b == e:
        return _block(hyper, world, keys, conv_threshold, **kw)
    out = jax.lax.map(lambda kb: _block(hyper, world, kb, conv_threshold, **kw), keys.reshape(e // b, b))
    return jax.tree.map(lambda a: a.reshape(e, *a.shape[2:]), out)
