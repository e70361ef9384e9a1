"""Variance components of a crossed (prompt x model-within-family) design: a NumPyro model fit by SVI, and a
classical ANOVA (method-of-moments) estimator with a two-way bootstrap as its cross-check.

The outcome y (log(1 + output tokens), or quality) of prompt p answered by model m of family f = f(m) is

    y_pm = mu + a_f + b_m + c_p + d_pf + e_pm,
    a_f ~ N(0, s_family^2), b_m ~ N(0, s_model^2), c_p ~ N(0, s_prompt^2), d_pf ~ N(0, s_prompt_family^2),
    e_pm ~ N(0, s_residual^2)

(one answer per cell, so the prompt x model interaction is part of the residual). Derived quantities, each a
ratio of variances (`summaries`):

- share_c = s_c^2 / sum of all s^2, for every component c;
- icc_family = share_family: correlation of two answers by different models of one family to different prompts;
- icc_model = share_family + share_model: the same model on two prompts;
- icc_prompt = share_prompt: two models of different families on the same prompt;
- icc_prompt_family = share_prompt + share_family + share_prompt_family: two models of one family, same prompt;
- family_beyond_prompt = icc_prompt_family - icc_prompt = share_family + share_prompt_family: what knowing the
  family adds to knowing the prompt;
- family_of_model = s_family^2 / (s_family^2 + s_model^2): the part of the between-model variance that the family
  explains (what a family prior for a new model can use).

Bayesian: the prompt and prompt x family effects are integrated out in closed form (`collapsed_loglik`), so SVI
works on mu, the family and model effects and the five standard deviations only (y standardised, s_c ~ HalfNormal(1)
on that scale), with a full-rank AutoMultivariateNormal guide (or low-rank / AutoNormal) and optax Adam with warm-up
and cosine decay; the summaries' posterior comes from guide draws. `fit_variance_nuts` samples the same model by
NUTS: it agrees with SVI on every share except the family's, whose long tail towards 0 (few families) a Gaussian
guide on log s_family cannot follow. Model effects are centred on their family's by
default (each model is informed by every prompt it answered); the non-centred form is an option. Why not the plain
non-centred model with all P x G cell effects latent: with a mean-field or low-rank guide it mis-splits the prompt
and prompt x family variances and collapses the family variance towards 0 (checked on simulated tables with known
variances; tests/test_variance.py keeps the collapsed model honest on such tables).

Classical: for a complete P x M table the five sums of squares below are orthogonal projections
(prompts (x) [family | model within family]) and their expectations are linear in the five variances with
closed-form coefficients (`anova_components`); solving gives the ANOVA estimates (negative estimates are kept raw
and truncated at 0 for the shares). Intervals: percentile bootstrap resampling prompts and families (with their
models) independently, because the uncertainty of a family variance comes mostly from having few families.

Arrays in, arrays out; NumPy for the classical estimator, JAX/NumPyro for the Bayesian one.
"""

from __future__ import annotations

import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_value

__all__ = ["COMPONENTS", "SUMMARIES", "VarianceConfig", "variance_model", "fit_variance_svi", "anova_components",
           "anova_bootstrap", "summaries", "simulate_crossed", "collapsed_loglik", "fit_variance_nuts"]

COMPONENTS = ("family", "model", "prompt", "prompt_family", "residual")
SUMMARIES = ("icc_family", "icc_model", "icc_prompt", "icc_prompt_family", "family_beyond_prompt",
             "family_of_model")


class VarianceConfig(NamedTuple):
    """SVI settings of the variance-components fit."""

    guide: str = "mvn"  # "mvn" (AutoMultivariateNormal), "lowrank" or "normal" (AutoNormal)
    rank: int = 10
    num_steps: int = 1000
    peak_lr: float = 0.03
    warmup: int = 200
    num_samples: int = 1000
    centred: bool = True  # model effects centred on their family's (see `variance_model`)


