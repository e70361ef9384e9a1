r"""Posterior predictive of output tokens for any (query, model), with the variance split.

For a posterior draw :math:`\phi_s = (\theta, \sigma, \nu)_s` the log-length is
:math:`y = \log(1 + t) \sim \text{StudentT}(\nu_s, x^\top\theta_s, \sigma_s)`. By the law of total variance

.. math::
    \operatorname{Var}(y) = \underbrace{E_s[\operatorname{Var}(y\mid\phi_s)]}_{\text{aleatoric}}
                          + \underbrace{\operatorname{Var}_s(E[y\mid\phi_s])}_{\text{epistemic}},\qquad
    \operatorname{Var}(y\mid\phi_s) = \sigma_s^2\,\nu_s/(\nu_s-2).

**Log space** (``var_log_*``): closed form per draw (finite because the model constrains :math:`\nu > 2`).

**Token space** (``var_tokens_*``, ``mean``): :math:`t = e^{y} - 1` has *no finite mean* under a Student-t
(:math:`E[e^{y}] = \infty` for every :math:`\nu`), so token-space moments are those of the length capped at
``max_tokens`` (every LLM has a maximum output length): :math:`\tilde t = \min(\max(e^y - 1, 0), \text{max\_tokens})`.
They are Monte Carlo: ``per_draw`` samples for each posterior draw give :math:`E[\tilde t\mid\phi_s]` and
:math:`\operatorname{Var}(\tilde t\mid\phi_s)`. With :math:`R` = ``per_draw`` samples per draw, the plain
:math:`\operatorname{Var}_s(\bar t_s)` of the draws' sample means is biased upwards by the Monte Carlo noise of each
mean, :math:`E_s[\operatorname{Var}(\tilde t\mid\phi_s)]/R` (a quarter of the aleatoric part at the default
:math:`R = 4`), and the plain within-draw variance is biased down by :math:`(R - 1)/R`; so aleatoric is the mean of
the unbiased (ddof 1) within-draw variances and epistemic is :math:`\operatorname{Var}_s(\bar t_s) - \text{aleatoric}/R`
(the usual one-way random-effects correction), clipped at 0 by capping aleatoric at the variance of all samples; the
two add up to the variance of all :math:`S R` samples exactly. With ``per_draw = 1`` there is no split (both NaN; the
total is ``var_tokens_samples``). The capped moments of :math:`e^y` under a Student-t have no closed form, hence the
Monte Carlo; log space has one (above). Median and quantiles are of the same samples (the cap only matters above
``max_tokens``).

Models absent from training: ``model_idx = -1``. With a known family (``family_idx >= 0``) the draw's
coefficients come from the family prior :math:`\theta \sim N(\mu_{g,s}, \tau_{w,s}^2)`,
:math:`\log\sigma \sim N(\lambda_{g,s}, s_{w,s}^2)`; with ``family_idx = -1`` from the global prior (a new family
drawn from :math:`N(\mu_{0,s}, \tau_{0,s}^2)`, then a new model in it). Such draws are made per row, so predictions
are marginal per row.

Student-t draws use Bailey's polar method written without rejection: with :math:`W, A` uniform,
:math:`T = \cos(2\pi A)\sqrt{\nu (W^{-2/\nu} - 1)}` is exactly :math:`t_\nu` (jax.random.t's gamma rejection
loop is ~20x slower here).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .fit import TokenPosterior

__all__ = ["Prediction", "predict", "student_t", "crps_from_samples", "DEFAULT_PROBS", "DEFAULT_MAX_TOKENS"]

DEFAULT_PROBS = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)
DEFAULT_MAX_TOKENS = 8192.0


class Prediction(NamedTuple):
    """Posterior predictive summaries, one row per (query, model) pair."""

    median: np.ndarray  # (N,) tokens
    mean: np.ndarray  # (N,) tokens, of the length capped at max_tokens
    quantiles: np.ndarray  # (N, Q) tokens at `probs`
    probs: np.ndarray  # (Q,)
    mean_log: np.ndarray  # (N,) E[log1p tokens]
    var_log_aleatoric: np.ndarray  # (N,)
    var_log_epistemic: np.ndarray  # (N,)
    var_tokens_aleatoric: np.ndarray  # (N,) capped tokens^2 (NaN with per_draw = 1)
    var_tokens_epistemic: np.ndarray  # (N,) (NaN with per_draw = 1)
    var_tokens_samples: np.ndarray  # (N,) variance of all predictive samples (= aleatoric + epistemic)
    crps: np.ndarray | None  # (N,) tokens, when y_true was given
    samples: np.ndarray | None  # (N, S * per_draw) capped tokens, when asked for

    @property
    def var_log_total(self) -> np.ndarray:
        return self.var_log_aleatoric + self.var_log_epistemic

    @property
    def var_tokens_total(self) -> np.ndarray:
        """Total token-space variance: aleatoric + epistemic, defined with per_draw = 1 too."""
        return self.var_tokens_samples


def student_t(key: jax.Array, df: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Exact Student-t draws from two uniforms (Bailey's polar method without rejection).

    Args:
      key: PRNG key.
      df: degrees of freedom, broadcastable to shape, > 0.
      shape: output shape.
    Returns:
      float32 array of `shape`.
    """
    k_w, k_a = jax.random.split(key)
    w = jax.random.uniform(k_w, shape, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    a = jax.random.uniform(k_a, shape)
    return jnp.cos(2.0 * jnp.pi * a) * jnp.sqrt(df * jnp.expm1(-2.0 / df * jnp.log(w)))


def _sorted_quantiles(xs: jax.Array, probs: tuple[float, ...]) -> jax.Array:
    """Quantiles of rows already sorted along axis 1, linear interpolation (numpy's default): (C, M) -> (C, Q)."""
    m = xs.shape[1]
    pos = jnp.asarray(probs, jnp.float32) * (m - 1)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, m - 1)
    w = pos - lo
    return xs[:, lo] * (1.0 - w) + xs[:, hi] * w


