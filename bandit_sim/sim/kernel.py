"""The generic kernel: one episode as a lax.scan over queries, vmapped over episodes (every policy).

Nesting (gymnax/purejaxrl style): ``run_episode`` is a scan over chunks of steps, each chunk drawing
the policy's state-independent noise in bulk and scanning its steps; ``vmap`` over episode keys;
``vmap`` over a grid of hyper-parameters (a leading axis on every Hyper leaf); the episode axis
sharded over all local devices with ``shard_map`` on a 1-D mesh; one ``jit`` outside.

Each episode gets its own query order (concatenated random permutations of the world's N queries, so
T may exceed N) and its own reward draws. Reward: ``"observed"`` is the observed quality of the
chosen model (full-information data); ``"bernoulli"`` draws 1[u < quality] (quality read as a
success probability).

Metrics (accumulated in the scan carry, O(E*K) memory; Kahan-compensated float32 sums):
- reward, quality, cost (normalised realised cost) totals;
- regret: cumulative pseudo-regret against the best policy in hindsight under the same utility, i.e.
  the policy that knows every arm's true mean quality qbar_i (mean over the world's queries) and picks
  argmax_i mu_i(x) = qbar_i - lam*pred_cost_i(x) - gam*pred_unc_i(x) among available arms:
  r_t = max_i mu_i(x_t) - mu_{a_t}(x_t) >= 0 (contextual policies may beat it: r_t then still uses it);
- choices per arm;
- convergence: with w = `conv_window` (50) and m_t the mean of r over steps max(0, t-w+1) .. t, the
  convergence time is 1 + the last t with m_t >= conv_threshold (0 if none); `converged` is False when
  the last step itself is above the threshold (then convergence == T).
Full trajectories (query, arm, reward, regret and the policy's draws per step) only when
``trajectories=True`` (static).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bandit_sim.sim import formulas
from bandit_sim.sim.episode import Metrics, Trajectory, episode_order
from bandit_sim.sim.policies import Context, Hyper
from bandit_sim.sim.world import World

__all__ = ["run_episodes"]


def _episode(hyper: Hyper, world: World, key, conv_threshold, *, policy, options, steps, chunk,
             reward_mode, trajectories, conv_window):
    pol = policy(hyper, world, **dict(options))
    n_q, k = world.quality.shape
    k_order, k_noise, k_fb, k_rew = jax.random.split(key, 4)
    order = episode_order(k_order, n_q, steps)
    mu_all = formulas.hindsight_mean(world.quality, world.mask, world.pred_cost, world.pred_unc, hyper.lam,
                                     hyper.gam)  # (N, K)
    arange_k = jnp.arange(k, dtype=jnp.int32)

    def step(carry, xs):
        pstate, acc, choices = carry
        t, nz, u_r, row = xs
        n_row, avail, best, pred_cost, pred_unc, feats, cat, qual, cost, mu, x = row
        ctx = Context(t=t, avail=avail, pred_cost=pred_cost, pred_unc=pred_unc, features=feats,
                      category=cat, quality=qual, cost=cost, x=x)
        # select
        draws = pol.sample(pstate, nz, jax.random.fold_in(k_fb, t), ctx)  # a fresh key per step
        arm = pol.choose(pstate, draws, ctx)
        # observe (one-hot sums instead of batched gathers)
        hot = arange_k == arm
        q, c_arm, mu_arm = jnp.sum(jnp.where(hot, jnp.stack([qual, cost, mu]), 0.0), -1)
        r, inst, acc = formulas.observe(acc, t, q, c_arm, mu_arm, best, u_r, conv_threshold, reward_mode=reward_mode)
        # update
        pstate = pol.update(pstate, arm, r, ctx)
        ys = ((n_row, arm) if trajectories == "arms" else (n_row, arm, r, inst, u_r, draws)) if trajectories else None
        return (pstate, acc, choices + hot.astype(jnp.int32)), ys

    def run_chunk(carry, c, n):
        kc = jax.random.fold_in(k_noise, c)
        nz = pol.noise(kc, n)
        u_r = (jax.random.uniform(jax.random.fold_in(k_rew, c), (n,)) if reward_mode == "bernoulli"
               else jnp.zeros((n,), jnp.float32))
        ts = c * chunk + jnp.arange(n, dtype=jnp.int32)
        # the chunk's world rows, availability and best hindsight utility, in bulk outside the
        # sequential dependency
        idx = jax.lax.dynamic_slice_in_dim(order, c * chunk, n)
        avail = world.mask[idx] & (world.arrival_step <= ts[:, None])
        mu = mu_all[idx]
        best = jnp.max(jnp.where(avail, mu, -jnp.inf), -1)
        rows = (idx, avail, best, world.pred_cost[idx], world.pred_unc[idx], world.features[idx],
                world.category[idx], world.quality[idx], world.cost[idx], mu, world.x[idx])
        xs = (ts, nz, u_r, rows)
        # index the chunk's arrays inside the step instead of scanning over them: under vmap a scanned
        # input is transposed to step-major in bulk, and XLA fuses that transpose into the noise
        # transforms (erf_inv, log), which then run strided and unvectorized
        return jax.lax.scan(lambda cr, i: step(cr, jax.tree.map(lambda x: x[i], xs)), carry,
                            jnp.arange(n, dtype=jnp.int32))

    carry = (pol.init(), formulas.init_accumulators(conv_window), jnp.zeros(k, jnp.int32))
    n_full, rem = divmod(steps, chunk)
    ys_parts = []
    if n_full:
        carry, ys = jax.lax.scan(lambda cr, c: run_chunk(cr, c, chunk), carry, jnp.arange(n_full, dtype=jnp.int32))
        if trajectories:
            ys_parts.append(jax.tree.map(lambda y: y.reshape(n_full * chunk, *y.shape[2:]), ys))
    if rem:
        carry, ys = run_chunk(carry, jnp.int32(n_full), rem)
        if trajectories:
            ys_parts.append(ys)
    _, acc, choices = carry
    s = acc.sums
    metrics = Metrics(s[0], s[1], s[2], s[3], choices, *formulas.convergence(acc, steps))
    traj = None
    if trajectories:
        ys = jax.tree.map(lambda *p: jnp.concatenate(p, 0), *ys_parts) if len(ys_parts) > 1 else ys_parts[0]
        traj = Trajectory(*ys) if trajectories != "arms" else Trajectory(ys[0], ys[1], None, None, None, None)
    return metrics, traj


def run_episodes(hyper: Hyper, world: World, keys, conv_threshold, *, policy, options, steps, chunk, reward_mode,
                 trajectories, conv_window):
    """Metrics (and trajectories) of the episodes with the given keys: the one-episode step vmapped over keys.

    Args:
      hyper: Hyper of one grid cell. world: World. keys: (E,) episode keys.
      conv_threshold: traced threshold. policy: a policy factory. options: static options (sorted pairs).
      steps, chunk, reward_mode, trajectories, conv_window: as `simulate`.
    Returns:
      (Metrics with leaves (E, ...), Trajectory with leaves (E, T, ...) or None).
    """
    ep = lambda kk: _episode(hyper, world, kk, conv_threshold, policy=policy, options=options,  # noqa: E731
                             steps=steps, chunk=chunk, reward_mode=reward_mode, trajectories=trajectories,
                             conv_window=conv_window)
    return jax.vmap(ep)(keys)
