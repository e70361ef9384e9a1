"""One home per formula of the routing simulator, as pure JAX functions that work along any axes.

The generic (vmapped) kernel, the batched kernel, the policies and the live router all call these; the NumPy
twin (`bandit_sim.sim.reference`) re-implements them independently, which is what makes the equivalence tests
mean something. Shapes: a leading arm axis K where noted, any trailing axes (episodes, ...) broadcast.

- `utility`: U_i = pi_i - lam * pred_cost_i - gam * pred_unc_i on available arms, -inf elsewhere.
- `explore_rate`: the research schedule eps_t = max(min_explore, explore_decay ** t).
- `hindsight_mean`: mu_i(x) = qbar_i - lam * pred_cost_i(x) - gam * pred_unc_i(x), qbar_i the arm's mean
  quality over the world's queries (the regret reference: the best policy in hindsight under the same utility).
- `pseudo_count_prior`: Beta priors from relatives' or past evidence; `donor_weights` and `family_prior`: the
  online family prior of an arm arriving at step t + 1.
- `observe`: the environment's observe step: the reward, the instantaneous regret and the Kahan-compensated
  totals and convergence window (`Accumulators`).
- `kahan_add`, `argmax_first`: the compensated sum and the first-index argmax every path shares.
- `linear_moments`, `linear_draw`, `linear_update`: the linear-Gaussian routers (sim/linear.py): the exact
  Thompson scalar x'w_k ~ N(x'm_k, x'S_k x) and the rank-one (Kalman / Sherman-Morrison) posterior step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["utility", "explore_rate", "hindsight_mean", "donor_weights", "pseudo_count_prior", "family_prior", "Accumulators",
           "init_accumulators", "observe", "convergence", "kahan_add", "argmax_first",
           "linear_moments", "linear_draw", "linear_update", "linear_step", "argmax_ties_by"]


def kahan_add(s, comp, x):
    """Kahan-compensated s + x; returns (new_sum, new_compensation)."""
    y = x - comp
    t = s + y
    return t, (t - s) - y


def argmax_first(x, axis: int = -1):
    """First index of the maximum along `axis` (np.argmax ties), as max + min-index.

    jnp.argmax lowers to a variadic (value, index) reduce that XLA:CPU runs slowly under vmap;
    two plain reductions fuse with their producers.
    """
    n = x.shape[axis]
    m = jnp.max(x, axis, keepdims=True)
    idx = jax.lax.broadcasted_iota(jnp.int32, [n if a == axis % x.ndim else 1 for a in range(x.ndim)], axis % x.ndim)
    return jnp.min(jnp.where(x == m, idx, n), axis).clip(0, n - 1)


def argmax_ties_by(u, tb, axis: int = -1):
    """Index of the maximum of `u` along `axis`, ties among maxima broken by the largest `tb` (then the first index).

    Linear Thompson clips its draws to the quality range, so several arms can share the clipped value 1 (or 0) and
    a utility; `argmax_first` would then always give the tie to the lowest index, which breaks probability matching.
    Breaking the tie by the unclipped draw picks the arm Thompson's draw ranks first.
    """
    m = jnp.max(u, axis, keepdims=True)
    return argmax_first(jnp.where(u == m, tb, -jnp.inf), axis)


def utility(pi, pred_cost, pred_unc, lam, gam, avail):
    """U = pi - lam * pred_cost - gam * pred_unc where `avail`, -inf elsewhere (elementwise, broadcasting).

    Args:
      pi: quality estimate (a posterior draw, mean or index). pred_cost, pred_unc: normalised cost and its spread.
      lam, gam: cost and uncertainty weights. avail: bool, the arm may be chosen.
    Returns:
      float32 utilities, the broadcast shape of the inputs.
    """
    return jnp.where(avail, pi - lam * pred_cost - gam * pred_unc, -jnp.inf)


def explore_rate(t, explore_decay, min_explore):
    """Forced random exploration at step t (0-based): max(min_explore, explore_decay ** t).

    min_explore = explore_decay = 0 gives pure Thompson sampling (no forced exploration after step 0).
    """
    return jnp.maximum(min_explore, explore_decay ** jnp.asarray(t).astype(jnp.float32))


def hindsight_mean(quality, mask, pred_cost, pred_unc, lam, gam):
    """The regret reference mu (N, K): each arm's mean quality over the world's queries minus its cost terms.

    Args:
      quality, mask, pred_cost, pred_unc: (N, K) World arrays. lam, gam: utility weights.
    Returns:
      (N, K) float32.
    """
    m = mask.astype(jnp.float32)
    qbar = jnp.sum(quality * m, 0) / jnp.maximum(jnp.sum(m, 0), 1.0)
    return qbar - lam * pred_cost - gam * pred_unc


def donor_weights(family, arrival_step, t):
    """(K, K) float32: w[i, j] = 1 when arm j may inform arm i's family prior at step t.

    Same family, not the arm itself, and already arrived (arrival_step <= t).
    """
    k = family.shape[0]
    same = (family[:, None] == family[None, :]) & ~jnp.eye(k, dtype=bool)
    return (same & (arrival_step <= t)[None, :]).astype(jnp.float32)


def pseudo_count_prior(base_a, base_b, succ, n, strength, xp=jnp):
    """Beta(base_a + m * n_eff, base_b + (1 - m) * n_eff): evidence `n` with mean m = succ / n, capped at `strength`.

    The one formula behind every prior taken from relatives or from history: the simulator's online family prior
    (`family_prior`), the training-split priors (`bandit_sim.sim.priors`) and the live router's `add_model`.
    n = 0 leaves the base prior. Elementwise; `xp` is `jax.numpy` (default) or `numpy`.
    """
    m = succ / xp.where(n > 0, n, 1.0)
    n_eff = xp.minimum(strength, n)
    return base_a + m * n_eff, base_b + (1.0 - m) * n_eff


def family_prior(prior_a, prior_b, base_a, base_b, pulls, succ, donors, strength, arriving):
    """Online family prior of arriving arms: Beta(base_a + m * n_eff, base_b + (1 - m) * n_eff).

    m = S_f / N_f is the mean reward the arm's family (the `donors`) has shown so far and
    n_eff = min(strength, N_f); nothing changes for arms not arriving, when N_f = 0 or strength = 0.

    Args:
      prior_a, prior_b: current priors (..., K, *E) (E: any trailing episode axes).
      base_a, base_b: the given priors, broadcastable to prior_a.
      pulls, succ: (K, *E) pulls and reward sums per arm (summed over contexts).
      donors: (K, K) from `donor_weights`.
      strength: () pseudo-count cap. arriving: (K,) bool.
    Returns:
      (prior_a, prior_b) updated.
    """
    n_f = jnp.tensordot(donors, pulls, 1)
    a, b = pseudo_count_prior(base_a, base_b, jnp.tensordot(donors, succ, 1), n_f, strength)
    apply = arriving.reshape(arriving.shape + (1,) * (n_f.ndim - 1)) & (n_f > 0) & (strength > 0)
    return jnp.where(apply, a, prior_a), jnp.where(apply, b, prior_b)


class Accumulators(NamedTuple):
    """Totals of an episode (trailing axes: episodes, when batched)."""

    sums: jax.Array  # (4, ...) float32 reward, quality, cost, regret
    comp: jax.Array  # (4, ...) float32 Kahan compensation
    window: jax.Array  # (W, ...) float32 last W instantaneous regrets
    last_above: jax.Array  # (...) int32 last step whose window mean was >= the threshold (-1: none)


def init_accumulators(conv_window: int, batch: tuple[int, ...] = ()) -> Accumulators:
    """Zero totals for `batch` episodes (() for one)."""
    return Accumulators(jnp.zeros((4, *batch), jnp.float32), jnp.zeros((4, *batch), jnp.float32),
                        jnp.zeros((conv_window, *batch), jnp.float32), jnp.full(batch, -1, jnp.int32))


def observe(acc: Accumulators, t, q, cost, mu_arm, best, u_reward, conv_threshold, *, reward_mode: str):
    """The environment's observe step for the chosen arm.

    reward r = q (observed quality) or 1[u_reward < q] (Bernoulli); instantaneous regret = best - mu_arm (the
    hindsight reference, `hindsight_mean`); Kahan-compensated totals; the convergence window.

    Args:
      acc: Accumulators. t: () int32 step. q, cost, mu_arm: the chosen arm's quality, normalised realised cost and
        hindsight mean. best: the best available hindsight mean. u_reward: Bernoulli uniforms (ignored for
        "observed"). conv_threshold: threshold on the window mean. reward_mode: "observed" | "bernoulli" (static).
    Returns:
      (reward, instantaneous regret, Accumulators).
    """
    r = (u_reward < q).astype(jnp.float32) if reward_mode == "bernoulli" else q
    inst = best - mu_arm
    sums, comp = kahan_add(acc.sums, acc.comp, jnp.stack([r, q, cost, inst]))
    w = acc.window.shape[0]
    window = jax.lax.dynamic_update_index_in_dim(acc.window, inst, t % w, 0)
    mean = jnp.sum(window, 0) / jnp.minimum(t + 1, w).astype(jnp.float32)
    return r, inst, Accumulators(sums, comp, window, jnp.where(mean >= conv_threshold, t, acc.last_above))


def convergence(acc: Accumulators, steps: int):
    """(convergence time, converged) from the accumulators after `steps` steps.

    Convergence time = 1 + the last step whose rolling-window mean regret was >= the threshold (0 if none), i.e.
    the number of queries after which the rolling mean stays below the threshold to the end of the episode;
    converged is False when the last step itself was above it.
    """
    return acc.last_above + 1, acc.last_above < steps - 1


def linear_moments(x, mean, cov):
    """Mean x'm_k and variance x'S_k x of the scalar x'w_k for every arm k (w_k ~ N(m_k, S_k)).

    Leading axes (episodes) broadcast; the products are matrix-vector contractions (`einsum`), which XLA:CPU runs
    several times faster than the same sums written elementwise (measured at K = 11, D = 33).

    Args:
      x: (*E, D) features. mean: (*E, K, D). cov: (*E, K, D, D) (symmetric). *E: any leading (episode) axes.
    Returns:
      (m (*E, K), v (*E, K) clamped at >= 0, sx (*E, K, D) = S_k x).
    """
    m = jnp.einsum("...kd,...d->...k", mean, x)
    sx = jnp.einsum("...kij,...j->...ki", cov, x)
    v = jnp.maximum(jnp.einsum("...ki,...i->...k", sx, x), 0.0)
    return m, v, sx


def linear_draw(m, v, z):
    """Thompson draw of the quality x'w_k: (pi = raw clipped to the quality range [0, 1], raw = m + sqrt(v) z).

    The decision uses the clipped pi in the utility and the raw draw to break ties among arms whose clipped draws
    (and utilities) are equal (`argmax_ties_by`)."""
    raw = m + jnp.sqrt(v) * z
    return jnp.clip(raw, 0.0, 1.0), raw


def linear_update(mean_a, cov_a, x, r, noise):
    """Rank-one posterior step of one arm after observing reward r at x (q = x'w + eps, eps ~ N(0, noise)).

    With s = noise + x'S x and Sx = S x:  m' = m + Sx (r - x'm) / s,  S' = S - Sx Sx' / s  (Sherman-Morrison on
    the precision; the outer product is formed before dividing so S' stays exactly symmetric). Returns the
    increments, so a caller adds them to the chosen arm only (`.at[arm].add`).

    Args:
      mean_a: (*E, D). cov_a: (*E, D, D). x: (*E, D). r: (*E) reward. noise: (*E) or () variance.
    Returns:
      (d_mean (*E, D), d_cov (*E, D, D)).
    """
    return linear_step(jnp.einsum("...ij,...j->...i", cov_a, x), mean_a, x, r, noise)


def linear_step(sx, mean_a, x, r, noise):
    """`linear_update` given sx = S_a x (e.g. the chosen arm's row of `linear_moments`' sx, computed once per step)."""
    s = noise + jnp.sum(sx * x, -1)
    resid = r - jnp.sum(mean_a * x, -1)
    return sx * (resid / s)[..., None], -(sx[..., :, None] * sx[..., None, :]) / s[..., None, None]