def _crps_sorted(xs: jax.Array, y: jax.Array) -> jax.Array:
    m = xs.shape[-1]
    i = jnp.arange(1, m + 1, dtype=jnp.float32)
    e_xx = 2.0 / (m * m) * jnp.sum((2.0 * i - m - 1.0) * xs, axis=-1)
    e_xy = jnp.mean(jnp.abs(xs - y[..., None]), axis=-1)
    return e_xy - 0.5 * e_xx


def crps_from_samples(samples: jax.Array, y: jax.Array) -> jax.Array:
    """Sample CRPS, E|X - y| - E|X - X'| / 2, per row.

    Args:
      samples: (N, M) predictive samples.
      y: (N,) observations.
    Returns:
      (N,) CRPS in the units of y.
    """
    return _crps_jit(jnp.asarray(samples, jnp.float32), jnp.asarray(y, jnp.float32))


@jax.jit
def _crps_jit(samples, y):
    return _crps_sorted(jnp.sort(samples, axis=-1), y)


@partial(jax.jit, static_argnames=("per_draw", "probs", "with_samples", "with_crps"))
def _predict_chunk(draws, z, model_idx, family_idx, y_true, key, max_tokens, *, per_draw, probs, with_samples,
                   with_crps):
    s = draws["nu"].shape[0]
    c, d = z.shape
    k1, k2, k3, k4 = jax.random.split(key, 4)
    known = (model_idx >= 0)[None, :]
    fam_known = (family_idx >= 0)[None, :]
    m = jnp.clip(model_idx, 0)
    g = jnp.clip(family_idx, 0)
    # coefficient and noise draws for each row: trained model, family prior or global prior
    e_fam = jax.random.normal(k1, (s, c, d))
    e_mod = jax.random.normal(k2, (s, c, d))
    u = jax.random.normal(k3, (2, s, c))
    tau_w = draws["tau_w"][:, None, :]
    theta_fam = draws["mu_fam"][:, g] + tau_w * e_mod
    theta_glob = draws["mu_0"][:, None, :] + draws["tau_0"][:, None, :] * e_fam + tau_w * e_mod
    theta = jnp.where(known[..., None], draws["theta"][:, m],
                      jnp.where(fam_known[..., None], theta_fam, theta_glob))
    s_w = draws["s_sig_w"][:, None]
    ls_fam = draws["mu_sig_fam"][:, g] + s_w * u[1]
    ls_glob = draws["mu_sig0"][:, None] + draws["s_sig0"][:, None] * u[0] + s_w * u[1]
    log_sigma = jnp.where(known, draws["log_sigma"][:, m], jnp.where(fam_known, ls_fam, ls_glob))
    loc = jnp.einsum("scd,cd->sc", theta, z)  # (S, C)
    scale = jnp.exp(log_sigma)
    nu = draws["nu"][:, None]
    # log space: closed form
    mean_log = loc.mean(0)
    var_log_epi = loc.var(0)
    var_log_alea = (scale**2 * nu / (nu - 2.0)).mean(0)
    # token space: Monte Carlo of the capped length
    t = student_t(k4, nu[:, None, :], (s, per_draw, c))
    tok = jnp.clip(jnp.expm1(loc[:, None, :] + scale[:, None, :] * t), 0.0, max_tokens)  # (S, R, C)
    mean_s = tok.mean(1)
    flat = tok.reshape(s * per_draw, c).T  # (C, S*R)
    var_tok_all = flat.var(1)
    if per_draw > 1:
        # unbiased within-draw variance; epistemic = Var_s(mean_s) - E_s[var_s] / R (the Monte Carlo noise of each
        # draw's mean, which the plain Var_s(mean_s) counts as epistemic), clipped at 0 so the two add up to var_tok_all
        var_tok_alea = jnp.minimum(tok.var(1, ddof=1).mean(0), var_tok_all)
        var_tok_epi = var_tok_all - var_tok_alea
    else:  # one sample per draw: no within-draw variance to estimate, so no split
        var_tok_alea = var_tok_epi = jnp.full((c,), jnp.nan, jnp.float32)
    xs = jnp.sort(flat, axis=1)  # one sort serves quantiles, median and CRPS
    q = _sorted_quantiles(xs, probs)
    out = dict(median=_sorted_quantiles(xs, (0.5,))[:, 0], mean=mean_s.mean(0), quantiles=q, mean_log=mean_log,
               var_log_aleatoric=var_log_alea, var_log_epistemic=var_log_epi, var_tokens_aleatoric=var_tok_alea,
               var_tokens_epistemic=var_tok_epi, var_tokens_samples=var_tok_all)
    if with_crps:
        out["crps"] = _crps_sorted(xs, y_true)
    if with_samples:
        out["samples"] = flat
    return out


