"""Hierarchical linear model of answer quality on query features, fit by SVI: the linear routers' priors.

Model (D features with the bias first, K models, G families, family f(k) of model k):

    w_global                 ~ Normal(0, prior_scale^2 I_D)
    tau_global_bias, tau_global, tau_family_bias, tau_family ~ HalfNormal(0.5)
    bias (feature 0, a model's mean quality), centred:
      b_f    ~ Normal(w_global[0], tau_global_bias^2)           b_k ~ Normal(b_{f(k)}, tau_family_bias^2)
    slopes (features 1..D-1), non-centred:
      s_f    = w_global[1:] + tau_global * z_f,    z_f ~ Normal(0, I_{D-1})
      s_k    = s_{f(k)} + tau_family * z_k,         z_k ~ Normal(0, I_{D-1})
    w_f = (b_f, s_f), w_k = (b_k, s_k)
    sigma_k                  ~ HalfNormal(0.5)
    q_n                      ~ Normal(x_n' w_{k_n}, sigma_{k_n}^2)

i.e. w_k ~ N(w_family(k), diag(s_family^2)), w_family ~ N(w_global, diag(s_global^2)) with per-coordinate scales
s_global = (tau_global_bias, tau_global, ..., tau_global), s_family likewise. The bias weight has its own spread at
each level: within a family the slopes of the models agree closely while their mean quality does not, and one
scale shared by all D weights was set by the D - 1 slopes (the bias spread of a newcomer's family prior came out
far too narrow).

Parameterisation (what the variational fit sees). Each model's mean quality is pinned down by its hundreds of rows,
so the bias weights are sampled centred; the slopes are pooled tightly (tau_family ~ 0.002-0.02) and sampled
non-centred. With everything non-centred, the mean-field guide collapsed the family level of the bias on the
bundled data (tau_global_bias near 0, every family's mean quality equal to the global one, so a newcomer's "family
prior" was the global prior), although the models' mean qualities clearly differ by family (NUTS on that two-level
hierarchy puts the scale well above 0: `python scripts/quality_scales_vs_nuts.py` prints both);
`tests/test_quality_model.py` checks that the family level is recovered on data drawn from the model.

Fit: SVI with an AutoNormal guide and optax Adam (warm-up, a constant rate until the loss stops falling, then a
short decay: `hierarchical.svi_loop`, which also decides `meta["converged"]`), the step compiled once per static
configuration and run in chunks of a `lax.scan` (the patterns of `hierarchical.fit`); rows are padded to a multiple of `PAD_ROWS` with zero weight
so refitting on another split does not recompile. The result (`QualityFit`) holds posterior means and standard
deviations of the weights at every level, the four scales and the per-model noise, which is what
`bandit_sim.sim.linear.linear_prior` turns into the routers' cold / family / warm priors.

Arrays in, arrays out; no dependency on bandit_sim.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

from . import svi_loop

__all__ = ["QualityFit", "QualityConfig", "quality_model", "fit_quality", "assemble", "PAD_ROWS"]

PAD_ROWS = 4096


class QualityConfig(NamedTuple):
    """SVI settings (`hierarchical.svi_loop`; chunk, num_samples and prior_scale are static: a change recompiles)."""

    num_steps: int = 14000  # budget: warm-up + constant rate + decay (RouterBench / arena: stop by ~10000)
    chunk: int = 250
    peak_lr: float = 0.03
    warmup: int = 100
    decay_steps: int = 2000  # cosine decay after the constant phase (500 left the loss 12 nats higher on arena)
    window: int = 2000  # converged when the loss falls by less than tol (relative) per `window` steps at the
    tol: float = 1e-3  # constant rate, upper 95% bound, twice running (`hierarchical.svi_loop`) ...
    min_steps: int = 1000  # ... after at least this many steps
    num_samples: int = 400  # guide draws behind the reported means and sds
    prior_scale: float = 1.0  # sd of w_global's prior


class QualityFit(NamedTuple):
    """Posterior summaries of the hierarchical quality model (means and sds over the guide's draws)."""

    w_global: np.ndarray  # (D,) float32
    w_global_sd: np.ndarray  # (D,)
    tau_global: np.ndarray  # () float32, sd of the family slopes around the global ones
    tau_family: np.ndarray  # () sd of a model's slopes around its family's
    tau_global_bias: np.ndarray  # () sd of the family bias weights (mean quality) around the global one
    tau_family_bias: np.ndarray  # () sd of a model's bias weight around its family's
    w_family: np.ndarray  # (G, D)
    w_family_sd: np.ndarray  # (G, D)
    w_model: np.ndarray  # (K, D)
    w_model_sd: np.ndarray  # (K, D)
    noise_sd: np.ndarray  # (K,) sigma_k
    family_of_model: np.ndarray  # (K,) int32
    elbo: np.ndarray  # (steps,) float32 loss trace
    meta: dict  # steps, converged (= svi_converged), seconds, n_rows, final_loss, ...

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every array field (for `hierarchical.storage.write_checked_npz`; meta goes to the JSON side)."""
        return {k: np.asarray(v) for k, v in self._asdict().items() if k != "meta"}


def assemble(w_global, b_fam, b_mod, z_fam, z_mod, tau_global, tau_family, family_of_model):
    """(w_family (..., G, D), w_model (..., K, D)) from the model's sites (leading sample axes allowed)."""
    s_fam = w_global[..., None, 1:] + jnp.asarray(tau_global)[..., None, None] * z_fam
    s_mod = jnp.take(s_fam, family_of_model, axis=-2) + jnp.asarray(tau_family)[..., None, None] * z_mod
    return (jnp.concatenate([b_fam[..., None], s_fam], -1), jnp.concatenate([b_mod[..., None], s_mod], -1))


def quality_model(x, model_idx, weight, family_of_model, y=None, *, n_models: int, n_families: int,
                  prior_scale: float = 1.0):
    """The model of the module docstring (rows with weight 0 are padding).

    Args:
      x: (N, D) features (bias first). model_idx: (N,) int. weight: (N,) 1 for real rows, 0 for padding.
      family_of_model: (K,) int. y: (N,) quality or None. n_models, n_families: K, G (static).
      prior_scale: sd of w_global's prior.
    """
    d = x.shape[1]
    w_global = numpyro.sample("w_global", dist.Normal(0.0, prior_scale).expand([d]).to_event(1))
    tau_global = numpyro.sample("tau_global", dist.HalfNormal(0.5))
    tau_family = numpyro.sample("tau_family", dist.HalfNormal(0.5))
    tau_global_bias = numpyro.sample("tau_global_bias", dist.HalfNormal(0.5))
    tau_family_bias = numpyro.sample("tau_family_bias", dist.HalfNormal(0.5))
    # bias: centred (data-rich); slopes: non-centred (tightly pooled) -- see the module docstring
    b_fam = numpyro.sample("b_family", dist.Normal(w_global[0], tau_global_bias).expand([n_families]).to_event(1))
    b_mod = numpyro.sample("b_model", dist.Normal(b_fam[family_of_model], tau_family_bias).to_event(1))
    if d > 1:
        z_fam = numpyro.sample("z_family", dist.Normal(0.0, 1.0).expand([n_families, d - 1]).to_event(2))
        z_mod = numpyro.sample("z_model", dist.Normal(0.0, 1.0).expand([n_models, d - 1]).to_event(2))
    else:  # the bias only (a table with neither text nor features): no slopes to sample
        z_fam, z_mod = jnp.zeros((n_families, 0)), jnp.zeros((n_models, 0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(0.5).expand([n_models]).to_event(1))
    w_model = assemble(w_global, b_fam, b_mod, z_fam, z_mod, tau_global, tau_family, family_of_model)[1]
    mu = jnp.sum(x * w_model[model_idx], -1)
    with numpyro.plate("rows", x.shape[0]):
        numpyro.sample("q", dist.Normal(mu, sigma[model_idx]).mask(weight > 0), obs=y)


class _Runner(NamedTuple):
    svi: SVI
    guide: Any
    init: Any
    run_chunk: Any
    draw: Any


_RUNNERS: dict[tuple, _Runner] = {}


def _runner(cfg: QualityConfig, k: int, g: int, shapes: tuple = ()) -> _Runner:
    # data shapes in the key: a guide keeps its first (jitted) prototype trace (see hierarchical.fit._runner); the
    # learning rates are arguments of the chunk, so the step budget and schedule are not part of the key
    key = (cfg.chunk, cfg.num_samples, cfg.prior_scale, k, g, shapes)
    if key in _RUNNERS:
        return _RUNNERS[key]
    model = partial(quality_model, n_models=k, n_families=g, prior_scale=cfg.prior_scale)
    guide = AutoNormal(model, init_scale=0.05)
    svi = SVI(model, guide, svi_loop.adam(), Trace_ELBO())
    run_chunk = svi_loop.make_run_chunk(svi)

    @jax.jit
    def draw(rng, params, family_of_model):
        s = guide.sample_posterior(rng, params, sample_shape=(cfg.num_samples,))
        z_fam = s.get("z_family", jnp.zeros(s["b_family"].shape + (0,)))  # absent with the bias only (D = 1)
        z_mod = s.get("z_model", jnp.zeros(s["b_model"].shape + (0,)))
        w_fam, w_mod = assemble(s["w_global"], s["b_family"], s["b_model"], z_fam, z_mod, s["tau_global"],
                                s["tau_family"], family_of_model)
        return dict(w_global=s["w_global"], tau_global=s["tau_global"], tau_family=s["tau_family"],
                    tau_global_bias=s["tau_global_bias"], tau_family_bias=s["tau_family_bias"],
                    w_family=w_fam, w_model=w_mod, sigma=s["sigma"])

    r = _Runner(svi, guide, jax.jit(svi.init), run_chunk, draw)
    _RUNNERS[key] = r
    return r


def fit_quality(x: np.ndarray, model_idx: np.ndarray, family_of_model: np.ndarray, quality: np.ndarray, *,
                n_families: int | None = None, config: QualityConfig = QualityConfig(), seed: int = 0) -> QualityFit:
    """Fit the hierarchical quality model by SVI on training rows.

    Args:
      x: (N, D) query features (bias first, e.g. `TextFeaturizer.transform`); finite.
      model_idx: (N,) int model index in [0, K). family_of_model: (K,) int family index in [0, G).
      quality: (N,) observed quality (finite).
      n_families: G (default max(family_of_model) + 1). config: QualityConfig. seed: PRNG seed.
    Returns:
      QualityFit.
    Raises:
      ValueError: empty or mis-shaped arrays, non-finite values (the row is named), bad indices.
    """
    t0 = time.perf_counter()
    x = np.asarray(x, np.float32)
    m = np.asarray(model_idx)
    fam = np.asarray(family_of_model)
    y = np.asarray(quality, np.float32).reshape(-1)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"fit_quality: x must be a non-empty (N, D) array, got shape {x.shape}")
    n = x.shape[0]
    if m.shape != (n,) or y.shape != (n,):
        raise ValueError(f"fit_quality: model_idx {m.shape} and quality {y.shape} must be ({n},)")
    for name, a in (("x", x), ("quality", y)):
        bad = ~np.isfinite(a.reshape(n, -1)).all(1)
        if bad.any():
            raise ValueError(f"fit_quality: {name} row {int(np.flatnonzero(bad)[0])} is not finite")
    k = fam.shape[0]
    if fam.ndim != 1 or k == 0 or m.min() < 0 or m.max() >= k:
        raise ValueError(f"fit_quality: model_idx must lie in [0, {k}) with family_of_model (K,)")
    g = int(fam.max()) + 1 if n_families is None else int(n_families)
    if fam.min() < 0 or fam.max() >= g:
        raise ValueError(f"fit_quality: family_of_model must lie in [0, {g})")
    npad = -(-n // PAD_ROWS) * PAD_ROWS
    pad = npad - n

    def padded(a):
        return np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a

    data = (jnp.asarray(padded(x)), jnp.asarray(padded(m.astype(np.int32))),
            jnp.asarray(padded(np.ones(n, np.float32))), jnp.asarray(fam.astype(np.int32)), jnp.asarray(padded(y)))
    r = _runner(config, k, g, tuple(a.shape for a in data))
    k_init, k_post = jax.random.split(jax.random.key(seed))
    state = r.init(k_init, *data)
    res = svi_loop.run_svi(r.run_chunk, state, data, num_steps=config.num_steps, chunk=config.chunk,
                           peak_lr=config.peak_lr, warmup=config.warmup, decay_steps=config.decay_steps,
                           window=config.window, tol=config.tol, min_steps=config.min_steps, what="fit_quality")
    s = {a: np.asarray(v, np.float64) for a, v in r.draw(k_post, r.svi.get_params(res.state), data[3]).items()}
    mean = {a: v.mean(0).astype(np.float32) for a, v in s.items()}
    sd = {a: v.std(0).astype(np.float32) for a, v in s.items()}
    elbo = res.losses
    meta = dict(method="svi", guide="normal", steps=int(elbo.shape[0]), converged=res.converged,
                svi_converged=res.converged, constant_lr_steps=res.constant_steps, decay_steps=res.decay_steps,
                last_rel_decrease=res.rel_decrease, seconds=time.perf_counter() - t0, n_rows=n, seed=seed,
                final_loss=float(elbo[-config.chunk:].mean()))
    return QualityFit(mean["w_global"], sd["w_global"], mean["tau_global"], mean["tau_family"],
                      mean["tau_global_bias"], mean["tau_family_bias"], mean["w_family"], sd["w_family"],
                      mean["w_model"], sd["w_model"], mean["sigma"], fam.astype(np.int32), elbo, meta)
