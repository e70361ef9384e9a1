"""Exact, fast Beta sampling for the routing kernel.

Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b). Gammas use Marsaglia & Tsang (2000):
for shape s >= 1 let d = s - 1/3, c = 1/sqrt(9 d); propose x ~ N(0, 1), v = (1 + c x)^3 and accept
d v when v > 0 and log u < x^2 / 2 + d (1 - v + log v), u ~ U(0, 1). Shapes s < BOOST_BELOW (4) are
boosted: Gamma(s) = Gamma(s + 1) * U^(1/s) (exact for any s > 0; needed for s < 1 and it raises the
acceptance rate for small shapes). Everything is done in log space, so Beta(0.05, 0.05) does not
underflow: log X - log Y is formed and the Beta draw is sigmoid(log X - log Y).

Randomness is counter-based. A draw's noise is one 64-bit *seed* (two uint32 words, e.g. one per
bandit step, drawn in bulk for a chunk of steps by :func:`noise_seeds`). Proposal j of lane i is
threefry2x32(seed, (i, j)): its first word gives the normal x, its second the accept uniform u; the
boost uniform is threefry2x32(seed, (i, BOOST_STREAM)). So every lane owns an infinite i.i.d. stream
of proposals, computed by plain integer arithmetic that XLA fuses with the accept test (no noise
arrays in memory, no PRNG loop: jax's threefry lowers to a rolled loop on CPU that does not fuse).
Why it stays exact: proposals 0 .. n_candidates-1 are tried in order; lanes where all were rejected
continue in a ``lax.while_loop`` with proposals n_candidates, n_candidates+1, ... of the same stream
until accepted, so every result is the first accepted proposal of an i.i.d. sequence, i.e. exact
rejection sampling. Under vmap a while-loop whose predicate is false everywhere costs one check.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "threefry2x32",
    "noise_seeds",
    "uniform_from_bits",
    "log_uniform_from_bits",
    "normal_from_bits",
    "seed_uniforms",
    "seed_normals",
    "gamma_candidate",
    "GammaNoise",
    "gamma_proposals",
    "beta_proposals",
    "log_gamma_from_noise",
    "log_gamma_from_seed",
    "beta_logit_from_noise",
    "beta_logit_from_seed",
    "beta_from_noise",
    "beta_from_seed",
    "beta",
    "beta_gaussian",
]

BOOST_BELOW = 4.0  # shapes below this are sampled as Gamma(s + 1) * U^(1/s)
BOOST_STREAM = 0x80000000  # counter word of the boost uniforms (proposals use 0, 1, 2, ...)
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0, k1, x0, x1):
    """The Threefry-2x32 block cipher (20 rounds, as jax.random), written as fusible integer ops.

    Args:
      k0, k1: uint32 key words (broadcastable). x0, x1: uint32 counter words (broadcastable).
    Returns:
      (y0, y1) uint32 arrays of the broadcast shape.
    """
    k0, k1, x0, x1 = (jnp.asarray(v, jnp.uint32) for v in (k0, k1, x0, x1))
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for r in range(5):
        for rot in _ROTATIONS[r % 2]:
            x0 = x0 + x1
            x1 = (x1 << jnp.uint32(rot)) | (x1 >> jnp.uint32(32 - rot))
            x1 = x0 ^ x1
        x0 = x0 + ks[(r + 1) % 3]
        x1 = x1 + ks[(r + 2) % 3] + jnp.uint32(r + 1)
    return x0, x1


def noise_seeds(key: jax.Array, shape: tuple[int, ...] = ()) -> jax.Array:
    """Independent 64-bit seeds (one per draw call, e.g. per step of a chunk) from a PRNG key.

    Args:
      key: PRNG key.
      shape: leading shape, e.g. (steps,).
    Returns:
      (*shape, 2) uint32 seeds.
    """
    return jax.random.bits(key, (*shape, 2), jnp.uint32)


def uniform_from_bits(bits: jax.Array) -> jax.Array:
    """U[0, 1) float32 on the 2^-23 grid from uint32 random bits (as jax.random.uniform does).

    Args:
      bits: uint32 array.
    Returns:
      float32 array of the same shape.
    """
    fl = jax.lax.bitcast_convert_type((bits >> jnp.uint32(9)) | jnp.uint32(0x3F800000), jnp.float32)
    return fl - 1.0


def log_uniform_from_bits(bits: jax.Array) -> jax.Array:
    """log U with U uniform on (0, 1] (the 2^-23 grid), finite everywhere.

    Args:
      bits: uint32 array.
    Returns:
      float32 array of the same shape, <= 0.
    """
    return jnp.log(1.0 - uniform_from_bits(bits))  # 1 - u is exact on the grid and > 0


def normal_from_bits(bits: jax.Array) -> jax.Array:
    """Standard normals from uint32 bits (inverse CDF, as jax.random.normal does).

    Args:
      bits: uint32 array.
    Returns:
      float32 array of the same shape.
    """
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = jnp.maximum(2.0 * uniform_from_bits(bits) - 1.0, lo)  # U(-1, 1)
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)


def _lanes(shape):
    return jax.lax.iota(jnp.uint32, int(np.prod(shape, dtype=np.int64))).reshape(shape)


def seed_uniforms(seed: jax.Array, shape: tuple[int, ...], stream: int) -> jax.Array:
    """U[0, 1) draws of `shape` from a seed; distinct `stream`s (< BOOST_STREAM, > proposals) are independent.

    Args:
      seed: (2,) uint32 seed. shape: output shape. stream: counter word identifying the use.
    Returns:
      float32 array of `shape`.
    """
    y0, _ = threefry2x32(seed[..., 0], seed[..., 1], _lanes(shape), jnp.uint32(stream))
    return uniform_from_bits(y0)


def seed_normals(seed: jax.Array, shape: tuple[int, ...], stream: int) -> jax.Array:
    """Standard normals of `shape` from a seed (see `seed_uniforms`).

    Args:
      seed: (2,) uint32 seed. shape: output shape. stream: counter word identifying the use.
    Returns:
      float32 array of `shape`.
    """
    y0, _ = threefry2x32(seed[..., 0], seed[..., 1], _lanes(shape), jnp.uint32(stream))
    return normal_from_bits(y0)


def gamma_candidate(seed: jax.Array, shape: tuple[int, ...], j) -> tuple[jax.Array, jax.Array]:
    """Marsaglia-Tsang proposal j of every lane: (standard normal x, log of the accept uniform).

    Args:
      seed: (2,) uint32 seed. shape: lane shape. j: proposal index (int or traced uint32).
    Returns:
      (x, log_u), float32 arrays of `shape`.
    """
    y0, y1 = threefry2x32(seed[..., 0], seed[..., 1], _lanes(shape), jnp.asarray(j, jnp.uint32))
    return normal_from_bits(y0), log_uniform_from_bits(y1)


def _mt_d(s):
    """(boosted, d) of Marsaglia-Tsang for gamma shapes s: shapes below BOOST_BELOW are sampled as
    Gamma(s + 1) * U^(1/s), and d = (boosted shape) - 1/3."""
    boosted = s < BOOST_BELOW
    return boosted, jnp.where(boosted, s + 1.0, s) - 1.0 / 3.0


def _mt_candidate(d, c, x, log_u):
    """One Marsaglia-Tsang proposal: returns (accepted, log(d v))."""
    y = c * x
    # v - 1 = (1 + y)^3 - 1 written without cancellation; 1 - v + log v = log1p(w) - w.
    w = y * (3.0 + y * (3.0 + y))
    ok = y > -1.0
    log1p_y = jnp.log1p(jnp.where(ok, y, 0.0))
    log_v = 3.0 * log1p_y
    accept = ok & (log_u < 0.5 * x * x + d * (log_v - w))
    return accept, log_v


class GammaNoise(NamedTuple):
    """The first proposals of every lane, materialised (e.g. in bulk for a chunk of steps).

    Proposals j >= n_candidates are hashed from the seed inside the fallback loop; the stream is the
    same either way (`gamma_candidate`).
    """

    x: jax.Array  # (n_candidates, *shape) float32 standard normals of proposals 0 .. n_candidates-1
    log_u: jax.Array  # (n_candidates, *shape) float32 log accept uniforms
    log_boost: jax.Array  # (*shape,) float32 log of the boost uniform


def gamma_proposals(seed: jax.Array, shape: tuple[int, ...], n_candidates: int = 3) -> GammaNoise:
    """Proposals 0 .. n_candidates-1 and the boost uniform of every lane of `shape` (no loop).

    Materialising them (in bulk, vmapped over the steps of a chunk) keeps XLA from duplicating the
    hash into every consumer of a proposal.

    Args:
      seed: (2,) uint32 seed. shape: lane shape. n_candidates: static count, >= 1.
    Returns:
      GammaNoise.
    """
    if n_candidates < 1:
        raise ValueError(f"gamma_proposals: n_candidates must be >= 1, got {n_candidates}")
    seed = jnp.asarray(seed, jnp.uint32)
    shape = tuple(shape)
    j = jax.lax.broadcasted_iota(jnp.uint32, (n_candidates, *shape), 0)
    y0, y1 = threefry2x32(seed[..., 0], seed[..., 1], _lanes(shape)[None], j)
    b0, _ = threefry2x32(seed[..., 0], seed[..., 1], _lanes(shape), jnp.uint32(BOOST_STREAM))
    return GammaNoise(normal_from_bits(y0), log_uniform_from_bits(y1), log_uniform_from_bits(b0))


def beta_proposals(seed: jax.Array, shape: tuple[int, ...], n_candidates: int = 3) -> GammaNoise:
    """`gamma_proposals` for the gammas X, Y of a Beta array of `shape` (side by side on the last axis).

    Args:
      seed: (2,) uint32 seed. shape: Beta shape S. n_candidates: static count.
    Returns:
      GammaNoise of lane shape (*S[:-1], 2 * S[-1]) ((2,) for scalars).
    """
    shape = tuple(shape)
    return gamma_proposals(seed, (*shape[:-1], 2 * shape[-1]) if shape else (2,), n_candidates)


def log_gamma_from_noise(shape_param: jax.Array, noise: GammaNoise, seed: jax.Array) -> jax.Array:
    """Exact log Gamma(shape_param, 1) draws from materialised first proposals and their seed.

    Args:
      shape_param: (*shape,) float32 gamma shapes, > 0.
      noise: `gamma_proposals(seed, shape, n_candidates)`.
      seed: (2,) uint32 seed the noise came from (proposals n_candidates, ... for rejected lanes).
    Returns:
      (*shape,) float32 log of a Gamma(shape_param) draw.
    """
    s = jnp.asarray(shape_param, jnp.float32)
    seed = jnp.asarray(seed, jnp.uint32)
    if seed.shape != (2,):
        raise ValueError(f"log_gamma_from_noise: seed must have shape (2,), got {seed.shape}")
    if noise.x.shape[1:] != s.shape:
        raise ValueError(f"log_gamma_from_noise: noise.x has shape {noise.x.shape}, expected "
                         f"(n_candidates, *{s.shape})")
    # Gamma(s) = Gamma(s + 1) * U^(1/s) holds for every s > 0; boosting small shapes raises the
    # acceptance rate (0.95 at shape 1, 0.99 at shape 4) so the fallback loop is rarely entered.
    boosted, d = _mt_d(s)
    c = jax.lax.rsqrt(9.0 * d)
    n_candidates = noise.x.shape[0]
    val = jnp.zeros_like(d)
    # a lane with a non-finite shape (NaN prior or reward upstream) can never accept: it is done at once and its
    # draw is NaN, instead of looping forever
    done = ~jnp.isfinite(d)
    # first accepted proposal wins: try proposals from the last to the first
    for j in range(n_candidates - 1, -1, -1):
        acc, v = _mt_candidate(d, c, noise.x[j], noise.log_u[j])
        val = jnp.where(acc, v, val)
        done = done | acc

    def cond(carry):
        _, _, done = carry
        return ~jnp.all(done)

    def body(carry):
        j, val, done = carry
        acc, v = _mt_candidate(d, c, *gamma_candidate(seed, d.shape, j))
        return j + 1, jnp.where(acc & ~done, v, val), done | acc

    _, val, _ = jax.lax.while_loop(cond, body, (jnp.uint32(n_candidates), val, done))
    return jnp.log(d) + val + jnp.where(boosted, noise.log_boost / s, 0.0)


def log_gamma_from_seed(shape_param: jax.Array, seed: jax.Array, n_candidates: int = 3) -> jax.Array:
    """Exact log Gamma(shape_param, 1) draws for every lane of `shape_param` from one seed.

    Args:
      shape_param: (*shape,) float32 gamma shapes, > 0.
      seed: (2,) uint32 seed (the draw's noise).
      n_candidates: static number of proposals tried without a loop (rejected lanes then loop).
    Returns:
      (*shape,) float32 log of a Gamma(shape_param) draw.
    """
    s = jnp.asarray(shape_param, jnp.float32)
    return log_gamma_from_noise(s, gamma_proposals(seed, s.shape, n_candidates), seed)


def beta_logit_from_noise(a: jax.Array, b: jax.Array, noise: GammaNoise, seed: jax.Array) -> jax.Array:
    """Exact log(X / Y) = logit of a Beta(a, b) draw from materialised proposals (`beta_proposals`).

    X and Y are the lanes of one gamma array [a, b] (concatenated on the last axis, so one pass and
    one fallback loop serve both; under vmap that concatenation needs no transpose).

    Args:
      a, b: (*shape,) float32 Beta parameters, > 0 (0.05 .. 1e5 tested).
      noise: `beta_proposals(seed, shape, n_candidates)`.
      seed: (2,) uint32 seed of the noise.
    Returns:
      (*shape,) float32 logits; sigmoid of them is Beta(a, b).
    """
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    if a.ndim == 0:
        lg = log_gamma_from_noise(jnp.stack([a, b]), noise, seed)
        return lg[0] - lg[1]
    lg = log_gamma_from_noise(jnp.concatenate([a, b], -1), noise, seed)
    k = a.shape[-1]
    return lg[..., :k] - lg[..., k:]


def beta_from_noise(a: jax.Array, b: jax.Array, noise: GammaNoise, seed: jax.Array) -> jax.Array:
    """Exact Beta(a, b) draws from materialised proposals (`beta_proposals`) and their seed.

    Args:
      a, b: (*shape,) float32 Beta parameters, > 0.
      noise: `beta_proposals(seed, shape, n_candidates)`. seed: (2,) uint32.
    Returns:
      (*shape,) float32 Beta draws in [0, 1].
    """
    return jax.nn.sigmoid(beta_logit_from_noise(a, b, noise, seed))


def beta_logit_from_seed(a: jax.Array, b: jax.Array, seed: jax.Array, n_candidates: int = 3) -> jax.Array:
    """Exact logit of a Beta(a, b) draw from one seed (`beta_logit_from_noise` with fresh proposals).

    Args:
      a, b: (*shape,) float32 Beta parameters, > 0.
      seed: (2,) uint32 seed.
      n_candidates: proposals per gamma tried without a loop (static).
    Returns:
      (*shape,) float32 logits.
    """
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    return beta_logit_from_noise(a, b, beta_proposals(seed, a.shape, n_candidates), seed)


def beta_from_seed(a: jax.Array, b: jax.Array, seed: jax.Array, n_candidates: int = 3) -> jax.Array:
    """Exact Beta(a, b) draws from one seed.

    Args:
      a, b: (*shape,) float32 Beta parameters, > 0.
      seed: (2,) uint32 seed.
      n_candidates: proposals per gamma tried without a loop (static).
    Returns:
      (*shape,) float32 Beta draws in [0, 1].
    """
    return jax.nn.sigmoid(beta_logit_from_seed(a, b, seed, n_candidates))


def beta(key: jax.Array, a: jax.Array, b: jax.Array, n_candidates: int = 3) -> jax.Array:
    """Exact Beta(a, b) draws (drop-in for jax.random.beta, broadcast shape of a and b).

    Args:
      key: PRNG key.
      a, b: float32 arrays (broadcastable) of Beta parameters.
      n_candidates: proposals per gamma tried without a loop.
    Returns:
      float32 array of the broadcast shape.
    """
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    return beta_from_seed(a, b, noise_seeds(key), n_candidates)


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