def summaries(var: np.ndarray) -> dict[str, np.ndarray]:
    """Shares and ICCs from variances.

    Args:
      var: (..., 5) variances in `COMPONENTS` order (negative values are truncated at 0).
    Returns:
      {"share_<component>": (...), and each of `SUMMARIES`: (...)}.
    """
    v = np.clip(np.asarray(var, np.float64), 0.0, None)
    tot = v.sum(-1)
    tot = np.where(tot > 0, tot, np.nan)
    s = {c: v[..., i] / tot for i, c in enumerate(COMPONENTS)}
    fm = v[..., 0] + v[..., 1]
    out = {f"share_{c}": s[c] for c in COMPONENTS}
    out.update(icc_family=s["family"], icc_model=s["family"] + s["model"], icc_prompt=s["prompt"],
               icc_prompt_family=s["prompt"] + s["family"] + s["prompt_family"],
               family_beyond_prompt=s["family"] + s["prompt_family"],
               family_of_model=np.where(fm > 0, v[..., 0] / np.where(fm > 0, fm, 1.0), np.nan))
    return out


# ---------------------------------------------------------------------------------------------------- Bayesian
def collapsed_loglik(r, cell, n_cell, sig):
    """log p(r | variances) with the prompt and prompt x family effects integrated out (exact, Gaussian).

    For prompt p the residuals r_pm = y_pm - mu - theta_m have covariance
    s_residual^2 I + s_prompt_family^2 (same cell) + s_prompt^2 (same prompt). Within-cell contrasts are independent
    N(0, s_residual^2); the cell means v_pf have covariance D + s_prompt^2 11' with D_pf = s_prompt_family^2 +
    s_residual^2 / n_pf, whose log-determinant and inverse are closed-form (matrix determinant lemma, Sherman-Morrison).
    Constants that do not depend on the parameters are dropped.

    Args:
      r: (N,) residuals; cell: (N,) int cell index p * G + f in [0, P * G); n_cell: (P, G) rows per cell (0 allowed).
      sig: dict of the five standard deviations.
    Returns:
      scalar log-likelihood.
    """
    n_p, n_g = n_cell.shape
    s1 = jax.ops.segment_sum(r, cell, num_segments=n_p * n_g).reshape(n_p, n_g)
    s2 = jax.ops.segment_sum(r * r, cell, num_segments=n_p * n_g).reshape(n_p, n_g)
    has = n_cell > 0
    n_safe = jnp.where(has, n_cell, 1.0)
    v = s1 / n_safe
    ssw = jnp.sum(s2 - s1 * v)  # within-cell sum of squares
    dof_w = jnp.sum(jnp.where(has, n_cell - 1.0, 0.0))
    ve = sig["residual"] ** 2
    d = sig["prompt_family"] ** 2 + ve / n_safe
    inv_d = jnp.where(has, 1.0 / d, 0.0)
    sp2 = sig["prompt"] ** 2
    big_s = inv_d.sum(1)  # (P,)
    lin = (v * inv_d).sum(1)
    logdet = jnp.sum(jnp.where(has, jnp.log(d), 0.0), 1) + jnp.log1p(sp2 * big_s)
    quad = (v * v * inv_d).sum(1) - sp2 * lin ** 2 / (1.0 + sp2 * big_s)
    return -0.5 * (dof_w * jnp.log(ve) + ssw / ve) - 0.5 * jnp.sum(logdet + quad)


