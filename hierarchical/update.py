r"""Cheap posterior update for a model that was absent from training, after n observations of it.

Choice: a closed-form Gaussian update of the new model's coefficients given its family prior (no SVI, no
recompilation, milliseconds), made robust to the Student-t likelihood by EM weights:

1. Prior from the fitted posterior, moment-matched to a Gaussian:
   :math:`\theta \sim N(m_0, V_0)`, :math:`m_0 = E_s[\mu_{g,s}]`,
   :math:`V_0 = \operatorname{Cov}_s(\mu_{g,s}) + \operatorname{diag} E_s[\tau_{w,s}^2]` (family known), or the
   same one level up (:math:`\mu_0`, :math:`\tau_0` added) for an unknown family; noise prior
   :math:`\sigma^2 \sim \text{Scaled-Inv-}\chi^2(\nu_0, s_0^2)` matched in log space to the fitted (log-normal)
   prior of the noise scale, :math:`\log\sigma = \lambda_{g,s} + s_{w,s} v` (`noise_prior`): with
   :math:`m, v` the mean and variance of :math:`\log\sigma` over draws,
   :math:`\psi'(\nu_0/2) = \operatorname{Var}\log\sigma^2 = 4v` and
   :math:`\log s_0^2 = 2m + \psi(\nu_0/2) + \log 2 - \log\nu_0` (then :math:`\log\sigma^2` has the prior's mean and
   variance). A fixed :math:`\nu_0 = 4` had a far heavier tail than the fitted prior (:math:`\nu_0 \approx 60` when
   :math:`s_w \approx 0.1`), so the forecast got wider after the first observation than before it.
2. EM for the Student-t (the t is a scale mixture of normals; :math:`\nu` fixed at its posterior mean): weights
   :math:`w_i = (\nu + 1)/(\nu + r_i^2/\sigma^2)`, then the conjugate normal update
   :math:`V_n = (V_0^{-1} + X^\top W X/\sigma^2)^{-1}`, :math:`m_n = V_n (V_0^{-1} m_0 + X^\top W y/\sigma^2)`, and
   :math:`\sigma^2 = (\nu_0 s_0^2 + \sum_i w_i r_i^2 + \operatorname{tr}(X^\top W X V_n))/(\nu_0 + n)`; 30 iterations.
3. Draws: :math:`\theta_s \sim N(m_n, V_n)`, :math:`\sigma_s^2 \sim \text{Scaled-Inv-}\chi^2(\nu_0 + n, \sigma^2)`,
   :math:`\nu_s` from the fit. With n = 0 the draws are exactly the family (or global) prior draws used by `predict`.

The result is a TokenPosterior with one more model (index K), so `predict` serves it unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize, special

from .fit import TokenPosterior

__all__ = ["prior_moments", "noise_prior", "add_new_model"]


def prior_moments(post: TokenPosterior, family: int | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Gaussian moments of a new model's coefficients and its prior log noise scale.

    Args:
      post: fitted posterior.
      family: family index in [0, G), or None for an unknown family (global prior).
    Returns:
      (m0 (D,), V0 (D, D), log_s0) in float64.
    """
    d = post.draws
    tw2 = np.mean(d["tau_w"].astype(np.float64) ** 2, axis=0)
    if family is None:
        centre = d["mu_0"].astype(np.float64)
        extra = tw2 + np.mean(d["tau_0"].astype(np.float64) ** 2, axis=0)
        log_s0 = float(np.mean(d["mu_sig0"]))
    else:
        centre = d["mu_fam"][:, family].astype(np.float64)
        extra = tw2
        log_s0 = float(np.mean(d["mu_sig_fam"][:, family]))
    v0 = np.cov(centre, rowvar=False) + np.diag(extra)
    return centre.mean(0), v0, log_s0


def noise_prior(post: TokenPosterior, family: int | None) -> tuple[float, float]:
    """Scaled-Inv-chi^2(nu0, s0^2) prior of a new model's sigma^2, matched to the fitted prior of log sigma.

    The fitted prior is log sigma = lambda_g + s_w v (family known) or mu_sig0 + s_sig0 u + s_w v (unknown family),
    over the posterior draws; nu0 and s0^2 give log sigma^2 the same mean and variance (digamma/trigamma moments of
    log chi^2).

    Args:
      post: fitted posterior.
      family: family index in [0, G), or None for an unknown family (global prior).
    Returns:
      (nu0, s0^2) as floats.
    """
    d = post.draws
    sw2 = np.mean(d["s_sig_w"].astype(np.float64) ** 2)
    if family is None:
        centre = d["mu_sig0"].astype(np.float64)
        v = centre.var() + np.mean(d["s_sig0"].astype(np.float64) ** 2) + sw2
    else:
        centre = d["mu_sig_fam"][:, family].astype(np.float64)
        v = centre.var() + sw2
    m = float(centre.mean())
    # trigamma(nu0 / 2) = 4 v: trigamma is decreasing from inf to 0, so the root is unique (bracketed in log nu0)
    target = max(4.0 * float(v), 1e-10)
    nu0 = float(np.exp(optimize.brentq(lambda a: special.polygamma(1, 0.5 * np.exp(a)) - target, -10.0, 30.0)))
    log_s0sq = 2.0 * m + special.digamma(0.5 * nu0) + np.log(2.0) - np.log(nu0)
    return nu0, float(np.exp(log_s0sq))