def predict(
    post: TokenPosterior,
    features: np.ndarray,
    model_idx: np.ndarray,
    family_idx: np.ndarray | None = None,
    *,
    key: jax.Array | None = None,
    per_draw: int = 4,
    probs: tuple[float, ...] = DEFAULT_PROBS,
    max_tokens: float = DEFAULT_MAX_TOKENS,
    y_true: np.ndarray | None = None,
    return_samples: bool = False,
    chunk_rows: int = 1024,
) -> Prediction:
    """Posterior predictive summaries of output tokens for each (query, model) row.

    Args:
      post: fitted TokenPosterior (S draws).
      features: (N, F) raw query features (standardised with the fit's statistics).
      model_idx: (N,) int, a trained model index in [0, K), or -1 for a model absent from training.
      family_idx: (N,) int family of each row (used when model_idx = -1; -1 = unknown family: global prior).
        Default: the trained model's family, -1 for unknown models.
      key: PRNG key (default key(0)).
      per_draw: predictive samples per posterior draw (S * per_draw samples per row); the token-space split into
        aleatoric and epistemic needs >= 2 (NaN with 1).
      probs: quantile levels (static; each new tuple compiles once).
      max_tokens: cap of the output length for token-space moments.
      y_true: optional (N,) observed tokens (finite, >= 0): fills `crps`.
      return_samples: also return the (N, S * per_draw) samples.
      chunk_rows: rows per compiled call (rows are padded to a multiple of it).
    Returns:
      Prediction.
    Raises:
      ValueError: features not a non-empty (N, F) array or not finite, indices out of range, y_true not (N,)
        finite counts >= 0.
    """
    x = np.asarray(features, np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, F) array, got shape {x.shape}")
    n = x.shape[0]
    mi = np.asarray(model_idx).astype(np.int32).reshape(-1)
    if mi.shape[0] != n:
        raise ValueError(f"model_idx has {mi.shape[0]} rows for {n} feature rows")
    if np.any(mi >= post.n_models) or np.any(mi < -1):
        raise ValueError(f"model_idx must be -1 or in [0, {post.n_models}); got [{mi.min()}, {mi.max()}]")
    if family_idx is None:
        fi = np.where(mi >= 0, post.family_of_model[np.clip(mi, 0, None)], -1).astype(np.int32)
    else:
        fi = np.asarray(family_idx).astype(np.int32).reshape(-1)
        if fi.shape[0] != n or np.any(fi >= post.n_families) or np.any(fi < -1):
            raise ValueError(f"family_idx must be ({n},) in [-1, {post.n_families})")
    if not np.all(np.isfinite(x)):
        r, col = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"NaN/inf feature at row {r}, column {col}")
    z = post.standardizer.transform(x)
    design = np.concatenate([np.ones((n, 1), np.float32), z], axis=1)
    key = jax.random.key(0) if key is None else key
    with_crps = y_true is not None
    if y_true is None:
        yt = np.zeros(n, np.float32)
    else:
        yt = np.asarray(y_true, np.float64)
        if yt.shape != (n,):
            raise ValueError(f"y_true must be ({n},) observed tokens, one per feature row; got shape {yt.shape}")
        bad = ~np.isfinite(yt) | (yt < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"y_true[{i}] = {yt[i]} is not a finite token count >= 0 ({int(bad.sum())} bad values)")
        yt = yt.astype(np.float32)
    # chunk length: chunk_rows, or the next power of two >= n for small inputs (a bounded set of compilations)
    c = chunk_rows if n >= chunk_rows else max(16, 1 << (n - 1).bit_length())
    npad = -(-n // c) * c
    pad = npad - n
    design = np.concatenate([design, np.zeros((pad, design.shape[1]), np.float32)])
    mi_p = np.concatenate([mi, np.zeros(pad, np.int32)])
    fi_p = np.concatenate([fi, np.zeros(pad, np.int32)])
    yt = np.concatenate([yt, np.zeros(pad, np.float32)])
    draws = {k: jnp.asarray(v) for k, v in post.draws.items()}
    parts = []
    for i, k_chunk in zip(range(0, npad, c), jax.random.split(key, max(npad // c, 1))):
        sl = slice(i, i + c)
        out = _predict_chunk(draws, design[sl], mi_p[sl], fi_p[sl], yt[sl], k_chunk, jnp.float32(max_tokens),
                             per_draw=per_draw, probs=tuple(float(p) for p in probs), with_samples=return_samples,
                             with_crps=with_crps)
        parts.append(jax.device_get(out))
    cat = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]} if parts else {}
    return Prediction(
        median=cat["median"], mean=cat["mean"], quantiles=cat["quantiles"], probs=np.asarray(probs, np.float32),
        mean_log=cat["mean_log"], var_log_aleatoric=cat["var_log_aleatoric"],
        var_log_epistemic=cat["var_log_epistemic"], var_tokens_aleatoric=cat["var_tokens_aleatoric"],
        var_tokens_epistemic=cat["var_tokens_epistemic"], var_tokens_samples=cat["var_tokens_samples"],
        crps=cat.get("crps"), samples=cat.get("samples"))
