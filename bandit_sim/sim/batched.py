"""Thompson routing hand-batched over episodes: the fast path of `kernel.simulate`.

`kernel.simulate` vmaps a one-episode step over episodes; that is general (every policy, full
trajectories) but leaves the layout to XLA, which puts the K arms on the minor axis and, on XLA:CPU,
recomputes cheap-looking producers (the counter-based hashes of the exact Beta sampler) inside each
consumer. This module computes the same episodes, draw for draw, for the two Thompson policies
(exact sampler, or the explicit Gaussian option), written for the machine:

- every per-step array is (K, E_block) with the episodes on the minor, contiguous axis, so each
  elementwise pass (hash, inverse-CDF normal, Marsaglia-Tsang test) is one vectorized loop and the
  reductions over arms (argmax, one-hot reads) are elementwise across rows;
- the gammas X and Y of each Beta are one stacked (2, K, E) array: one proposal pass and one
  combine pass for both (half the large fusions to compile), and the stack is on the major axis;
- a rejected proposal is encoded as NaN in the one output of the proposal pass, so the hash is not
  computed once for "accepted?" and again for "value";
- the few rejected lanes (at most 2 in 100 for shapes >= 1, fewer as shapes grow; up to 5 in 100 for shapes
  near 0; shapes below 4 are boosted) continue in a loop that, per
  iteration, takes the first rejected arm of every episode: O(E) work per iteration instead of
  O(K E); the loop carries those rows, so an iteration reduces over the arms once;
- on CPU, values read by several consumers are materialised behind a ``lax.cond`` on a predicate XLA
  cannot fold (`_keep`), so they are computed once (``optimization_barrier`` is stripped on XLA:CPU);
  the Beta draws themselves are not (they fuse into the utility, their one consumer);
- a chunk's rows are gathered once as (K, n, E) and step i reads [:, i]; the chosen arm's quality,
  cost and mu are read per step as (E,);
- episodes are run in blocks of `block_size` per device (``lax.map``), so a block's working set
  stays in cache.

Same numbers as the generic path: the same keys, seeds, proposal streams (proposal j of lane i is
``threefry2x32(seed, (i, j))``, tried in order until one is accepted, see sampling.py), the same
utility, exploration schedule, updates and metrics, in the same float32 operations
(tests/test_batched.py checks choices, rewards and convergence against the generic path).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from bandit_sim.sim import formulas, sampling
from bandit_sim.sim.episode import Metrics, episode_order
from bandit_sim.sim.formulas import argmax_first as _argmax
from bandit_sim.sim.formulas import kahan_add
from bandit_sim.sim.policies import _COIN_STREAM, _GAUSS_STREAM, Hyper, contextual_thompson, thompson
from bandit_sim.sim.world import World

__all__ = ["SERVES", "serves", "run_episodes", "block_size"]

BLOCK = 256  # episodes per block and device (best of 64..512 on a 2-core x86 CPU at K = 11)


SERVES = (thompson, contextual_thompson)
"""The policy factories this kernel computes (without trajectories); every other one runs in `kernel`."""


def serves(policy, options: dict, trajectories) -> bool:
    """Whether the batched path computes `policy` with `options` (else the generic vmapped kernel).

    Args:
      policy: a policy factory. options: static policy options. trajectories: False, "arms" (the query and arm
        of every step: served here) or True (full trajectories with the policy's draws: the generic kernel).
    Returns:
      bool.
    """
    return (policy in SERVES and trajectories in (False, "arms")
            and dict(options).get("sampler", "exact") in ("exact", "gaussian"))


def block_size(episodes: int, block: int | None = None) -> int:
    """Episodes per block: the largest divisor of `episodes` <= block (all of them when that is small).

    Args:
      episodes: episodes on one device. block: the preferred block (default BLOCK).
    Returns:
      int dividing `episodes`.
    """
    block = BLOCK if block is None else int(block)
    if episodes <= block:
        return episodes
    div = max(d for d in range(1, block + 1) if episodes % d == 0)
    return div if 4 * div >= block else episodes  # e.g. a prime E: one block, not E blocks of 1


def _keep(token, x):
    """x, computed once and stored, where the backend would otherwise recompute it per consumer.

    On CPU a conditional on ``token >= 0`` (always true, but XLA cannot prove it for a loop-carried
    step counter) is a fusion boundary; other backends get x unchanged.
    """
    def cpu(token, x):
        return jax.lax.cond(token >= 0, lambda v: v, lambda v: jax.tree.map(jnp.zeros_like, v), x)

    return jax.lax.platform_dependent(token, x, cpu=cpu, default=lambda token, x: x)


def _mt_nan(d, c, x, log_u):
    """Marsaglia-Tsang proposal (sampling._mt_candidate): log v where accepted, NaN where rejected."""
    accept, log_v = sampling._mt_candidate(d, c, x, log_u)
    return jnp.where(accept, log_v, jnp.nan)


def _log_gammas(t, shapes, lanes, s0, s1):
    """Exact log Gamma(shape) for a stack of (K, E) lane arrays, as sampling.log_gamma_from_noise.

    Same stream as the generic sampler: proposal j of lane i is threefry2x32(seed, (i, j)), tried in
    order until one is accepted; the boost uniform is threefry2x32(seed, (i, BOOST_STREAM)).

    Args:
      t: () int32 step (the `_keep` token).
      shapes: (M, K, E) float32 gamma shapes (M = 2: the X and Y of a Beta).
      lanes: (M, K, 1) uint32 lane ids of each array in the seed's stream, consecutive along K (lanes[m, r] =
        lanes[m, 0] + r: the fallback loop derives a row's lane from the row).
      s0, s1: (E,) uint32 seed words of the step.
    Returns:
      (M, K, E) float32 log gamma draws.
    """
    k = shapes.shape[1]
    rows = jnp.arange(k, dtype=jnp.int32)[None, :, None]
    boosted, d = sampling._mt_d(shapes)

    def proposal(d, lane, j):
        y0, y1 = sampling.threefry2x32(s0, s1, lane, j)
        return _mt_nan(d, jax.lax.rsqrt(9.0 * d), sampling.normal_from_bits(y0), sampling.log_uniform_from_bits(y1))

    finite = jnp.isfinite(d)  # a non-finite shape never accepts: its draw stays NaN (sampling.log_gamma_from_noise)

    def first_rejected(val):  # (M, E) row of the first rejected arm of every episode, k when none
        return jnp.min(jnp.where(jnp.isnan(val) & finite, rows, k), 1)

    def next_proposal(carry):
        # the first rejected arm of every episode (in each array) tries its next proposal; j counts the
        # proposals of that arm (it stays first until accepted, then the next rejected arm starts at 1)
        val, j, first = carry
        sel = rows == first[:, None]
        v = _keep(t, proposal(sampling._mt_d(jnp.sum(jnp.where(sel, shapes, 0.0), 1))[1],
                              first.astype(jnp.uint32) + lanes[:, 0], j))
        val = jnp.where(sel, v[:, None], val)
        return val, jnp.where(jnp.isnan(v), j + jnp.uint32(1), jnp.uint32(1)), first_rejected(val)

    val = _keep(t, proposal(d, lanes, jnp.uint32(0)))
    carry = (val, jnp.ones(first_rejected(val).shape, jnp.uint32), first_rejected(val))
    val = jax.lax.while_loop(lambda c: jnp.any(c[2] < k), next_proposal, carry)[0]
    b0, _ = sampling.threefry2x32(s0, s1, lanes, jnp.uint32(sampling.BOOST_STREAM))
    return jnp.log(d) + val + jnp.where(boosted, sampling.log_uniform_from_bits(b0) / shapes, 0.0)


class _State(NamedTuple):
    n: jax.Array  # (C, K, E) int32 pulls
    s: jax.Array  # (C, K, E) float32 reward sums
    s_comp: jax.Array  # (C, K, E) Kahan compensation
    prior_a: jax.Array  # (C, K, E) prior alpha (family transfer applied at arrival)
    prior_b: jax.Array  # (C, K, E)
    acc: formulas.Accumulators  # totals, convergence window (trailing axis E)


def _block(hyper: Hyper, world: World, keys, conv_threshold, *, contextual, n_categories, gaussian, steps,
           chunk, reward_mode, conv_window, record=False):
    """Episodes of one block (keys (E,)): Metrics with leaves (E, ...), and with `record` the (query, arm) of every
    step, each (E, T)."""
    n_q, k = world.quality.shape
    e = keys.shape[0]
    n_rows = n_categories if contextual else 1
    ks = jax.vmap(lambda kk: jax.random.split(kk, 4))(keys)  # order, noise, fallback (unused), reward
    k_order, k_noise, k_rew = ks[:, 0], ks[:, 1], ks[:, 3]
    order = jax.vmap(lambda ko: episode_order(ko, n_q, steps))(k_order).T  # (T, E)
    mu_all = formulas.hindsight_mean(world.quality, world.mask, world.pred_cost, world.pred_unc, hyper.lam,
                                     hyper.gam)
    cols = dict(mask=world.mask.T, pc=world.pred_cost.T, pu=world.pred_unc.T, mu=mu_all.T)  # (K, N): a
    # chunk's rows are gathered as (K, n, E); the chosen arm's quality, cost and mu are read per step (E,)
    q_flat, cost_flat, mu_flat = world.quality.reshape(-1), world.cost.reshape(-1), mu_all.reshape(-1)
    lanes_x = jnp.arange(k, dtype=jnp.uint32)[:, None]
    lanes_xy = jnp.stack([lanes_x, lanes_x + jnp.uint32(k)])  # (2, K, 1)
    lanes_g = lanes_x + jnp.uint32(1)
    rows = jnp.arange(k, dtype=jnp.int32)[:, None]
    cat_rows = jnp.arange(n_rows, dtype=jnp.int32)[:, None, None]

    def step(st: _State, x):
        t, s0, s1, u_r, cat, qi, best, avail, pc, pu = x
        s0, s1 = _keep(t, (s0, s1))
        if contextual:
            hot_c = cat_rows == cat[None, None]  # (C, 1, E)
            row = lambda a: jnp.sum(jnp.where(hot_c, a, jnp.zeros((), a.dtype)), 0)  # noqa: E731
        else:
            row = lambda a: a[0]  # noqa: E731
        n = row(st.n).astype(jnp.float32)
        s = row(st.s)
        a = row(st.prior_a) + s
        b = row(st.prior_b) + jnp.maximum(n - s, 0.0)
        if gaussian:  # the explicit, not exact, option (policies.thompson)
            z = sampling.normal_from_bits(sampling.threefry2x32(s0, s1, lanes_x, jnp.uint32(_GAUSS_STREAM))[0])
            pi = _keep(t, sampling.beta_gaussian(z, a, b))
        else:
            gx, gy = _log_gammas(t, jnp.stack([a, b]), lanes_xy, s0, s1)
            pi = jax.nn.sigmoid(gx - gy)
        u = sampling.uniform_from_bits(sampling.threefry2x32(s0, s1, jnp.uint32(0), jnp.uint32(_COIN_STREAM))[0])
        g = sampling.uniform_from_bits(sampling.threefry2x32(s0, s1, lanes_g, jnp.uint32(_COIN_STREAM))[0])
        util = _keep(t, formulas.utility(pi, pc, pu, hyper.lam, hyper.gam, avail))
        greedy = _argmax(util, axis=0)
        rand = _argmax(jnp.where(avail, _keep(t, g), -1.0), axis=0)
        eps = formulas.explore_rate(t, hyper.explore_decay, hyper.min_explore)
        arm = _keep(t, jnp.where(u < eps, rand, greedy))
        hot = rows == arm[None]  # (K, E)
        flat = qi * k + arm
        q, c_arm, mu_arm = q_flat[flat], cost_flat[flat], mu_flat[flat]
        r, _, acc = formulas.observe(st.acc, t, q, c_arm, mu_arm, best, u_r, conv_threshold, reward_mode=reward_mode)
        hot3 = hot[None] & hot_c if contextual else hot[None]
        s_new, c_new = kahan_add(st.s, st.s_comp, r[None, None])
        st = st._replace(n=st.n + hot3.astype(jnp.int32), s=jnp.where(hot3, s_new, st.s),
                         s_comp=jnp.where(hot3, c_new, st.s_comp), acc=acc)
        arriving = (world.arrival_step == t + 1) & (t + 1 > 0)
        st = jax.lax.cond(jnp.any(arriving), lambda st: _family_prior(st, t, arriving), lambda st: st, st)
        return st, (arm if record else None)

    def _family_prior(st: _State, t, arriving):
        # arms arriving at t + 1 get the family's mean reward so far (as policies._beta_update)
        pa, pb = formulas.family_prior(st.prior_a, st.prior_b, hyper.prior_alpha.reshape(-1, k)[..., None],
                                       hyper.prior_beta.reshape(-1, k)[..., None], st.n.sum(0).astype(jnp.float32),
                                       st.s.sum(0), formulas.donor_weights(world.family, world.arrival_step, t),
                                       hyper.family_strength, arriving)
        return st._replace(prior_a=pa, prior_b=pb)

    def run_chunk(st, c, n):
        seeds = jax.vmap(lambda kn: sampling.noise_seeds(jax.random.fold_in(kn, c), (n,)))(k_noise)  # (E, n, 2)
        if reward_mode == "bernoulli":
            u_r = jax.vmap(lambda kr: jax.random.uniform(jax.random.fold_in(kr, c), (n,)))(k_rew).T
        else:
            u_r = jnp.zeros((n, e), jnp.float32)
        ts = c * chunk + jnp.arange(n, dtype=jnp.int32)
        idx = jax.lax.dynamic_slice_in_dim(order, c * chunk, n)  # (n, E)
        take = lambda a: jnp.take(a, idx, axis=1)  # noqa: E731  (K, n, E): step i reads [:, i]
        avail = take(cols["mask"]) & (world.arrival_step[:, None, None] <= ts[None, :, None])
        mu = take(cols["mu"])
        best = jnp.max(jnp.where(avail, mu, -jnp.inf), 0)
        xs = (ts, seeds[:, :, 0].T, seeds[:, :, 1].T, u_r, world.category[idx], idx, best)
        per_arm = (avail, take(cols["pc"]), take(cols["pu"]))
        return jax.lax.scan(lambda st, i: step(st, jax.tree.map(lambda a: a[i], xs)
                                               + jax.tree.map(lambda a: a[:, i], per_arm)), st,
                            jnp.arange(n, dtype=jnp.int32))  # (state, arms (n, E) or None)

    def prior(p):
        return jnp.broadcast_to(jnp.asarray(p, jnp.float32).reshape(-1, k)[..., None], (n_rows, k, e))

    z = jnp.zeros((n_rows, k, e), jnp.float32)
    st = _State(jnp.zeros((n_rows, k, e), jnp.int32), z, z, prior(hyper.prior_alpha), prior(hyper.prior_beta),
                formulas.init_accumulators(conv_window, (e,)))
    n_full, rem = divmod(steps, chunk)
    arms = []
    if n_full:
        st, ys = jax.lax.scan(lambda st, c: run_chunk(st, c, chunk), st, jnp.arange(n_full, dtype=jnp.int32))
        if record:
            arms.append(ys.reshape(n_full * chunk, e))
    if rem:
        st, ys = run_chunk(st, jnp.int32(n_full), rem)
        if record:
            arms.append(ys)
    s = st.acc.sums
    metrics = Metrics(s[0], s[1], s[2], s[3], st.n.sum(0).T, *formulas.convergence(st.acc, steps))
    if not record:
        return metrics
    return metrics, (order.T, jnp.concatenate(arms, 0).T if len(arms) > 1 else arms[0].T)


def run_episodes(hyper: Hyper, world: World, keys, conv_threshold, *, policy: str, options: dict, steps: int,
                 chunk: int, reward_mode: str, conv_window: int, block: int | None = None, record: bool = False):
    """Metrics of the episodes with the given per-episode keys, blocks of episodes in sequence.

    Args:
      hyper: Hyper of one grid cell (scalars, (K,) or (C, K) priors).
      world: World. keys: (E,) episode keys (split(key, episodes) of `simulate`).
      conv_threshold: traced threshold. policy: a factory in `SERVES`. options: static.
      steps, chunk, reward_mode, conv_window: as `simulate`. block: episodes per block
        (default BLOCK; see `block_size`). record: also return the (query, arm) of every step.
    Returns:
      Metrics with leaves (E, ...); with `record`, (Metrics, (query (E, T), arm (E, T))).
    """
    opts = dict(options)
    contextual = policy is contextual_thompson
    kw = dict(contextual=contextual, n_categories=int(opts.get("n_categories", 1)),
              gaussian=opts.get("sampler", "exact") == "gaussian", steps=steps, chunk=chunk,
              reward_mode=reward_mode, conv_window=conv_window, record=record)
    e = keys.shape[0]
    b = block_size(e, block)
    if b == e:
        return _block(hyper, world, keys, conv_threshold, **kw)
    out = jax.lax.map(lambda kb: _block(hyper, world, kb, conv_threshold, **kw), keys.reshape(e // b, b))
    return jax.tree.map(lambda a: a.reshape(e, *a.shape[2:]), out)
