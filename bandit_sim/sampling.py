"""Exact, fast Beta sampling for the routing kernel.

Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b). Gammas use Marsaglia & Tsang (2000):
for shape s >= 1 let d = s - 1/3, c = 1/sqrt(9 d); propose x ~ N(0, 1), v = (1 + c x)^3 and accept
d v when v > 0 and log u < x^2 / 2 + d (1 - v + log v), u ~ U(0, 1). Shapes s < BOOST_BELOW (4) are
boosted: Gamma(s) = Gamma(s + 1) * U^(1/s) (exact for any s > 0; needed for s < 1 and it raises the
acceptance rate for small shapes). Everything is done in log space, so Beta(0.05, 0.05) does not
underflow: log X - log Y is formed and the Beta draw is sigmoid(log X - log Y).

Why this is fast: the proposals (normals, log-uniforms, boost log-uniforms) do not depend on the
shapes, so they are drawn in bulk outside the sequential dependency of a bandit episode
(:func:`beta_noise`, e.g. for a chunk of steps at once); turning them into a draw
(:func:`beta_from_noise`) is arithmetic only. Why it stays exact: a fixed number of pre-drawn
candidates is tried in order, and any lane where all were rejected continues in a
``lax.while_loop`` drawing fresh candidates from its own key until accepted, so every result is the
first accepted proposal of an i.i.d. proposal sequence, i.e. exact rejection sampling. Under vmap a
while-loop whose predicate is false everywhere costs a single check.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "GammaNoise",
    "BetaNoise",
    "gamma_noise",
    "log_gamma_from_noise",
    "beta_noise",
    "beta_from_noise",
    "beta_logit_from_noise",
    "beta",
    "beta_gaussian",
]


class GammaNoise(NamedTuple):
    """State-independent randomness for Marsaglia-Tsang gammas of a given shape."""

    x: jax.Array  # (n_candidates, *shape) float32 standard normals
    log_u: jax.Array  # (n_candidates, *shape) float32 log of U(0, 1) for the accept test
    log_boost: jax.Array  # (*shape,) float32 log of U(0, 1) for the shape boost (s < BOOST_BELOW)


class BetaNoise(NamedTuple):
    """Noise for X ~ Gamma(a) and Y ~ Gamma(b)."""

    a: GammaNoise
    b: GammaNoise


BOOST_BELOW = 4.0  # shapes below this are sampled as Gamma(s + 1) * U^(1/s)


def _log_uniform(key: jax.Array, shape, dtype) -> jax.Array:
    # log of U(0, 1]; minval=tiny keeps log finite (u == 0 has probability ~2^-24 per draw in float32)
    u = jax.random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
    return jnp.log(u)


def gamma_noise(key: jax.Array, shape: tuple[int, ...], n_candidates: int = 3,
                dtype=jnp.float32) -> GammaNoise:
    """Draw the shape-independent proposals for gammas of the given array shape.

    Args:
      key: PRNG key.
      shape: shape of the gamma array to be produced (leading axes may be steps of a chunk).
      n_candidates: static number of pre-drawn Marsaglia-Tsang proposals per gamma.
      dtype: floating dtype (float32 default).
    Returns:
      GammaNoise with x, log_u of shape (n_candidates, *shape) and log_boost of shape `shape`.
    """
    if n_candidates < 1:
        raise ValueError(f"gamma_noise: n_candidates must be >= 1, got {n_candidates}")
    kx, ku, kb = jax.random.split(key, 3)
    full = (n_candidates, *shape)
    return GammaNoise(
        x=jax.random.normal(kx, full, dtype),
        log_u=_log_uniform(ku, full, dtype),
        log_boost=_log_uniform(kb, tuple(shape), dtype),
    )


def _mt_candidate(d, c, x, log_u):
    """One Marsaglia-Tsang proposal: returns (accepted, log(d v))."""
    y = c * x
    # v - 1 = (1 + y)^3 - 1 written without cancellation; 1 - v + log v = log1p(w) - w.
    w = y * (3.0 + y * (3.0 + y))
    ok = y > -1.0
    log1p_y = jnp.log1p(jnp.where(ok, y, 0.0))
    log_v = 3.0 * log1p_y
    accept = ok & (log_u < 0.5 * x * x + d * (log_v - w))
    return accept, jnp.log(d) + log_v


def log_gamma_from_noise(shape_param: jax.Array, noise: GammaNoise, key: jax.Array,
                         counter=0) -> jax.Array:
    """Turn pre-drawn proposals into exact log Gamma(shape_param, 1) draws.

    Args:
      shape_param: (*shape,) float32 gamma shapes, > 0.
      noise: GammaNoise for that shape (candidate axis first).
      key: PRNG key used only for lanes where every pre-drawn candidate was rejected.
      counter: int (may be traced) folded into `key` for the fallback, e.g. the step index, so one
        key serves a whole episode and no key is derived unless a fallback is needed.
    Returns:
      (*shape,) float32 log of a Gamma(shape_param) draw.
    """
    s = jnp.asarray(shape_param, noise.x.dtype)
    # Gamma(s) = Gamma(s + 1) * U^(1/s) holds for every s > 0; boosting small shapes raises the
    # acceptance rate (0.95 at shape 1, 0.99 at shape 4) so the fallback loop is rarely entered.
    boosted = s < BOOST_BELOW
    d = jnp.where(boosted, s + 1.0, s) - 1.0 / 3.0
    c = jax.lax.rsqrt(9.0 * d)
    n = noise.x.shape[0]
    val = jnp.zeros_like(d)
    done = jnp.zeros(d.shape, bool)
    # first accepted candidate wins: scan candidates from the last to the first
    for j in range(n - 1, -1, -1):
        acc, v = _mt_candidate(d, c, noise.x[j], noise.log_u[j])
        val = jnp.where(acc, v, val)
        done = done | acc

    def cond(carry):
        _, _, done = carry
        return ~jnp.all(done)

    def body(carry):
        i, val, done = carry
        k = jax.random.fold_in(jax.random.fold_in(key, counter), i)
        kx, ku = jax.random.split(k)
        x = jax.random.normal(kx, d.shape, d.dtype)
        lu = _log_uniform(ku, d.shape, d.dtype)
        acc, v = _mt_candidate(d, c, x, lu)
        take = acc & ~done
        return i + 1, jnp.where(take, v, val), done | acc

    _, val, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), val, done))
    return val + jnp.where(boosted, noise.log_boost / s, 0.0)


def beta_noise(key: jax.Array, shape: tuple[int, ...], n_candidates: int = 3,
               dtype=jnp.float32) -> BetaNoise:
    """Draw the shape-independent proposals for Beta draws of the given array shape.

    Args:
      key: PRNG key.
      shape: shape of the Beta array (e.g. (steps, K)).
      n_candidates: pre-drawn proposals per gamma (static).
    Returns:
      BetaNoise with two GammaNoise of candidate-leading shape (n_candidates, *shape).
    """
    ka, kb = jax.random.split(key)
    return BetaNoise(gamma_noise(ka, shape, n_candidates, dtype), gamma_noise(kb, shape, n_candidates, dtype))


def beta_logit_from_noise(a: jax.Array, b: jax.Array, noise: BetaNoise, key: jax.Array,
                          counter=0) -> jax.Array:
    """Exact log(X / Y) = logit of a Beta(a, b) draw (keeps resolution near 0 and 1).

    Args:
      a, b: (*shape,) float32 Beta parameters, > 0.
      noise: BetaNoise for `shape`.
      key: PRNG key for rejected lanes only.
      counter: int folded into the fallback key (distinct per call sharing `key`).
    Returns:
      (*shape,) float32 logits; sigmoid of them is Beta(a, b).
    """
    c = 2 * jnp.asarray(counter, jnp.uint32)
    return log_gamma_from_noise(a, noise.a, key, c) - log_gamma_from_noise(b, noise.b, key, c + 1)


def beta_from_noise(a: jax.Array, b: jax.Array, noise: BetaNoise, key: jax.Array, counter=0) -> jax.Array:
    """Exact Beta(a, b) draws from pre-drawn proposals (fallback draws from `key`).

    Args:
      a, b: (*shape,) float32 Beta parameters, > 0 (0.05 .. 1e5 tested).
      noise: BetaNoise for `shape`.
      key: PRNG key for rejected lanes only.
      counter: int folded into the fallback key (e.g. the step index).
    Returns:
      (*shape,) float32 Beta draws in [0, 1].
    """
    return jax.nn.sigmoid(beta_logit_from_noise(a, b, noise, key, counter))


def beta(key: jax.Array, a: jax.Array, b: jax.Array, n_candidates: int = 3) -> jax.Array:
    """Exact Beta(a, b) draws (drop-in for jax.random.beta, broadcast shape of a and b).

    Args:
      key: PRNG key.
      a, b: float32 arrays (broadcastable) of Beta parameters.
      n_candidates: pre-drawn proposals per gamma.
    Returns:
      float32 array of the broadcast shape.
    """
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    kn, kf = jax.random.split(key)
    return beta_from_noise(a, b, beta_noise(kn, a.shape, n_candidates), kf)


def beta_gaussian(z: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """Gaussian approximation of Beta(a, b) (NOT exact; explicit non-default option).

    pi = clip(mean + sd * z, 0, 1) with the Beta's mean and standard deviation.

    Args:
      z: (*shape,) standard normals.
      a, b: (*shape,) Beta parameters.
    Returns:
      (*shape,) approximate draws in [0, 1].
    """
    n = a + b
    mean = a / n
    sd = jnp.sqrt(a * b / (n * n * (n + 1.0)))
    return jnp.clip(mean + sd * z, 0.0, 1.0)