def variance_model(prompt_idx, model_idx, family_of_model, n_cell, y=None, centred: bool = True):
    """Crossed random effects on a standardised outcome, with the prompt-level effects integrated out.

    Latent: mu, the family effects a_f and the model effects theta_m (a model around its family), and the five
    standard deviations; the prompt and prompt x family effects (P and P x G of them) are integrated out exactly
    (`collapsed_loglik`), which leaves a posterior of about K + G + 6 dimensions that a full-rank guide represents
    well (a mean-field guide over all P x G cell effects mis-splits prompt and prompt x family variance).

    Args:
      prompt_idx: (N,) int in [0, P); model_idx: (N,) int in [0, K); family_of_model: (K,) int in [0, G).
      n_cell: (P, G) float rows per (prompt, family) cell.
      y: (N,) standardised outcome (required: the collapsed likelihood is a factor).
      centred: theta_m ~ N(a_f(m), s_model^2), a_f ~ N(0, s_family^2) (default), or the non-centred
        theta_m = a_f(m) + s_model z_m, a_f = s_family z_f.
    """
    k = family_of_model.shape[0]
    n_g = n_cell.shape[1]
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    sig = {c: numpyro.sample(f"sigma_{c}", dist.HalfNormal(1.0)) for c in COMPONENTS}
    if centred:
        a = numpyro.sample("a_family", dist.Normal(0.0, sig["family"]).expand([n_g]).to_event(1))
        theta = numpyro.sample("theta_model", dist.Normal(a[family_of_model], sig["model"]).to_event(1))
    else:
        a = sig["family"] * numpyro.sample("z_family", dist.Normal(0.0, 1.0).expand([n_g]).to_event(1))
        theta = a[family_of_model] + sig["model"] * numpyro.sample("z_model",
                                                                   dist.Normal(0.0, 1.0).expand([k]).to_event(1))
    cell = prompt_idx * n_g + family_of_model[model_idx]
    numpyro.factor("y", collapsed_loglik(y - mu - theta[model_idx], cell, n_cell, sig))


def _check(prompt_idx, model_idx, family_of_model, y):
    p = np.asarray(prompt_idx)
    m = np.asarray(model_idx)
    fam = np.asarray(family_of_model)
    yy = np.asarray(y, np.float64)
    n = yy.shape[0]
    if n == 0:
        raise ValueError("variance components: empty outcome, nothing to fit")
    if p.shape != (n,) or m.shape != (n,):
        raise ValueError(f"prompt_idx {p.shape} and model_idx {m.shape} must be ({n},) like y")
    if not np.all(np.isfinite(yy)):
        raise ValueError(f"variance components: y has {int((~np.isfinite(yy)).sum())} non-finite values")
    if m.min() < 0 or m.max() >= fam.shape[0] or p.min() < 0 or fam.min() < 0:
        raise ValueError("variance components: indices out of range")
    return p.astype(np.int32), m.astype(np.int32), fam.astype(np.int32), yy


class _Runner(NamedTuple):
    init: object  # jitted (key, p, m, fam, n_cell, y) -> SVIState
    run: object  # jitted (state, p, m, fam, n_cell, y) -> (params, losses (steps,))
    draw: object  # jitted (key, params) -> posterior draws of the sigma sites


_RUNNERS: dict[tuple, _Runner] = {}


def _runner(config: VarianceConfig, shape: tuple[int, ...]) -> _Runner:
    """Compiled SVI pieces for one config and data shape (an autoguide keeps the prototype of its first call)."""
    key = (tuple(config), shape)
    if key in _RUNNERS:
        return _RUNNERS[key]
    model = partial(variance_model, centred=bool(config.centred))
    _, _, n_g, k = shape
    # every effect starts at 0 (not at a random point): a common shift of mu against the model effects is nearly
    # free in the likelihood, and an SVI started away from 0 along it can stop with an inflated family variance
    zeros = ({"a_family": jnp.zeros(n_g), "theta_model": jnp.zeros(k)} if config.centred else
             {"z_family": jnp.zeros(n_g), "z_model": jnp.zeros(k)})
    init = init_to_value(values={"mu": 0.0, **{f"sigma_{c}": 0.3 for c in COMPONENTS}, **zeros})
    if config.guide == "mvn":
        guide = AutoMultivariateNormal(model, init_scale=0.05, init_loc_fn=init)
    elif config.guide == "lowrank":
        guide = AutoLowRankMultivariateNormal(model, rank=config.rank, init_scale=0.05, init_loc_fn=init)
    elif config.guide == "normal":
        guide = AutoNormal(model, init_scale=0.05, init_loc_fn=init)
    else:
        raise ValueError(f"guide must be 'mvn', 'lowrank' or 'normal', got {config.guide!r}")
    sched = optax.warmup_cosine_decay_schedule(0.0, config.peak_lr, config.warmup,
                                               max(config.num_steps, config.warmup + 1), end_value=config.peak_lr / 20)
    svi = SVI(model, guide, optax.chain(optax.clip_by_global_norm(100.0), optax.adam(sched)), Trace_ELBO())

    @jax.jit
    def run(state, p, m, fam, n_cell, y):
        def body(s, _):
            return svi.update(s, p, m, fam, n_cell, y=y)
        state, losses = jax.lax.scan(body, state, None, length=config.num_steps)
        return svi.get_params(state), losses

    @jax.jit
    def draw(rng, params, p, m, fam, n_cell, y):
        z = guide.sample_posterior(rng, params, p, m, fam, n_cell, y=y, sample_shape=(config.num_samples,))
        return {f"sigma_{c}": z[f"sigma_{c}"] for c in COMPONENTS}

    r = _Runner(jax.jit(lambda rng, p, m, fam, n_cell, y: svi.init(rng, p, m, fam, n_cell, y=y)), run, draw)
    _RUNNERS[key] = r
    return r