def add_new_model(
    post: TokenPosterior,
    features: np.ndarray,
    tokens: np.ndarray,
    family: int | None,
    *,
    seed: int = 0,
    n_iter: int = 30,
) -> TokenPosterior:
    """Posterior of a new model after observing it on n queries (n may be 0), appended as model index K.

    Args:
      post: fitted posterior with K models.
      features: (n, F) raw features of the observed queries (n >= 0); a flat (F,) vector is one query.
      tokens: (n,) observed output tokens of the new model.
      family: its family index, or None if unknown (global prior).
      seed: seed of the posterior draws.
      n_iter: EM iterations.
    Returns:
      TokenPosterior with K + 1 models; the new one is index K (family_of_model[K] = family or -1).
    Raises:
      ValueError: on features not (n, F), shape mismatch, NaN features or bad tokens or family index.
    """
    f = post.standardizer.mean.shape[0]
    x = np.asarray(features, np.float64)
    if x.ndim == 1 and x.shape[0] == f:  # one query given as a flat (F,) vector
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != f:
        raise ValueError(f"add_new_model: features must be (n, {f}) (F = {f} raw features per row), got shape "
                         f"{x.shape}")
    t = np.asarray(tokens, np.float64).reshape(-1)
    n = x.shape[0]
    if t.shape[0] != n:
        raise ValueError(f"add_new_model: {n} feature rows but {t.shape[0]} tokens")
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("add_new_model: features must be finite and tokens finite counts >= 0")
    if family is not None and (isinstance(family, (bool, np.bool_)) or not isinstance(family, (int, np.integer))):
        raise ValueError(f"add_new_model: family must be an int index or None, got {family!r}")
    if family is not None and not 0 <= family < post.n_families:
        raise ValueError(f"add_new_model: family {family} not in [0, {post.n_families})")
    rng = np.random.default_rng(seed)
    d = post.draws
    s, dim = d["theta"].shape[0], d["theta"].shape[2]
    if n == 0:
        e = rng.standard_normal((s, dim))
        u = rng.standard_normal((2, s))
        if family is None:
            e2 = rng.standard_normal((s, dim))
            theta = d["mu_0"] + d["tau_0"] * e2 + d["tau_w"] * e
            log_sigma = d["mu_sig0"] + d["s_sig0"] * u[0] + d["s_sig_w"] * u[1]
        else:
            theta = d["mu_fam"][:, family] + d["tau_w"] * e
            log_sigma = d["mu_sig_fam"][:, family] + d["s_sig_w"] * u[1]
    else:
        m0, v0, _ = prior_moments(post, family)
        nu0, s0sq = noise_prior(post, family)
        z = np.concatenate([np.ones((n, 1)), post.standardizer.transform(x).astype(np.float64)], axis=1)
        y = np.log1p(t)
        nu = float(np.mean(d["nu"]))
        p0 = np.linalg.inv(v0)
        sig2, m = s0sq, m0
        for _ in range(n_iter):
            r = y - z @ m
            w = (nu + 1.0) / (nu + r**2 / sig2)
            xtwx = z.T @ (w[:, None] * z)
            vn = np.linalg.inv(p0 + xtwx / sig2)
            m = vn @ (p0 @ m0 + z.T @ (w * y) / sig2)
            r = y - z @ m
            sig2 = (nu0 * s0sq + np.sum(w * r**2) + np.trace(xtwx @ vn)) / (nu0 + n)
        vn = 0.5 * (vn + vn.T)
        theta = rng.multivariate_normal(m, vn, size=s)
        sig2_s = (nu0 + n) * sig2 / rng.chisquare(nu0 + n, size=s)
        log_sigma = 0.5 * np.log(sig2_s)
    draws = dict(d)
    draws["theta"] = np.concatenate([d["theta"], theta[:, None, :].astype(np.float32)], axis=1)
    draws["log_sigma"] = np.concatenate([d["log_sigma"], log_sigma[:, None].astype(np.float32)], axis=1)
    fam = np.concatenate([post.family_of_model, [-1 if family is None else family]]).astype(np.int32)
    meta = dict(post.meta, new_model=dict(n_obs=int(n), family=None if family is None else int(family),
                                          method="EM-weighted conjugate normal"))
    return dataclasses.replace(post, draws=draws, family_of_model=fam, meta=meta)
