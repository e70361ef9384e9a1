"""The routing simulator as one XLA kernel: lax.scan over queries, vmap over episodes and grids.

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

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from .policies import Context, Hyper, kahan_add, make_policy
from .world import World

__all__ = ["Metrics", "Trajectory", "simulate", "lower_simulate", "hyper_grid", "TRACE_COUNT",
           "EpisodeKeys", "episode_keys", "episode_order", "chunk_length"]

TRACE_COUNT = {"simulate": 0}  # incremented each time the kernel is traced (recompilation test)


class Metrics(NamedTuple):
    reward: jax.Array  # (..., E) float32 total reward
    quality: jax.Array  # (..., E) float32 total observed quality of chosen arms
    cost: jax.Array  # (..., E) float32 total normalised realised cost
    regret: jax.Array  # (..., E) float32 cumulative pseudo-regret
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


class _Acc(NamedTuple):
    sums: jax.Array  # (4,) float32 reward, quality, cost, regret
    comp: jax.Array  # (4,) float32 Kahan compensation
    choices: jax.Array  # (K,) int32
    window: jax.Array  # (W,) float32 last W instantaneous regrets
    last_above: jax.Array  # () int32


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
    fallback: jax.Array  # exact Beta sampler's fallback key (folded with the step index)
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


def _episode(hyper: Hyper, world: World, key, conv_threshold, *, policy, options, steps, chunk,
             reward_mode, trajectories, conv_window):
    pol = make_policy(policy, hyper, world, options)
    n_q, k = world.quality.shape
    k_order, k_noise, k_fb, k_rew = jax.random.split(key, 4)
    order = episode_order(k_order, n_q, steps)
    m = world.mask.astype(jnp.float32)
    qbar = jnp.sum(world.quality * m, 0) / jnp.maximum(jnp.sum(m, 0), 1.0)

    mu_all = qbar - hyper.lam * world.pred_cost - hyper.gam * world.pred_unc  # (N, K) hindsight utility
    arange_k = jnp.arange(k, dtype=jnp.int32)

    def step(carry, xs):
        pstate, acc = carry
        t, nz, u_r, row = xs
        n_row, avail, best, pred_cost, pred_unc, feats, cat, qual, cost, mu = row
        ctx = Context(t=t, avail=avail, pred_cost=pred_cost, pred_unc=pred_unc, features=feats,
                      category=cat, quality=qual, cost=cost)
        # select
        draws = pol.sample(pstate, nz, k_fb, ctx)
        arm = pol.choose(pstate, draws, ctx)
        # observe (one-hot sums instead of batched gathers)
        hot = arange_k == arm
        q, c_arm, mu_arm = jnp.sum(jnp.where(hot, jnp.stack([qual, cost, mu]), 0.0), -1)
        r = (u_r < q).astype(jnp.float32) if reward_mode == "bernoulli" else q
        inst = best - mu_arm
        # update
        pstate = pol.update(pstate, arm, r, ctx)
        sums, comp = kahan_add(acc.sums, acc.comp, jnp.stack([r, q, c_arm, inst]))
        window = jax.lax.dynamic_update_index_in_dim(acc.window, inst, t % conv_window, 0)
        mean = jnp.sum(window) / jnp.minimum(t + 1, conv_window).astype(jnp.float32)
        acc = _Acc(sums, comp, acc.choices + hot.astype(jnp.int32), window,
                   jnp.where(mean >= conv_threshold, t, acc.last_above))
        ys = (n_row, arm, r, inst, u_r, draws) if trajectories else None
        return (pstate, acc), ys

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
                world.category[idx], world.quality[idx], world.cost[idx], mu)
        xs = (ts, nz, u_r, rows)
        # index the chunk's arrays inside the step instead of scanning over them: under vmap a scanned
        # input is transposed to step-major in bulk, and XLA fuses that transpose into the noise
        # transforms (erf_inv, log), which then run strided and unvectorized
        return jax.lax.scan(lambda cr, i: step(cr, jax.tree.map(lambda x: x[i], xs)), carry,
                            jnp.arange(n, dtype=jnp.int32))

    acc0 = _Acc(jnp.zeros(4, jnp.float32), jnp.zeros(4, jnp.float32), jnp.zeros(k, jnp.int32),
                jnp.zeros(conv_window, jnp.float32), jnp.int32(-1))
    carry = (pol.init(), acc0)
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
    _, acc = carry
    s = acc.sums
    conv = acc.last_above + 1
    metrics = Metrics(s[0], s[1], s[2], s[3], acc.choices, conv, acc.last_above < steps - 1)
    traj = None
    if trajectories:
        ys = jax.tree.map(lambda *p: jnp.concatenate(p, 0), *ys_parts) if len(ys_parts) > 1 else ys_parts[0]
        traj = Trajectory(*ys)
    return metrics, traj


_STATIC = ("policy", "options", "episodes", "steps", "chunk", "reward_mode", "trajectories",
           "conv_window", "n_devices", "impl")
IMPLS = ("auto", "batched", "generic")


def _simulate_impl(world, key, hyper, conv_threshold, *, policy, options, episodes, steps, chunk,
                   reward_mode, trajectories, conv_window, n_devices, impl):
    from . import batched

    TRACE_COUNT["simulate"] += 1
    grid = hyper.lam.ndim == 1
    if impl == "batched":
        def f(h, keys):
            return batched.run_episodes(h, world, keys, conv_threshold, policy=policy, options=options,
                                        steps=steps, chunk=chunk, reward_mode=reward_mode,
                                        conv_window=conv_window), None
    else:
        ep = lambda h, kk: _episode(h, world, kk, conv_threshold, policy=policy, options=options,  # noqa: E731
                                    steps=steps, chunk=chunk, reward_mode=reward_mode,
                                    trajectories=trajectories, conv_window=conv_window)
        f = jax.vmap(ep, in_axes=(None, 0))
    if grid:
        f = jax.vmap(f, in_axes=(0, None))
    keys = jax.random.split(key, episodes)
    if n_devices == 1:
        return f(hyper, keys)
    mesh = Mesh(np.array(jax.local_devices()[:n_devices]), ("e",))
    out_spec = P(None, "e") if grid else P("e")
    return jax.shard_map(f, mesh=mesh, in_specs=(P(), P("e")), out_specs=out_spec, check_vma=False)(hyper, keys)


_simulate_jit = jax.jit(_simulate_impl, static_argnames=_STATIC)


def _prepare(world, key, hyper, policy, episodes, steps, chunk, reward, trajectories, conv_threshold,
             conv_window, options, devices, impl="auto"):
    from . import batched

    if reward not in ("observed", "bernoulli"):
        raise ValueError(f"simulate: reward must be 'observed' or 'bernoulli', got {reward!r}")
    if impl not in IMPLS:
        raise ValueError(f"simulate: impl must be one of {IMPLS}, got {impl!r}")
    fast = batched.supports(policy, dict(options), trajectories)
    if impl == "batched" and not fast:
        raise ValueError(f"simulate: impl='batched' runs the Thompson policies without "
                         f"trajectories; got policy={policy!r}, options={dict(options)}, trajectories={trajectories}")
    if impl == "auto":
        impl = "batched" if fast else "generic"
    for name, v in (("episodes", episodes), ("steps", steps), ("chunk", chunk), ("conv_window", conv_window)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"simulate: {name} must be a positive int, got {v!r}")
    if hyper.lam.ndim not in (0, 1):
        raise ValueError(f"simulate: hyper.lam must be a scalar or a 1-D grid, got shape {hyper.lam.shape}")
    k = world.quality.shape[1]
    if hyper.prior_alpha.shape[-1] != k:
        raise ValueError(f"simulate: hyper priors have {hyper.prior_alpha.shape[-1]} arms, world has {k}")
    n_local = len(jax.local_devices())
    n_dev = n_local if devices is None else int(devices)
    if not 1 <= n_dev <= n_local:
        raise ValueError(f"simulate: devices={devices} but {n_local} local devices")
    if episodes % n_dev:
        n_dev = math.gcd(episodes, n_dev)
    chunk = chunk_length(steps, chunk)
    world = World(*(jnp.asarray(a) for a in world))
    args = (world, key, hyper, jnp.float32(conv_threshold))
    static = dict(policy=policy, options=tuple(sorted(dict(options).items())), episodes=int(episodes),
                  steps=int(steps), chunk=chunk, reward_mode=reward,
                  trajectories=bool(trajectories), conv_window=int(conv_window), n_devices=n_dev, impl=impl)
    return args, static


def simulate(world: World, key: jax.Array, hyper: Hyper, *, policy: str = "thompson", episodes: int = 1,
             steps: int = 1000, chunk: int = 32, reward: str = "observed", trajectories: bool = False,
             conv_threshold: float = 0.05, conv_window: int = 50, options: tuple | dict = (),
             devices: int | None = None, threefry_partitionable: bool = False, impl: str = "auto",
             ) -> tuple[Metrics, Trajectory | None]:
    """Run `episodes` routing episodes of `steps` queries (per hyper-parameter set) in one compiled call.

    Args:
      world: World (N queries, K arms).
      key: PRNG key; episode e uses split(key, episodes)[e] (same across grid cells: common random numbers).
      hyper: Hyper of scalars, or with a leading grid axis G on every leaf (see `hyper_grid`).
      policy: a name in `policies.POLICIES`.
      episodes: E (static). steps: T (static). chunk: steps whose noise is drawn in bulk (static).
      reward: "observed" | "bernoulli".
      trajectories: also return per-step trajectories (static).
      conv_threshold: convergence threshold on the window mean of instantaneous regret (traced).
      conv_window: window length (static).
      options: static policy options, e.g. {"sampler": "gaussian", "n_candidates": 2}.
      devices: number of local devices to shard episodes over (default: all that divide E).
      threefry_partitionable: PRNG mode used while tracing (set locally, not globally). False by
        default: on this CPU it compiles ~3x faster and draws normals several times faster; episode
        keys are split per episode, so results do not depend on the device count either way.
      impl: "auto" (default), "batched" or "generic". The Thompson policies without trajectories
        run hand-batched over episodes (bandit_sim/batched.py, several times faster on
        CPU); everything else, or impl="generic", runs the step vmapped over episodes. Both give the
        same episodes (tests/test_batched.py).
    Returns:
      (Metrics with leaves (G?, E, ...), Trajectory with leaves (G?, E, T, ...) or None).
    """
    args, static = _prepare(world, key, hyper, policy, episodes, steps, chunk, reward, trajectories,
                            conv_threshold, conv_window, options, devices, impl)
    with jax.threefry_partitionable(threefry_partitionable):
        return _simulate_jit(*args, **static)


def lower_simulate(world: World, key: jax.Array, hyper: Hyper, **kw):
    """`jax.jit(...).lower(...)` of `simulate` with the same arguments (call .compile() to time compilation).

    Args:
      world, key, hyper, **kw: as for `simulate`.
    Returns:
      (jax.stages.Lowered, args) where `compiled(*args)` runs the kernel.
    """
    defaults = dict(policy="thompson", episodes=1, steps=1000, chunk=32, reward="observed", trajectories=False,
                    conv_threshold=0.05, conv_window=50, options=(), devices=None, impl="auto")
    tp = kw.pop("threefry_partitionable", False)
    defaults.update(kw)
    args, static = _prepare(world, key, hyper, **defaults)
    with jax.threefry_partitionable(tp):
        return _simulate_jit.lower(*args, **static), args
