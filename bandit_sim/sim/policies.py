"""Routing policies as small NamedTuples of pure functions.

A policy is made by a factory ``make(hyper, world, **static)`` and has five pure functions:

    state = init()
    noise = noise(key, n)                      # state-independent randomness for n steps (leading axis n)
    draws = sample(state, noise_t, key, ctx)   # the step's random draws given the state (exact Beta here)
    arm   = choose(state, draws, ctx)          # deterministic
    state = update(state, arm, reward, ctx)

Splitting `noise` from `sample` lets the kernel draw all proposals for a chunk of steps in bulk, outside
the sequential dependency; `key` in `sample` is a fresh per-step key (fold_in(fallback, t)) that no policy
needs today (the exact sampler's rare fallback derives its proposals from the step's own seed in `noise`). A NumPy
reference fed the same `draws` must choose the same arms (bandit_sim/sim/reference.py).

Utility (every utility-aware policy): U_i = pi_i - lam * pred_cost_i - gam * pred_unc_i, with pi_i the
policy's quality estimate (a Beta draw for Thompson, the posterior mean for simple utility / epsilon-greedy,
the UCB index for UCB1). Arms that have not arrived (t < arrival_step) or have no entry for the query
(mask False) get utility -inf.

Thompson exploration schedule (the research code's "exploration decay 0.95, minimum exploration 0.05"):
at step t (0-based, counted from the start of the episode) the policy routes to a uniformly random
available arm with probability eps_t = max(min_explore, explore_decay ** t), otherwise to argmax U.
So the first step is random, eps falls below 0.05 after 59 steps and stays at 0.05. Set
min_explore = 0 (and explore_decay = 0) for pure Thompson sampling.

Posterior state. Beta posteriors are kept as pull counts n (int32, exact to 2^31) and a success sum s
(float32 with Kahan compensation, so fractional rewards are not lost once s exceeds 2^24 / ulp);
alpha = prior_a + s, beta = prior_b + n - s. Fractional rewards q in [0, 1] update alpha += q,
beta += 1 - q.

Family priors for arriving models. `hyper.prior_alpha/prior_beta` are per-arm traced arrays (e.g. taken
from the family's posterior on training data). In addition, with `hyper.family_strength = w > 0`, an arm
arriving at step t0 > 0 gets prior_a += m * n_eff, prior_b += (1 - m) * n_eff at that step, where
m = S_f / N_f is the mean reward observed so far on the other arms of its family and n_eff = min(w, N_f)
(no change when the family has no observations). w = 0 (default) keeps the flat / given prior.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bandit_sim.sim import formulas, sampling
from bandit_sim.sim.formulas import argmax_first as _argmax
from bandit_sim.sim.formulas import kahan_add
from bandit_sim.sim.world import World

__all__ = [
    "Hyper", "Context", "Policy", "BetaState", "default_hyper", "REGISTRY", "make_policy", "resolve_policy",
    "policy_name",
    "thompson", "contextual_thompson", "simple_utility", "epsilon_greedy", "ucb1", "random_policy", "arm_utility_means",
    "always_premium", "cheapest", "threshold", "best_fixed", "oracle", "kahan_add",
    "LinState", "LinDraws", "linear_thompson", "linucb",
]


class Hyper(NamedTuple):
    """Traced hyper-parameters shared by all policies (a grid is a leading axis on every leaf)."""

    lam: jax.Array  # () float32 cost weight
    gam: jax.Array  # () float32 uncertainty weight
    prior_alpha: jax.Array  # (K,) float32 Beta prior alpha per arm, or (C, K) per category (contextual)
    prior_beta: jax.Array  # (K,) float32 Beta prior beta per arm, or (C, K) per category (contextual)
    explore_decay: jax.Array  # () float32 Thompson eps_t = max(min_explore, explore_decay**t)
    min_explore: jax.Array  # () float32
    epsilon: jax.Array  # () float32 epsilon-greedy rate
    ucb_c: jax.Array  # () float32 UCB1 exploration scale
    threshold: jax.Array  # () float32 threshold router: premium when features[0] > threshold
    family_strength: jax.Array  # () float32 pseudo-count cap of the online family prior (0 = off)
    lin_mean: jax.Array  # (K, D) float32 linear routers: prior mean of each arm's weights w_k (sim/linear.py)
    lin_cov: jax.Array  # (K, D, D) float32 prior covariance of w_k
    lin_noise: jax.Array  # (K,) float32 observation noise variance sigma_k^2 of q = x'w_k + eps


def default_hyper(k: int, threshold: float = 0.0, d: int | None = None, **overrides) -> Hyper:
    """Hyper-parameters with the research defaults (lam 0.3, gam 0.25, Beta(1, 1), decay 0.95, min 0.05).

    The linear routers' prior defaults to w_k ~ N(0, I_D), sigma_k^2 = 0.1 (build real ones with
    `bandit_sim.sim.linear.linear_prior`).

    Args:
      k: number of arms.
      threshold: complexity threshold (use the median of world.features[:, 0]).
      d: D, the width of World.x (default: from an overridden lin_mean, else 1 = bias only).
      **overrides: any Hyper field (scalars or (K,) arrays for the priors; (K, D), (K, D, D), (K,) for lin_*).
    Returns:
      Hyper of float32 arrays.
    """
    if d is None:
        d = np.shape(overrides["lin_mean"])[-1] if "lin_mean" in overrides else 1
    vals = dict(lam=0.3, gam=0.25, prior_alpha=np.ones(k), prior_beta=np.ones(k), explore_decay=0.95,
                min_explore=0.05, epsilon=0.1, ucb_c=1.0, threshold=threshold, family_strength=0.0,
                lin_mean=np.zeros((k, d)), lin_cov=np.broadcast_to(np.eye(d), (k, d, d)), lin_noise=np.full(k, 0.1))
    bad = set(overrides) - set(vals)
    if bad:
        raise ValueError(f"default_hyper: unknown fields {sorted(bad)}; valid: {sorted(vals)}")
    vals.update(overrides)
    out = Hyper(**{n: jnp.asarray(v, jnp.float32) for n, v in vals.items()})
    for n in ("prior_alpha", "prior_beta"):
        a = getattr(out, n)
        if a.ndim not in (1, 2) or a.shape[-1] != k:
            raise ValueError(f"default_hyper: {n} must have shape ({k},) or (categories, {k}), got {a.shape}")
        if not bool(jnp.all(a > 0)):
            raise ValueError(f"default_hyper: {n} must be > 0")
    for n, shape in (("lin_mean", (k, d)), ("lin_cov", (k, d, d)), ("lin_noise", (k,))):
        if getattr(out, n).shape != shape:
            raise ValueError(f"default_hyper: {n} must have shape {shape}, got {getattr(out, n).shape}")
    if not bool(jnp.all(out.lin_noise > 0)):
        raise ValueError("default_hyper: lin_noise must be > 0")
    return out


class Context(NamedTuple):
    """What a policy sees at one step (gathered by the kernel from the World row of the query)."""

    t: jax.Array  # () int32 step index in the episode
    avail: jax.Array  # (K,) bool arrived and present for this query
    pred_cost: jax.Array  # (K,) float32
    pred_unc: jax.Array  # (K,) float32
    features: jax.Array  # (F,) float32
    category: jax.Array  # () int32
    quality: jax.Array  # (K,) float32 observed quality: hindsight policies (oracle) only
    cost: jax.Array  # (K,) float32 realised cost: hindsight policies (oracle) only
    x: jax.Array  # (D,) float32 the linear routers' query features (World.x row; x[0] = 1)


class Policy(NamedTuple):
    init: Callable[[], Any]
    noise: Callable[[jax.Array, int], Any]
    sample: Callable[[Any, Any, jax.Array, Context], Any]
    choose: Callable[[Any, Any, Context], jax.Array]
    update: Callable[[Any, jax.Array, jax.Array, Context], Any]


class BetaState(NamedTuple):
    n: jax.Array  # (C, K) int32 pulls (C = 1 unless contextual)
    s: jax.Array  # (C, K) float32 reward sum
    s_comp: jax.Array  # (C, K) float32 Kahan compensation of s
    prior_a: jax.Array  # (C, K) float32 prior alpha (family transfer applied at arrival)
    prior_b: jax.Array  # (C, K) float32 prior beta


def _utility(pi, ctx: Context, hyper: Hyper):
    return formulas.utility(pi, ctx.pred_cost, ctx.pred_unc, hyper.lam, hyper.gam, ctx.avail)


def _random_arm(g, avail):
    # uniform over available arms given i.i.d. uniforms g: argmax is uniformly distributed
    return _argmax(jnp.where(avail, g, -1.0))


def _no_noise(key, n):
    return jnp.zeros((n,), jnp.float32)


def _no_state():
    return jnp.zeros((), jnp.int32)


def _keep(state, arm, reward, ctx):
    return state


# ---------------------------------------------------------------- Beta-posterior policies


def _beta_init(hyper: Hyper, n_rows: int):
    k = hyper.prior_alpha.shape[-1]

    def init():
        z = jnp.zeros((n_rows, k), jnp.float32)
        pa, pb = (jnp.broadcast_to(p, (n_rows, k)).astype(jnp.float32) for p in (hyper.prior_alpha, hyper.prior_beta))
        return BetaState(jnp.zeros((n_rows, k), jnp.int32), z, z, pa, pb)

    return init


def _beta_update(hyper: Hyper, world: World, contextual: bool):
    k = hyper.prior_alpha.shape[-1]

    def update(state: BetaState, arm, reward, ctx: Context):
        # one-hot masks instead of scatters: batched scatters are slow on XLA:CPU
        hot = _onehot(arm, k)[None, :]
        if contextual:
            hot = hot & _onehot(ctx.category, state.n.shape[0])[:, None]
        s, comp = kahan_add(state.s, state.s_comp, reward)
        st = state._replace(n=state.n + hot.astype(jnp.int32), s=jnp.where(hot, s, state.s),
                            s_comp=jnp.where(hot, comp, state.s_comp))
        # online family prior for arms arriving at the next step
        arriving = (world.arrival_step == ctx.t + 1) & (ctx.t + 1 > 0)

        def family_prior(st):
            pa, pb = formulas.family_prior(st.prior_a, st.prior_b, hyper.prior_alpha, hyper.prior_beta,
                                           st.n.sum(0).astype(jnp.float32), st.s.sum(0),
                                           formulas.donor_weights(world.family, world.arrival_step, ctx.t),
                                           hyper.family_strength, arriving)
            return st._replace(prior_a=pa, prior_b=pb)

        # arrivals are rare and do not depend on the episode (t and the world are shared under vmap),
        # so a real branch skips the (K, K) product on every other step
        return jax.lax.cond(jnp.any(arriving), family_prior, lambda st: st, st)

    return update


def _onehot(i, n):
    return jnp.arange(n, dtype=jnp.int32) == i


def _take(x, i):
    """x[i] for a traced index i along the last axis, as a masked sum (no batched gather)."""
    return jnp.sum(jnp.where(_onehot(i, x.shape[-1]), x, jnp.zeros((), x.dtype)), -1)


def _alpha_beta(state: BetaState, row):
    if state.n.shape[0] == 1:
        n, s = state.n[0].astype(jnp.float32), state.s[0]
        pa, pb = state.prior_a[0], state.prior_b[0]
    else:
        hot = _onehot(row, state.n.shape[0])[:, None]
        n = jnp.sum(jnp.where(hot, state.n, 0), 0).astype(jnp.float32)
        s = jnp.sum(jnp.where(hot, state.s, 0.0), 0)
        pa = jnp.sum(jnp.where(hot, state.prior_a, 0.0), 0)
        pb = jnp.sum(jnp.where(hot, state.prior_b, 0.0), 0)
    return pa + s, pb + jnp.maximum(n - s, 0.0)


class TSNoise(NamedTuple):
    seed: jax.Array  # (n, 2) uint32 per-step seed (Beta proposals beyond the first n_candidates)
    beta: Any  # sampling.GammaNoise, lead (n,): the first proposals (None for the Gaussian option)
    u: jax.Array  # (n,) exploration coin
    g: jax.Array  # (n, K) random-arm uniforms (or, for the Gaussian option, (n, 2K): normals after K)


_COIN_STREAM = sampling.BOOST_STREAM + 1  # counter words of the non-Beta uniforms of a Thompson step
_GAUSS_STREAM = sampling.BOOST_STREAM + 2


class TSDraws(NamedTuple):
    pi: jax.Array  # (K,) sampled success probabilities
    u: jax.Array  # () exploration coin
    g: jax.Array  # (K,) random-arm uniforms
    a: jax.Array  # (K,) the Beta posterior alpha the draw came from (recorded so the NumPy twin checks its own)
    b: jax.Array  # (K,) the Beta posterior beta


def thompson(hyper: Hyper, world: World, *, sampler: str = "exact", n_candidates: int = 3,
             contextual: bool = False, n_categories: int = 1) -> Policy:
    """Thompson sampling with the cost/uncertainty utility and a decaying exploration rate.

    pi_i ~ Beta(alpha_i, beta_i); arm = argmax_i pi_i - lam*pred_cost_i - gam*pred_unc_i, except with
    probability eps_t = max(min_explore, explore_decay**t) a uniformly random available arm.

    Args:
      hyper: traced Hyper.
      world: the World (traced arrays).
      sampler: "exact" (Marsaglia-Tsang, default) or "gaussian" (approximation, explicit option).
      n_candidates: pre-drawn proposals per gamma for the exact sampler.
      contextual: one Beta posterior per query category (contextual Thompson).
      n_categories: number of categories (static) when contextual.
    Returns:
      Policy.
    """
    if sampler not in ("exact", "gaussian"):
        raise ValueError(f"thompson: sampler must be 'exact' or 'gaussian', got {sampler!r}")
    k = hyper.prior_alpha.shape[-1]
    rows = n_categories if contextual else 1

    def noise(key, n):
        # one 64-bit seed per step; its proposals and uniforms are counter-based hashes of it, drawn in
        # bulk here (fused integer arithmetic, no PRNG loop) and indexed by the step (sampling.py)
        seeds = sampling.noise_seeds(key, (n,))
        ug = jax.vmap(lambda sd: sampling.seed_uniforms(sd, (k + 1,), _COIN_STREAM))(seeds)
        if sampler == "exact":
            bn = jax.vmap(lambda sd: sampling.beta_proposals(sd, (k,), n_candidates))(seeds)
            return TSNoise(seeds, bn, ug[:, 0], ug[:, 1:])
        z = jax.vmap(lambda sd: sampling.seed_normals(sd, (k,), _GAUSS_STREAM))(seeds)
        return TSNoise(seeds, None, ug[:, 0], jnp.concatenate([ug[:, 1:], z], -1))

    def sample(state: BetaState, nz: TSNoise, key, ctx: Context):
        a, b = _alpha_beta(state, ctx.category if contextual else 0)
        if sampler == "exact":
            return TSDraws(sampling.beta_from_noise(a, b, nz.beta, nz.seed), nz.u, nz.g, a, b)
        return TSDraws(sampling.beta_gaussian(nz.g[k:], a, b), nz.u, nz.g[:k], a, b)

    def choose(state, d: TSDraws, ctx: Context):
        eps = formulas.explore_rate(ctx.t, hyper.explore_decay, hyper.min_explore)
        greedy = _argmax(_utility(d.pi, ctx, hyper))
        return jnp.where(d.u < eps, _random_arm(d.g, ctx.avail), greedy)

    return Policy(_beta_init(hyper, rows), noise, sample, choose, _beta_update(hyper, world, contextual))


def contextual_thompson(hyper: Hyper, world: World, *, n_categories: int, **kw) -> Policy:
    """Thompson sampling with one Beta posterior per query category (see `thompson`)."""
    return thompson(hyper, world, contextual=True, n_categories=n_categories, **kw)


class EpsDraws(NamedTuple):
    u: jax.Array  # () coin
    g: jax.Array  # (K,) random-arm uniforms


def _posterior_mean_policy(hyper: Hyper, world: World, eps_fn) -> Policy:
    k = hyper.prior_alpha.shape[-1]

    def noise(key, n):
        ku, kg = jax.random.split(key)
        return EpsDraws(jax.random.uniform(ku, (n,)), jax.random.uniform(kg, (n, k)))

    def sample(state, nz, key, ctx):
        return nz

    def choose(state: BetaState, d: EpsDraws, ctx: Context):
        a, b = _alpha_beta(state, 0)
        greedy = _argmax(_utility(a / (a + b), ctx, hyper))
        return jnp.where(d.u < eps_fn(ctx), _random_arm(d.g, ctx.avail), greedy)

    return Policy(_beta_init(hyper, 1), noise, sample, choose, _beta_update(hyper, world, False))


def simple_utility(hyper: Hyper, world: World) -> Policy:
    """Greedy on the posterior-mean utility (no sampling, no exploration).

    Args:
      hyper, world: as for `thompson`.
    Returns:
      Policy.
    """
    return _posterior_mean_policy(hyper, world, lambda ctx: jnp.float32(-1.0))


def epsilon_greedy(hyper: Hyper, world: World) -> Policy:
    """Posterior-mean utility, with probability hyper.epsilon a uniformly random available arm.

    Args:
      hyper, world: as for `thompson`.
    Returns:
      Policy.
    """
    return _posterior_mean_policy(hyper, world, lambda ctx: hyper.epsilon)


class UCBState(NamedTuple):
    n: jax.Array  # (K,) int32 pulls
    s: jax.Array  # (K,) float32 reward sum
    s_comp: jax.Array  # (K,) float32 Kahan compensation


def ucb1(hyper: Hyper, world: World) -> Policy:
    """UCB1 on the utility: U_i = s_i/n_i + ucb_c*sqrt(2 ln t / n_i) - lam*cost - gam*unc; untried arms first.

    t is the number of pulls so far plus one. Ties go to the lowest arm index. Pseudo-counts from the Beta prior
    (warm start after a training split): n_i includes prior_alpha + prior_beta - 2 pulls and s_i prior_alpha - 1
    successes, clipped to [0, pulls] (none for Beta(1, 1)).

    Args:
      hyper, world: as for `thompson`.
    Returns:
      Policy.
    """
    k = hyper.prior_alpha.shape[-1]

    def init():
        z = jnp.zeros((k,), jnp.float32)
        return UCBState(jnp.zeros((k,), jnp.int32), z, z)

    pa, pb = hyper.prior_alpha.reshape(-1, k)[0], hyper.prior_beta.reshape(-1, k)[0]
    n0 = jnp.maximum(pa + pb - 2.0, 0.0)  # pseudo-counts of the prior (none below Beta(1, 1))
    s0 = jnp.clip(pa - 1.0, 0.0, n0)

    def choose(state: UCBState, d, ctx: Context):
        n = state.n.astype(jnp.float32) + n0
        tot = jnp.sum(n) + 1.0
        idx = (state.s + s0) / jnp.maximum(n, 1.0) + hyper.ucb_c * jnp.sqrt(2.0 * jnp.log(tot) / jnp.maximum(n, 1.0))
        u = _utility(idx, ctx, hyper)
        u = jnp.where((n == 0) & ctx.avail, jnp.inf, u)
        return _argmax(u)

    def update(state: UCBState, arm, reward, ctx):
        hot = _onehot(arm, k)
        s, c = kahan_add(state.s, state.s_comp, reward)
        return UCBState(state.n + hot.astype(jnp.int32), jnp.where(hot, s, state.s), jnp.where(hot, c, state.s_comp))

    return Policy(init, _no_noise, lambda st, nz, key, ctx: nz, choose, update)


def random_policy(hyper: Hyper, world: World) -> Policy:
    """Uniformly random available arm.

    Args:
      hyper, world: as for `thompson`.
    Returns:
      Policy.
    """
    k = world.quality.shape[-1]
    noise = lambda key, n: jax.random.uniform(key, (n, k))  # noqa: E731
    return Policy(_no_state, noise, lambda st, nz, key, ctx: nz,
                  lambda st, g, ctx: _random_arm(g, ctx.avail), _keep)


def _premium_score(world: World):
    m = world.mask.astype(jnp.float32)
    return jnp.sum(world.pred_cost * m, 0) / jnp.maximum(jnp.sum(m, 0), 1.0)  # (K,) mean predicted cost


def _static_choice(score_fn) -> Policy:
    return Policy(_no_state, _no_noise, lambda st, nz, key, ctx: nz,
                  lambda st, d, ctx: _argmax(jnp.where(ctx.avail, score_fn(ctx), -jnp.inf)),
                  _keep)


def always_premium(hyper: Hyper, world: World) -> Policy:
    """The available arm with the highest mean predicted cost (a routing policy).

    Not the reference of quality retention and cost reduction: the experiments take that from
    `experiments.metrics.premium_model` (the best by training quality, ties cheaper), which may be another model.

    Args:
      hyper, world: as for `thompson`.
    Returns:
      Policy.
    """
    score = _premium_score(world)
    return _static_choice(lambda ctx: score)


def cheapest(hyper: Hyper, world: World) -> Policy:
    """The available arm with the lowest predicted cost for this query.

    Args:
      hyper, world: as for `thompson`.
    Returns:
      Policy.
    """
    return _static_choice(lambda ctx: -ctx.pred_cost)


def threshold(hyper: Hyper, world: World) -> Policy:
    """Premium arm when features[0] (log prompt tokens) > hyper.threshold, else the cheapest arm.

    Args:
      hyper, world: as for `thompson`.
    Returns:
      Policy.
    """
    prem = _premium_score(world)
    return _static_choice(lambda ctx: jnp.where(ctx.features[0] > hyper.threshold, prem, -ctx.pred_cost))


def arm_utility_means(hyper: Hyper, world: World):
    """Per-arm mean over queries of quality - lam*pred_cost - gam*pred_unc (masked entries excluded).

    Args:
      hyper, world: as for `thompson`.
    Returns:
      (K,) float32.
    """
    m = world.mask.astype(jnp.float32)
    u = world.quality - hyper.lam * world.pred_cost - hyper.gam * world.pred_unc
    return jnp.sum(u * m, 0) / jnp.maximum(jnp.sum(m, 0), 1.0)


def best_fixed(hyper: Hyper, world: World) -> Policy:
    """Best fixed arm in hindsight under the utility (falls back by rank when it is unavailable).

    Args:
      hyper, world: as for `thompson`.
    Returns:
      Policy.
    """
    score = arm_utility_means(hyper, world)
    return _static_choice(lambda ctx: score)


def oracle(hyper: Hyper, world: World) -> Policy:
    """Per query, the cheapest (realised cost) available arm among those with the best observed quality.

    Args:
      hyper, world: as for `thompson`.
    Returns:
      Policy.
    """
    def choose(st, d, ctx: Context):
        qmax = jnp.max(jnp.where(ctx.avail, ctx.quality, -jnp.inf))
        best = ctx.avail & (ctx.quality == qmax)
        return _argmax(jnp.where(best, -ctx.cost, -jnp.inf))

    return Policy(_no_state, _no_noise, lambda st, nz, key, ctx: nz, choose, _keep)


# ---------------------------------------------------------------- linear-Gaussian policies on query features


class LinState(NamedTuple):
    mean: jax.Array  # (K, D) float32 posterior mean m_k of each arm's weights
    cov: jax.Array  # (K, D, D) float32 posterior covariance S_k


class LinDraws(NamedTuple):
    pi: jax.Array  # (K,) quality estimate: the Thompson draw (clipped to [0, 1]) or the LinUCB index
    z: jax.Array  # (K,) standard normals of the draw (zeros for LinUCB)
    u: jax.Array  # () exploration coin
    g: jax.Array  # (K,) random-arm uniforms
    raw: jax.Array  # (K,) the unclipped draw, which breaks ties among equal utilities (the index for LinUCB)


def _check_linear(hyper: Hyper, world: World, name: str) -> None:
    d = world.x.shape[-1]
    if hyper.lin_mean.shape[-1] != d or hyper.lin_cov.shape[-2:] != (d, d):
        raise ValueError(f"{name}: hyper.lin_mean/lin_cov are for D = {hyper.lin_mean.shape[-1]} features but "
                         f"World.x has D = {d}; build them with bandit_sim.sim.linear.linear_prior "
                         f"(or default_hyper(k, d={d}))")


def _lin_init(hyper: Hyper):
    return lambda: LinState(hyper.lin_mean.astype(jnp.float32), hyper.lin_cov.astype(jnp.float32))


def _lin_update(hyper: Hyper):
    def update(state: LinState, arm, reward, ctx: Context):
        # gather the chosen arm, add its rank-one increment in place (cheaper than a masked update of all K
        # arms: the state is K*D^2 floats)
        dm, dc = formulas.linear_update(state.mean[arm], state.cov[arm], ctx.x, reward, hyper.lin_noise[arm])
        return LinState(state.mean.at[arm].add(dm), state.cov.at[arm].add(dc))

    return update


def linear_thompson(hyper: Hyper, world: World) -> Policy:
    """Linear Thompson sampling (Agrawal & Goyal 2013) on the query features World.x, one Gaussian per arm.

    Model: q = x'w_k + eps, eps ~ N(0, lin_noise_k), w_k ~ N(lin_mean_k, lin_cov_k) (conjugate, known noise).
    Decision: only x'w_k matters, and it is exactly N(x'm_k, x'S_k x): draw that scalar per arm,
    pi_k = clip(x'm_k + sqrt(x'S_k x) z_k, 0, 1), arm = argmax_k pi_k - lam*pred_cost_k - gam*pred_unc_k (ties
    among equal utilities, e.g. two draws clipped to 1 at lam = 0, go to the larger unclipped draw), except
    with probability eps_t = max(min_explore, explore_decay**t) a uniformly random available arm (as `thompson`;
    min_explore = explore_decay = 0 for pure Thompson). Update: the chosen arm's rank-one step
    (`formulas.linear_update`). Priors (cold / family / warm) come from `bandit_sim.sim.linear.linear_prior`.

    Args:
      hyper, world: as for `thompson` (hyper.lin_* sized for world.x's D).
    Returns:
      Policy.
    """
    _check_linear(hyper, world, "linear_thompson")
    k = hyper.lin_mean.shape[-2]

    def noise(key, n):
        # the Thompson policies' seed streams: coin and random-arm uniforms, then the normals
        seeds = sampling.noise_seeds(key, (n,))
        ug = jax.vmap(lambda sd: sampling.seed_uniforms(sd, (k + 1,), _COIN_STREAM))(seeds)
        z = jax.vmap(lambda sd: sampling.seed_normals(sd, (k,), _GAUSS_STREAM))(seeds)
        zero = jnp.zeros((n, k), jnp.float32)
        return LinDraws(zero, z, ug[:, 0], ug[:, 1:], zero)

    def sample(state: LinState, nz: LinDraws, key, ctx: Context):
        m, v, _ = formulas.linear_moments(ctx.x, state.mean, state.cov)
        pi, raw = formulas.linear_draw(m, v, nz.z)
        return nz._replace(pi=pi, raw=raw)

    def choose(state, d: LinDraws, ctx: Context):
        eps = formulas.explore_rate(ctx.t, hyper.explore_decay, hyper.min_explore)
        greedy = formulas.argmax_ties_by(_utility(d.pi, ctx, hyper), d.raw)
        return jnp.where(d.u < eps, _random_arm(d.g, ctx.avail), greedy)

    return Policy(_lin_init(hyper), noise, sample, choose, _lin_update(hyper))


def linucb(hyper: Hyper, world: World) -> Policy:
    """Disjoint LinUCB (Li et al. 2010) on World.x with the utility: U_k = x'm_k + ucb_c*sqrt(x'S_k x) - costs.

    Same posterior as `linear_thompson` (ridge regression per arm: with lin_mean = 0, lin_cov = I and
    lin_noise = 1, m_k = A_k^-1 b_k and S_k = A_k^-1 as in the paper); alpha is `hyper.ucb_c` (tune it on
    validation). No forced exploration; ties go to the lowest arm.

    Args:
      hyper, world: as for `linear_thompson`.
    Returns:
      Policy.
    """
    _check_linear(hyper, world, "linucb")
    k = hyper.lin_mean.shape[-2]

    def noise(key, n):
        z = jnp.zeros((n, k), jnp.float32)
        return LinDraws(z, z, jnp.zeros((n,), jnp.float32), z, z)

    def sample(state: LinState, nz: LinDraws, key, ctx: Context):
        m, v, _ = formulas.linear_moments(ctx.x, state.mean, state.cov)
        idx = m + hyper.ucb_c * jnp.sqrt(v)
        return nz._replace(pi=idx, raw=idx)

    def choose(state, d: LinDraws, ctx: Context):
        return _argmax(_utility(d.pi, ctx, hyper))

    return Policy(_lin_init(hyper), noise, sample, choose, _lin_update(hyper))


REGISTRY: dict[str, Callable[..., Policy]] = {
    "thompson": thompson,
    "contextual_thompson": contextual_thompson,
    "simple_utility": simple_utility,
    "epsilon_greedy": epsilon_greedy,
    "ucb1": ucb1,
    "random": random_policy,
    "always_premium": always_premium,
    "cheapest": cheapest,
    "threshold": threshold,
    "best_fixed": best_fixed,
    "oracle": oracle,
    "linear_thompson": linear_thompson,
    "linucb": linucb,
}
"""The one registry: command-line / report names -> policy factories."""


def resolve_policy(policy) -> Callable[..., Policy]:
    """The factory for `policy` (a factory from `REGISTRY`, or its name).

    Args:
      policy: a factory or a name.
    Returns:
      the factory.
    """
    if callable(policy):
        return policy
    if policy not in REGISTRY:
        raise ValueError(f"unknown policy {policy!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[policy]


def policy_name(policy) -> str:
    """The registry name of a factory (or a name, checked)."""
    f = resolve_policy(policy)
    for name, g in REGISTRY.items():
        if g is f:
            return name
    raise ValueError(f"policy {f!r} is not in the registry ({sorted(REGISTRY)})")


def make_policy(policy, hyper: Hyper, world: World, options: tuple = ()) -> Policy:
    """Build a policy with static options ((key, value) pairs, e.g. (("sampler", "gaussian"),)).

    Args:
      policy: a factory of `REGISTRY` or its name.
      hyper: traced Hyper.
      world: World.
      options: hashable static options for the factory.
    Returns:
      Policy.
    """
    return resolve_policy(policy)(hyper, world, **dict(options))
