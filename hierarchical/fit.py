"""Fitting the token model: SVI (optax, chunked `lax.scan`, minibatches; schedule and convergence check in
`hierarchical.svi_loop`) and NUTS.

The SVI update is compiled once per static configuration (guide, K, G, D, batch size, chunk length) and
reused across calls: data are arguments of the compiled chunk (not closed over) and rows are padded to a multiple of
`PAD_ROWS` with zero weight, so refitting on another split of the same table does not recompile. NUTS gets the
table unpadded (it compiles per fit anyway, and padding would multiply the cost of every gradient).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
from numpyro.infer.initialization import init_to_median
from tqdm.auto import tqdm

from . import svi_loop
from .features import FEATURE_NAMES, Standardizer
from .model import derive, token_model

__all__ = ["TokenPosterior", "FitConfig", "fit_svi", "fit_nuts", "validate_inputs", "PAD_ROWS"]

PAD_ROWS = 4096


@dataclass(frozen=True)
class TokenPosterior:
    """Posterior draws of the token model plus everything needed to predict with them.

    Attributes:
      draws: DERIVED_SITES -> (S, ...) float32 arrays (theta (S, K, D), log_sigma (S, K), mu_fam (S, G, D), ...).
      standardizer: feature standardisation fitted on the training rows.
      family_of_model: (K,) int32.
      feature_names: names of the F raw features (D = F + 1 with the intercept).
      guide_params: variational parameters (SVI) or empty (NUTS).
      elbo: (steps,) float32 loss trace (SVI) or empty.
      meta: JSON-able facts (method, guide, steps, converged, seconds, ...).
    """

    draws: dict[str, np.ndarray]
    standardizer: Standardizer
    family_of_model: np.ndarray
    feature_names: tuple[str, ...]
    guide_params: dict[str, np.ndarray] = field(default_factory=dict)
    elbo: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_models(self) -> int:
        return int(self.family_of_model.shape[0])

    @property
    def n_families(self) -> int:
        return int(self.draws["mu_fam"].shape[1])

    @property
    def n_draws(self) -> int:
        return int(self.draws["nu"].shape[0])


class FitConfig(NamedTuple):
    """SVI settings (`hierarchical.svi_loop`; guide, rank, chunk, batch_size and num_samples are static: a change
    recompiles, the rest are arguments of the compiled chunk)."""

    guide: str = "normal"  # "normal" (AutoNormal) or "lowrank" (AutoLowRankMultivariateNormal)
    rank: int = 8
    num_steps: int = 14000  # budget: warm-up + constant rate + decay (arena-hard, minibatch 8192: stops ~10000)
    chunk: int = 250
    peak_lr: float = 0.02
    warmup: int = 200
    batch_size: int | None = None  # None: full batch; int: rows per minibatch
    decay_steps: int = 2000  # cosine decay after the constant phase (500 left the loss 12 nats higher on arena)
    window: int = 2000  # converged when the loss falls by less than tol (relative) per `window` steps at the
    tol: float = 1e-3  # constant rate, upper 95% bound, twice running (`hierarchical.svi_loop`) ...
    min_steps: int = 1500  # ... after at least this many steps
    num_samples: int = 400  # posterior draws kept


class _Prepared(NamedTuple):
    x: np.ndarray  # (Npad, D) float32
    model_idx: np.ndarray  # (Npad,) int32
    y: np.ndarray  # (Npad,) float32
    weight: np.ndarray  # (Npad,) float32
    censor_log: np.ndarray  # (Npad,) float32
    is_censored: np.ndarray  # (Npad,) float32
    family_of_model: np.ndarray  # (K,) int32
    prior_loc: np.ndarray  # (D,) float32


def validate_inputs(features, model_idx, family_of_model, tokens, censor_at=None, n_families=None):
    """Check the arrays a fit takes and name the first problem found.

    Args:
      features: (N, F) raw query features.
      model_idx: (N,) int model index in [0, K).
      family_of_model: (K,) int family index in [0, G).
      tokens: (N,) output tokens >= 0.
      censor_at: optional (N,) length cap per row (inf = none).
      n_families: G; defaults to max(family_of_model) + 1.
    Returns:
      (features float32, model_idx int32, family_of_model int32, tokens float32, censor_at float32 | None, G).
    Raises:
      ValueError: empty table, shape mismatch, NaN/inf features, negative tokens, bad indices, or a model
        index in [0, K) with no rows.
    """
    x = np.asarray(features, dtype=np.float32)
    m = np.asarray(model_idx)
    fam = np.asarray(family_of_model)
    t = np.asarray(tokens, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, F), got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("empty table: features has 0 rows, nothing to fit")
    if m.shape != (n,) or t.shape != (n,):
        raise ValueError(f"model_idx {m.shape} and tokens {t.shape} must both be ({n},) like the features")
    if not np.issubdtype(m.dtype, np.integer) or not np.issubdtype(fam.dtype, np.integer):
        raise ValueError(f"model_idx ({m.dtype}) and family_of_model ({fam.dtype}) must be integer arrays")
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        name = FEATURE_NAMES[c] if x.shape[1] == len(FEATURE_NAMES) else f"column {c}"
        raise ValueError(f"NaN/inf feature at row {r}, {name} ({int(bad.sum())} non-finite values)")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        r = int(np.flatnonzero(~np.isfinite(t) | (t < 0))[0])
        raise ValueError(f"tokens[{r}] = {t[r]} is not a finite count >= 0")
    k = fam.shape[0]
    if fam.ndim != 1 or k == 0:
        raise ValueError(f"family_of_model must be a non-empty (K,) array, got shape {fam.shape}")
    if m.min() < 0 or m.max() >= k:
        raise ValueError(f"model_idx must lie in [0, {k}) (K = len(family_of_model)); got [{m.min()}, {m.max()}]")
    g = int(fam.max()) + 1 if n_families is None else int(n_families)
    if fam.min() < 0 or fam.max() >= g:
        raise ValueError(f"family_of_model must lie in [0, {g}); got [{fam.min()}, {fam.max()}]")
    counts = np.bincount(m, minlength=k)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0)
        raise ValueError(f"model index {int(empty[0])} has no rows ({len(empty)} of {k} models have none): "
                         "drop it from family_of_model and re-index, or predict it from its family prior")
    c = None
    if censor_at is not None:
        c = np.asarray(censor_at, dtype=np.float64)
        if c.shape != (n,) or np.any(np.isnan(c)) or np.any(c <= 0):
            raise ValueError(f"censor_at must be ({n},) caps > 0 (inf for none), got shape {c.shape}")
        c = c.astype(np.float32)
    return x, m.astype(np.int32), fam.astype(np.int32), t.astype(np.float32), c, g


def _prepare(x, m, fam, t, censor_at, std: Standardizer, batch_size: int | None = None, *,
             pad_rows: bool = True) -> _Prepared:
    n = x.shape[0]
    # pad so that tables of similar size share one compiled SVI step: to a multiple of PAD_ROWS (full batch; the step
    # cost grows with the padding) or to a power of two (minibatches; the step cost does not depend on the padding).
    # pad_rows=False (NUTS): no padding, every gradient evaluation would pay for the zero-weight rows
    if not pad_rows:
        npad = n
    elif batch_size is None or batch_size >= n:
        npad = -(-n // PAD_ROWS) * PAD_ROWS
    else:
        npad = 1 << (n - 1).bit_length()
    pad = npad - n
    z = std.transform(x)
    design = np.concatenate([np.ones((n, 1), np.float32), z], axis=1)
    y = np.log1p(t).astype(np.float32)
    if censor_at is None:
        clog = np.full(n, np.inf, np.float32)
        cens = np.zeros(n, np.float32)
    else:
        clog = np.log1p(censor_at).astype(np.float32)
        cens = (t >= censor_at).astype(np.float32)
    prior_loc = np.zeros(design.shape[1], np.float32)
    prior_loc[0] = y.mean()

    def padded(a, value=0):
        return np.concatenate([a, np.full((pad,) + a.shape[1:], value, a.dtype)]) if pad else a

    return _Prepared(padded(design), padded(m), padded(y), padded(np.ones(n, np.float32)),
                     padded(clog, np.inf), padded(cens), fam, prior_loc)


class _Runner(NamedTuple):
    svi: SVI
    guide: Any
    init: Any  # jitted (key, *data) -> SVIState
    run_chunk: Any  # jitted (state, data) -> (state, losses (chunk,))
    draw: Any  # jitted (key, params, family_of_model) -> derived draws (num_samples, ...)


_RUNNERS: dict[tuple, _Runner] = {}

_median_init = init_to_median(num_samples=15)


def _init_loc(site=None):
    """init_to_median, except nu (a Gamma prior: its rejection sampler is slow to compile) starts at nu = 10."""
    if site is None:
        return partial(_init_loc)
    if site["type"] == "sample" and not site["is_observed"] and site["name"] == "nu_m2":
        return jnp.asarray(8.0, jnp.float32)
    return _median_init(site)


def _runner(cfg: FitConfig, n_models: int, n_families: int, censoring: bool, shapes: tuple = ()) -> _Runner:
    # the data shapes are part of the key: a numpyro guide keeps the prototype trace of its first (jitted) init,
    # so one guide re-traced for other shapes would hold a leaked tracer
    key = (cfg.guide, cfg.rank, cfg.chunk, cfg.batch_size, cfg.num_samples, n_models, n_families, censoring, shapes)
    if key in _RUNNERS:
        return _RUNNERS[key]
    model = partial(token_model, n_models=n_models, n_families=n_families, batch_size=cfg.batch_size,
                    censoring=censoring)
    if cfg.guide == "normal":
        guide = AutoNormal(model, init_loc_fn=_init_loc, init_scale=0.05)
    elif cfg.guide == "lowrank":
        guide = AutoLowRankMultivariateNormal(model, init_loc_fn=_init_loc, rank=cfg.rank,
                                              init_scale=0.05)
    else:
        raise ValueError(f"guide must be 'normal' or 'lowrank', got {cfg.guide!r}")
    svi = SVI(model, guide, svi_loop.adam(), Trace_ELBO())
    run_chunk = svi_loop.make_run_chunk(svi)

    @jax.jit
    def draw(key, params, family_of_model):
        return derive(guide.sample_posterior(key, params, sample_shape=(cfg.num_samples,)), family_of_model)

    # svi.init under jit: run eagerly it dispatches hundreds of tiny compiled ops (tens of seconds on 2 cores)
    r = _Runner(svi, guide, jax.jit(svi.init), run_chunk, draw)
    _RUNNERS[key] = r
    return r


def fit_svi(
    features: np.ndarray,
    model_idx: np.ndarray,
    family_of_model: np.ndarray,
    tokens: np.ndarray,
    *,
    n_families: int | None = None,
    censor_at: np.ndarray | None = None,
    config: FitConfig = FitConfig(),
    seed: int = 0,
    progress: bool = True,
) -> TokenPosterior:
    """Fit the hierarchical token model by SVI and return posterior draws.

    Args:
      features: (N, F) raw query features (standardised here; the statistics are kept with the fit).
      model_idx: (N,) int model index in [0, K); every model must have rows.
      family_of_model: (K,) int family index in [0, G).
      tokens: (N,) observed output tokens >= 0.
      n_families: G (default max(family_of_model) + 1); families without models keep their prior.
      censor_at: optional (N,) length cap per row; rows with tokens >= cap are treated as censored.
      config: FitConfig (guide, steps, schedule, minibatch size, convergence tolerance).
      seed: PRNG seed for initialisation, minibatches and posterior draws.
      progress: show a tqdm bar updated once per chunk.
    Returns:
      TokenPosterior with config.num_samples draws.
    """
    t0 = time.perf_counter()
    x, m, fam, t, c, g = validate_inputs(features, model_idx, family_of_model, tokens, censor_at, n_families)
    std = Standardizer.fit(x)
    batch = config.batch_size if config.batch_size is not None and config.batch_size < x.shape[0] else None
    config = config._replace(batch_size=batch)
    prep = _prepare(x, m, fam, t, c, std, batch)
    k = fam.shape[0]
    data = tuple(jnp.asarray(a) for a in prep)
    runner = _runner(config, k, g, c is not None, tuple(a.shape for a in data))
    k_init, k_post = jax.random.split(jax.random.key(seed))
    state = runner.init(k_init, *data)
    bar = tqdm(total=-(-config.num_steps // config.chunk) * config.chunk, desc="svi", disable=not progress,
               leave=False)

    def on_chunk(steps, loss):
        bar.update(steps - bar.n)
        bar.set_postfix(loss=f"{loss:.4g}")

    try:
        res = svi_loop.run_svi(runner.run_chunk, state, data, num_steps=config.num_steps, chunk=config.chunk,
                               peak_lr=config.peak_lr, warmup=config.warmup, decay_steps=config.decay_steps,
                               window=config.window, tol=config.tol, min_steps=config.min_steps, on_chunk=on_chunk)
    finally:
        bar.close()
    params = runner.svi.get_params(res.state)
    draws = {k_: np.asarray(v, np.float32) for k_, v in runner.draw(k_post, params, jnp.asarray(fam)).items()}
    elbo = res.losses
    seconds = time.perf_counter() - t0
    meta = dict(method="svi", guide=config.guide, rank=config.rank, steps=int(elbo.shape[0]),
                converged=res.converged, svi_converged=res.converged, constant_lr_steps=res.constant_steps,
                decay_steps=res.decay_steps, last_rel_decrease=res.rel_decrease, seconds=seconds,
                n_rows=int(x.shape[0]), batch_size=config.batch_size, peak_lr=config.peak_lr,
                num_samples=config.num_samples, seed=seed, censoring=c is not None,
                final_loss=float(elbo[-config.chunk:].mean()))
    return TokenPosterior(draws, std, fam, tuple(FEATURE_NAMES[: x.shape[1]]) if x.shape[1] == len(FEATURE_NAMES)
                          else tuple(f"f{j}" for j in range(x.shape[1])),
                          {k_: np.asarray(v) for k_, v in params.items()}, elbo, meta)


def fit_nuts(
    features: np.ndarray,
    model_idx: np.ndarray,
    family_of_model: np.ndarray,
    tokens: np.ndarray,
    *,
    n_families: int | None = None,
    censor_at: np.ndarray | None = None,
    num_warmup: int = 300,
    num_samples: int = 300,
    seed: int = 0,
    progress: bool = False,
) -> TokenPosterior:
    """Fit the same model by NUTS (one chain, full batch): a cross-check of SVI for small tables.

    Args:
      features, model_idx, family_of_model, tokens, n_families, censor_at: as in `fit_svi`.
      num_warmup: NUTS warm-up iterations.
      num_samples: draws kept.
      seed: PRNG seed.
      progress: NumPyro's progress bar.
    Returns:
      TokenPosterior with num_samples draws; meta carries divergences and the MCMC object is not kept.
    """
    t0 = time.perf_counter()
    x, m, fam, t, c, g = validate_inputs(features, model_idx, family_of_model, tokens, censor_at, n_families)
    std = Standardizer.fit(x)
    prep = _prepare(x, m, fam, t, c, std, pad_rows=False)  # the table's own rows: NUTS compiles once per fit anyway
    model = partial(token_model, n_models=fam.shape[0], n_families=g, batch_size=None, censoring=c is not None)
    mcmc = MCMC(NUTS(model, target_accept_prob=0.9, init_strategy=init_to_median(num_samples=15)),
                num_warmup=num_warmup, num_samples=num_samples, num_chains=1, progress_bar=progress)
    mcmc.run(jax.random.key(seed), *(jnp.asarray(a) for a in prep), extra_fields=("diverging",))
    latents = mcmc.get_samples()
    draws = {k_: np.asarray(v, np.float32) for k_, v in derive(latents, jnp.asarray(fam)).items()}
    div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    meta = dict(method="nuts", num_warmup=num_warmup, num_samples=num_samples, divergences=div,
                seconds=time.perf_counter() - t0, n_rows=int(x.shape[0]), seed=seed, censoring=c is not None)
    names = tuple(FEATURE_NAMES) if x.shape[1] == len(FEATURE_NAMES) else tuple(f"f{j}" for j in range(x.shape[1]))
    return TokenPosterior(draws, std, fam, names, {}, np.zeros(0, np.float32), meta)