def fit_variance_svi(prompt_idx, model_idx, family_of_model, y, *, config: VarianceConfig = VarianceConfig(),
                     seed: int = 0) -> dict:
    """Fit `variance_model` by SVI and return posterior draws of the variances and their summaries.

    Args:
      prompt_idx, model_idx, family_of_model: as `variance_model` (P = max(prompt_idx) + 1, G = max(family) + 1).
      y: (N,) outcome on its own scale (standardised inside; variances are returned on the original scale).
      config: VarianceConfig.
      seed: PRNG seed.
    Returns:
      dict with "var" (S, 5) variance draws in `COMPONENTS` order, "summaries" {name: (S,)}, "elbo" (steps,),
      "seconds", "meta".
    """
    t0 = time.perf_counter()
    p, m, fam, yy = _check(prompt_idx, model_idx, family_of_model, y)
    n_p, n_g = int(p.max()) + 1, int(fam.max()) + 1
    loc, scale = float(yy.mean()), float(yy.std())
    scale = scale if scale > 0 else 1.0
    ys = jnp.asarray((yy - loc) / scale, jnp.float32)
    n_cell = np.zeros((n_p, n_g), np.float32)
    np.add.at(n_cell, (p, fam[m]), 1.0)
    args = (jnp.asarray(p), jnp.asarray(m), jnp.asarray(fam), jnp.asarray(n_cell), ys)
    runner = _runner(config, (len(yy), n_p, n_g, int(fam.shape[0])))
    params, losses = runner.run(runner.init(jax.random.key(seed), *args), *args)
    post = runner.draw(jax.random.key(seed + 1), params, *args)
    elbo = np.asarray(losses, np.float64)
    if not np.all(np.isfinite(elbo[-100:])):
        raise FloatingPointError("variance SVI: the loss became non-finite (try a smaller peak_lr)")
    sd = np.stack([np.asarray(post[f"sigma_{c}"], np.float64) for c in COMPONENTS], -1)  # (S, 5) standardised
    var = (sd * scale) ** 2
    tail = elbo[-max(len(elbo) // 10, 1):]
    head = elbo[-2 * max(len(elbo) // 10, 1):-max(len(elbo) // 10, 1)]
    rel = float(abs(head.mean() - tail.mean()) / max(abs(tail.mean()), 1e-9)) if head.size else float("nan")
    meta = dict(method="svi", guide=config.guide, rank=config.rank if config.guide == "lowrank" else None,
                steps=config.num_steps, draws=config.num_samples, n_rows=int(yy.shape[0]), n_prompts=n_p,
                n_models=int(fam.shape[0]), n_families=n_g, elbo_last_decile_rel_change=rel)
    return {"var": var, "summaries": summaries(var), "elbo": elbo, "seconds": time.perf_counter() - t0, "meta": meta}


def fit_variance_nuts(prompt_idx, model_idx, family_of_model, y, *, num_warmup: int = 400, num_samples: int = 400,
                      seed: int = 0, centred: bool = True) -> dict:
    """The same collapsed model sampled by NUTS (one chain): the exact-posterior cross-check of `fit_variance_svi`.

    The posterior is low-dimensional once the prompt-level effects are integrated out (about K + G + 6), so NUTS is
    affordable on these tables (tens of seconds); a Gaussian guide cannot follow the long left tail of a small
    family variance, which NUTS shows.

    Returns:
      dict like `fit_variance_svi` ("var", "summaries", "seconds", "meta").
    """
    from numpyro.infer import MCMC, NUTS

    t0 = time.perf_counter()
    p, m, fam, yy = _check(prompt_idx, model_idx, family_of_model, y)
    n_p, n_g = int(p.max()) + 1, int(fam.max()) + 1
    loc, scale = float(yy.mean()), float(yy.std())
    scale = scale if scale > 0 else 1.0
    n_cell = np.zeros((n_p, n_g), np.float32)
    np.add.at(n_cell, (p, fam[m]), 1.0)
    mc = MCMC(NUTS(partial(variance_model, centred=centred)), num_warmup=num_warmup, num_samples=num_samples,
              progress_bar=False)
    mc.run(jax.random.key(seed), jnp.asarray(p), jnp.asarray(m), jnp.asarray(fam), jnp.asarray(n_cell),
           y=jnp.asarray((yy - loc) / scale, jnp.float32), extra_fields=("diverging",))
    post = mc.get_samples()
    var = (np.stack([np.asarray(post[f"sigma_{c}"], np.float64) for c in COMPONENTS], -1) * scale) ** 2
    meta = dict(method="nuts", warmup=num_warmup, draws=num_samples,
                divergences=int(np.asarray(mc.get_extra_fields()["diverging"]).sum()), n_rows=int(yy.shape[0]))
    return {"var": var, "summaries": summaries(var), "seconds": time.perf_counter() - t0, "meta": meta}


# --------------------------------------------------------------------------------------------------- classical
def _coefficients(n_p: int, sizes: np.ndarray) -> np.ndarray:
    """(5 sums of squares, 5 variances) expectation coefficients for a complete P x M table.

    Rows: SS_prompt, SS_family, SS_model(family), SS_prompt x family, SS_residual; columns: `COMPONENTS`.
    Each SS is Y'(A_P (x) A_M)Y and each component's covariance is K_P (x) K_M, so E[SS] = sum_c s_c^2
    tr(A_P K_P) tr(A_M K_M).
    """
    n = np.asarray(sizes, np.float64)
    m, g = n.sum(), float(len(n))
    s2 = (n ** 2).sum() / m
    p = float(n_p)
    return np.array([
        # family        model          prompt       prompt_family          residual
        [0.0, 0.0, (p - 1) * m, (p - 1) * s2, p - 1],  # SS_prompt
        [p * (m - s2), p * (g - 1), 0.0, m - s2, g - 1],  # SS_family
        [0.0, p * (m - g), 0.0, 0.0, m - g],  # SS_model(family)
        [0.0, 0.0, 0.0, (p - 1) * (m - s2), (p - 1) * (g - 1)],  # SS_prompt x family
        [0.0, 0.0, 0.0, 0.0, (p - 1) * (m - g)],  # SS_residual
    ])


def _sums_of_squares(y: np.ndarray, fam: np.ndarray, n_g: int) -> np.ndarray:
    """The five sums of squares of a complete (P, M) table y with model families fam (M,) in [0, G)."""
    n_p, _ = y.shape
    onehot = np.zeros((y.shape[1], n_g))
    onehot[np.arange(y.shape[1]), fam] = 1.0
    sizes = onehot.sum(0)
    grand = y.mean()
    yp = y.mean(1)  # (P,)
    ym = y.mean(0)  # (M,)
    ypf = (y @ onehot) / sizes  # (P, G)
    yf = ym @ onehot / sizes  # (G,)
    ss_p = y.shape[1] * ((yp - grand) ** 2).sum()
    ss_f = n_p * (sizes * (yf - grand) ** 2).sum()
    ss_m = n_p * ((ym - yf[fam]) ** 2).sum()
    ss_pf = (sizes * (ypf - yp[:, None] - yf[None, :] + grand) ** 2).sum()
    ss_e = ((y - ypf[:, fam] - ym[None, :] + yf[fam][None, :]) ** 2).sum()
    return np.array([ss_p, ss_f, ss_m, ss_pf, ss_e])


def anova_components(y: np.ndarray, family_of_model) -> np.ndarray:
    """ANOVA (method-of-moments) variance components of a complete table.

    Args:
      y: (P, M) outcome, every prompt answered by every model (no NaN).
      family_of_model: (M,) int family labels (any integers; relabelled 0..G-1).
    Returns:
      (5,) raw estimates in `COMPONENTS` order (may be negative).
    """
    y = np.asarray(y, np.float64)
    if y.ndim != 2 or not np.all(np.isfinite(y)):
        raise ValueError("anova_components: y must be a complete (P, M) table without NaN")
    _, fam = np.unique(np.asarray(family_of_model), return_inverse=True)
    n_g = int(fam.max()) + 1
    if y.shape[0] < 2 or n_g < 2 or y.shape[1] <= n_g:
        raise ValueError(f"anova_components: need >= 2 prompts, >= 2 families and more models than families; "
                         f"got P = {y.shape[0]}, M = {y.shape[1]}, G = {n_g}")
    sizes = np.bincount(fam, minlength=n_g)
    return np.linalg.solve(_coefficients(y.shape[0], sizes), _sums_of_squares(y, fam, n_g))


def anova_bootstrap(y: np.ndarray, family_of_model, *, n_boot: int = 500, seed: int = 0,
                    resample_families: bool = True) -> dict:
    """ANOVA estimates with a percentile bootstrap over prompts (and families, with all their models).

    A family drawn twice enters the replicate as two families. A replicate with fewer than two distinct family
    draws or no within-family replication is redrawn.

    Args:
      y: (P, M) complete table; family_of_model: (M,) labels.
      n_boot: replicates; seed: NumPy seed.
      resample_families: also resample families (default); False resamples prompts only.
    Returns:
      dict with "var" (5,) point estimates (raw), "boot_var" (B, 5) raw replicate estimates, "summaries" of the
      point estimate, "boot_summaries" {name: (B,)}.
    """
    y = np.asarray(y, np.float64)
    _, fam = np.unique(np.asarray(family_of_model), return_inverse=True)
    n_g = int(fam.max()) + 1
    members = [np.flatnonzero(fam == g) for g in range(n_g)]
    point = anova_components(y, fam)
    rng = np.random.default_rng(seed)
    n_p = y.shape[0]
    boot = np.empty((n_boot, 5))
    b = 0
    while b < n_boot:
        rows = rng.integers(0, n_p, n_p)
        if resample_families:
            gs = rng.integers(0, n_g, n_g)
            cols = np.concatenate([members[g] for g in gs])
            labels = np.concatenate([np.full(len(members[g]), i) for i, g in enumerate(gs)])
            if len(set(gs.tolist())) < 2 or len(cols) <= n_g:
                continue
        else:
            cols, labels = np.arange(y.shape[1]), fam
        boot[b] = np.linalg.solve(_coefficients(n_p, np.bincount(labels, minlength=n_g)),
                                  _sums_of_squares(y[np.ix_(rows, cols)], labels, n_g))
        b += 1
    return {"var": point, "boot_var": boot, "summaries": summaries(point), "boot_summaries": summaries(boot)}


# ------------------------------------------------------------------------------------------------- simulation
def simulate_crossed(n_prompts: int, family_sizes, var, *, mu: float = 0.0, seed: int = 0):
    """A complete (P, M) table from the crossed model with known variances (for tests).

    Args:
      n_prompts: P; family_sizes: models per family (M = sum); var: (5,) variances in `COMPONENTS` order.
      mu: grand mean; seed: NumPy seed.
    Returns:
      (y (P, M), family_of_model (M,)).
    """
    rng = np.random.default_rng(seed)
    sd = np.sqrt(np.asarray(var, np.float64))
    fam = np.repeat(np.arange(len(family_sizes)), family_sizes)
    g, m = len(family_sizes), len(fam)
    y = (mu + sd[0] * rng.normal(size=g)[fam][None, :] + sd[1] * rng.normal(size=m)[None, :]
         + sd[2] * rng.normal(size=n_prompts)[:, None] + sd[3] * rng.normal(size=(n_prompts, g))[:, fam]
         + sd[4] * rng.normal(size=(n_prompts, m)))
    return y, fam
