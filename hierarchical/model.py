r"""The hierarchical output-token model (NumPyro), pooled model -> family -> global.

Notation: row :math:`i` is a (query, model) pair with model :math:`k = k(i)` of family :math:`g = g(k)`;
:math:`x_i \in \mathbb{R}^D` is the standardised query-feature vector with a leading 1 (intercept),
:math:`y_i = \log(1 + \text{tokens}_i)`.

.. math::

    \mu_0 &\sim \mathcal{N}(m_0, s_0^2) \in \mathbb{R}^D, \qquad
        m_0 = (\bar y, 0, \dots, 0),\ s_0 = (2, 1, \dots, 1)            && \text{global coefficients} \\
    \tau_0 &\sim \text{HalfNormal}(0.5)^D                                 && \text{spread of families} \\
    \mu_g &= \mu_0 + \tau_0 \odot z_g, \quad z_g \sim \mathcal{N}(0, I)    && \text{family coefficients} \\
    \tau_w &\sim \text{HalfNormal}(0.5)^D                                 && \text{spread of models in a family} \\
    \theta_k &= \mu_{g(k)} + \tau_w \odot z_k, \quad z_k \sim \mathcal{N}(0, I) && \text{model coefficients} \\
    m_\sigma &\sim \mathcal{N}(\log 0.5, 1), \quad s_\sigma, s_w \sim \text{HalfNormal}(0.5) \\
    \lambda_g &= m_\sigma + s_\sigma u_g, \quad u_g \sim \mathcal{N}(0, 1)  && \text{family log noise scale} \\
    \log\sigma_k &= \lambda_{g(k)} + s_w v_k, \quad v_k \sim \mathcal{N}(0, 1) && \text{model log noise scale} \\
    \nu &= 2 + \tilde\nu, \quad \tilde\nu \sim \text{Gamma}(2, 0.1)         && \text{degrees of freedom, } \nu > 2 \\
    y_i &\sim \text{StudentT}(\nu,\ x_i^\top \theta_{k(i)},\ \sigma_{k(i)})

So :math:`\theta_k \sim \mathcal{N}(\mu_g, \operatorname{diag}\tau_w^2)` and
:math:`\mu_g \sim \mathcal{N}(\mu_0, \operatorname{diag}\tau_0^2)`: the non-centred form (``z``, ``u``, ``v``
standard normal) suits SVI. :math:`\tau_w` is shared by all families (most families have only 1-3 models, too few
to identify a per-family spread). :math:`\nu > 2` keeps the log-space variance :math:`\sigma^2\nu/(\nu-2)` finite, so
the variance decomposition in log space is always defined.

Censoring: the bundled data carry no "hit the max length" flag (no finish reason), so censoring is optional. Given
``censor_log`` (log1p of the per-row cap) and ``is_censored`` (1 where the observed length reached the cap), a
censored row contributes :math:`\log P(y > c) = \log(1 - F_t(c))` instead of the density (with no gradient with
respect to :math:`\nu`: jax's incomplete beta function has none in its shape arguments, so :math:`\nu` is learnt
from the uncensored rows; the gradient in the location and scale is the exact :math:`-\text{pdf}`).

Rows carry a ``weight`` (1 for data, 0 for padding), so tables padded to a fixed size reuse one compiled SVI step.
With ``batch_size`` the likelihood is estimated from ``batch_size`` rows drawn uniformly with replacement among the
real rows and scaled by ``n_real / batch_size``: an unbiased minibatch ELBO.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

__all__ = ["token_model", "derive", "LATENT_SITES", "DERIVED_SITES"]

LATENT_SITES = ("mu_0", "tau_0", "z_fam", "tau_w", "z_model", "mu_sig0", "s_sig0", "z_sig_fam", "s_sig_w",
                "z_sig", "nu_m2")
DERIVED_SITES = ("mu_0", "tau_0", "mu_fam", "tau_w", "theta", "mu_sig0", "s_sig0", "mu_sig_fam", "s_sig_w",
                 "log_sigma", "nu")

SIGMA_PRIOR_LOC = math.log(0.5)


def derive(latents: Mapping[str, jax.Array], family_of_model: jax.Array) -> dict[str, jax.Array]:
    """Map non-centred latents to the model's interpretable parameters (works with any leading batch dims).

    Args:
      latents: the LATENT_SITES, e.g. z_model (..., K, D), z_fam (..., G, D), mu_0 (..., D), nu_m2 (...,).
      family_of_model: (K,) int32 family index of each model.
    Returns:
      dict with mu_0 (..., D), tau_0 (..., D), mu_fam (..., G, D), tau_w (..., D), theta (..., K, D),
      mu_sig0 (...,), s_sig0 (...,), mu_sig_fam (..., G), s_sig_w (...,), log_sigma (..., K), nu (...,).
    """
    mu_0, tau_0, tau_w = latents["mu_0"], latents["tau_0"], latents["tau_w"]
    mu_fam = mu_0[..., None, :] + tau_0[..., None, :] * latents["z_fam"]
    theta = jnp.take(mu_fam, family_of_model, axis=-2) + tau_w[..., None, :] * latents["z_model"]
    mu_sig0, s_sig0, s_sig_w = latents["mu_sig0"], latents["s_sig0"], latents["s_sig_w"]
    mu_sig_fam = mu_sig0[..., None] + s_sig0[..., None] * latents["z_sig_fam"]
    log_sigma = jnp.take(mu_sig_fam, family_of_model, axis=-1) + s_sig_w[..., None] * latents["z_sig"]
    return dict(mu_0=mu_0, tau_0=tau_0, mu_fam=mu_fam, tau_w=tau_w, theta=theta, mu_sig0=mu_sig0, s_sig0=s_sig0,
                mu_sig_fam=mu_sig_fam, s_sig_w=s_sig_w, log_sigma=log_sigma, nu=2.0 + latents["nu_m2"])


@jax.custom_jvp
def _t_sf(z: jax.Array, nu: jax.Array) -> jax.Array:
    """Student-t survival function P(T > z); its derivative in z is -pdf(z) (exact and NaN-free; jax's incomplete
    beta function has no gradient in its shape arguments and an unstable one near its ends), none in nu."""
    nu = jax.lax.stop_gradient(nu)
    return 1.0 - dist.StudentT(nu).cdf(z)


@_t_sf.defjvp
def _t_sf_jvp(primals, tangents):
    z, nu = primals
    dz, _ = tangents
    nu = jax.lax.stop_gradient(nu)
    return _t_sf(z, nu), -jnp.exp(dist.StudentT(nu).log_prob(z)) * dz


def token_model(
    x: jax.Array,
    model_idx: jax.Array,
    y: jax.Array,
    weight: jax.Array,
    censor_log: jax.Array,
    is_censored: jax.Array,
    family_of_model: jax.Array,
    prior_loc: jax.Array,
    *,
    n_models: int,
    n_families: int,
    batch_size: int | None = None,
    censoring: bool = False,
) -> None:
    """NumPyro model of log1p output tokens (math in the module docstring).

    Args:
      x: (N, D) float32 design: a column of ones then standardised query features.
      model_idx: (N,) int32 model of each row, in [0, n_models).
      y: (N,) float32 log1p(output tokens).
      weight: (N,) float32, 1 for a data row, 0 for padding.
      censor_log: (N,) float32 log1p of the row's length cap (only read when censoring).
      is_censored: (N,) float32, 1 where the observed length reached its cap (only read when censoring).
      family_of_model: (K,) int32 family index of each model, in [0, n_families).
      prior_loc: (D,) float32 prior mean of the global coefficients (intercept = mean of y).
      n_models: K (static).
      n_families: G (static).
      batch_size: rows per likelihood minibatch; None uses every row (static).
      censoring: whether censored rows use the survival function (static).
    """
    d = x.shape[-1]
    n = x.shape[0]
    prior_scale = jnp.concatenate([jnp.array([2.0]), jnp.ones(d - 1)]).astype(jnp.float32)
    latents = {
        "mu_0": numpyro.sample("mu_0", dist.Normal(prior_loc, prior_scale).to_event(1)),
        "tau_0": numpyro.sample("tau_0", dist.HalfNormal(0.5 * jnp.ones(d)).to_event(1)),
        "z_fam": numpyro.sample("z_fam", dist.Normal(jnp.zeros((n_families, d)), 1.0).to_event(2)),
        "tau_w": numpyro.sample("tau_w", dist.HalfNormal(0.5 * jnp.ones(d)).to_event(1)),
        "z_model": numpyro.sample("z_model", dist.Normal(jnp.zeros((n_models, d)), 1.0).to_event(2)),
        "mu_sig0": numpyro.sample("mu_sig0", dist.Normal(SIGMA_PRIOR_LOC, 1.0)),
        "s_sig0": numpyro.sample("s_sig0", dist.HalfNormal(0.5)),
        "z_sig_fam": numpyro.sample("z_sig_fam", dist.Normal(jnp.zeros(n_families), 1.0).to_event(1)),
        "s_sig_w": numpyro.sample("s_sig_w", dist.HalfNormal(0.5)),
        "z_sig": numpyro.sample("z_sig", dist.Normal(jnp.zeros(n_models), 1.0).to_event(1)),
        "nu_m2": numpyro.sample("nu_m2", dist.Gamma(2.0, 0.1)),
    }
    p = derive(latents, family_of_model)
    if batch_size is None:
        idx = jnp.arange(n)
        scale_factor = 1.0
    else:
        # minibatch drawn with replacement among the real rows (padding sits at the end), so the padded size does
        # not thin the batch; n_real is traced, so tables padded to the same size share one compiled step
        n_real = jnp.sum(weight > 0)
        idx = jax.random.randint(numpyro.prng_key(), (batch_size,), 0, n_real)
        scale_factor = n_real.astype(jnp.float32) / batch_size
    m = model_idx[idx]
    loc = jnp.sum(x[idx] * p["theta"][m], axis=-1)
    scale = jnp.exp(p["log_sigma"][m])
    like = dist.StudentT(p["nu"], loc, scale)
    lp = like.log_prob(y[idx])
    if censoring:
        cens = is_censored[idx] > 0
        # uncensored rows (cap = inf) evaluate at z = 1: the cap is replaced *before* the division, else the
        # unselected branch's inf gradient turns into NaN through the where
        z = (jnp.where(cens, censor_log[idx], loc + scale) - loc) / scale
        log_sf = jnp.log(jnp.clip(_t_sf(z, p["nu"]), 1e-30, 1.0))
        lp = jnp.where(cens, log_sf, lp)
    numpyro.factor("obs", scale_factor * jnp.sum(lp * weight[idx]))
