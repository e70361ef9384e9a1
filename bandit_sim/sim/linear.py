"""Priors of the linear-Gaussian routers (`policies.linear_thompson`, `policies.linucb`), built from a training split.

The routers' model (per arm k): q = x'w_k + eps, eps ~ N(0, sigma_k^2), with the hierarchical prior
w_k ~ N(w_family(k), T_f), w_family ~ N(w_global, T_g) fitted by SVI in `hierarchical.quality` (`fit_quality`), with
diagonal T_f = diag(tau_family_bias^2, tau_family^2, ..., tau_family^2) (the bias weight, feature 0, has its own
scale; the slopes share one) and T_g likewise. Three starting points, as traced arrays for `Hyper.lin_*`:

- ``"cold"``: the global prior only: w_k ~ N(w_global, T_g + T_f), sigma^2 the global one;
- ``"family"``: each arm starts from its family's weights and spread: w_k ~ N(E[w_f], diag(Var[w_f]) + T_f)
  (posterior mean and variance of w_f from the fit); an arm of a family the fit does not know gets the cold prior;
- ``"warm"``: the exact conjugate posterior after the arm's own training rows, starting from its family prior
  (`batch_posterior`); an arm with no training rows (a newcomer) starts from ``newcomer`` ("family" or "cold").

From a tidy table: `train_rows(train, models, featurizer)` gives the training rows' features, quality and arm (and
the families), `fit_linear(rows)` the hierarchical fit; then `linear_prior(fit, rows.family_of_arm, kind, x=rows.x,
quality=rows.quality, arm=rows.arm)` and `with_linear_prior(hyper, prior)`.

`flat_linear_prior` is the prior-free default (w_k ~ N(0, var I)): LinUCB's ridge regression with var = noise = 1.
Everything here is NumPy float64 on the host, returned as float32 (Hyper is float32).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np
import pandas as pd

from bandit_sim.data.text_features import transform_table
from bandit_sim.sim.policies import Hyper
from hierarchical.quality import QualityConfig, QualityFit, fit_quality

__all__ = ["LinearPrior", "linear_prior", "linear_posterior", "flat_linear_prior", "batch_posterior", "with_linear_prior",
           "linear_world_truth", "TrainRows", "train_rows", "fit_linear"]


class TrainRows(NamedTuple):
    """A training split as the linear routers see it: one row per observed (prompt, model)."""

    x: np.ndarray  # (n, D) float32 query features of the row's prompt
    quality: np.ndarray  # (n,) float64
    arm: np.ndarray  # (n,) int index into `models`
    family_of_arm: np.ndarray  # (K,) int index into `families`
    families: tuple[str, ...]  # family names (sorted)


def train_rows(train: pd.DataFrame, models: Sequence[str], featurizer,
               families: Mapping[str, str] | None = None) -> TrainRows:
    """The training rows of `models` with their features (a featurizer of `bandit_sim.data.text_features`).

    Args:
      train: tidy rows of the training split (prompt_id, model, quality, family, prompt / features).
      models: the arms, in World order (models without training rows get none: newcomers).
      featurizer: fit on `train` (`featurizer_for_table`).
      families: model -> family name (default: the table's ``family`` column).
    Returns:
      TrainRows.
    """
    models = list(models)
    fam_col = train.groupby("model")["family"].first().to_dict() if "family" in train.columns else {}
    fam_of = {m: str((families or {}).get(m) or fam_col.get(m) or m) for m in models}
    fams = tuple(sorted(set(fam_of.values())))
    t = train[train["model"].isin(models) & train["quality"].notna()]
    ids = list(pd.unique(t["prompt_id"]))
    x = transform_table(featurizer, t, ids) if ids else np.zeros((0, featurizer.dim), np.float32)
    x_rows = x[t["prompt_id"].map({p: i for i, p in enumerate(ids)}).to_numpy(int)] if ids else x
    return TrainRows(x_rows, t["quality"].to_numpy(np.float64), t["model"].map({m: j for j, m in enumerate(models)})
                     .to_numpy(int), np.array([fams.index(fam_of[m]) for m in models]), fams)


def fit_linear(rows: TrainRows, config: QualityConfig = QualityConfig(), seed: int = 0) -> QualityFit:
    """The hierarchical quality fit (`hierarchical.quality.fit_quality`, SVI) on training rows."""
    return fit_quality(rows.x, rows.arm, rows.family_of_arm, rows.quality, n_families=len(rows.families),
                       config=config, seed=seed)


class LinearPrior(NamedTuple):
    """Per-arm Gaussian priors of the linear routers (the `Hyper.lin_*` fields)."""

    mean: np.ndarray  # (K, D) float32
    cov: np.ndarray  # (K, D, D) float32
    noise: np.ndarray  # (K,) float32 observation noise variance sigma_k^2


def with_linear_prior(hyper: Hyper, prior: LinearPrior) -> Hyper:
    """`hyper` with its lin_* fields replaced by `prior` (traced: a new prior does not recompile).

    Args:
      hyper: a Hyper (of scalars; build the grid after, e.g. with `hyper_grid`).
      prior: LinearPrior.
    Returns:
      Hyper.
    """
    return hyper._replace(lin_mean=jnp.asarray(prior.mean, jnp.float32), lin_cov=jnp.asarray(prior.cov, jnp.float32),
                          lin_noise=jnp.asarray(prior.noise, jnp.float32))


def flat_linear_prior(k: int, d: int, var: float = 1.0, noise: float = 1.0, *, bias_mean: float = 0.0,
                      bias_var: float | None = None) -> LinearPrior:
    """w_k ~ N(0, var I_D), sigma_k^2 = noise for every arm (LinUCB's ridge prior with var = noise = 1); optionally
    the bias weight (feature 0) centred elsewhere with its own variance: w_k0 ~ N(bias_mean, bias_var) (e.g. 0.5, the
    middle of a [0, 1] quality, with a wide variance: the prior does not pull every arm's mean quality to 0).

    Args:
      k: arms. d: D (with the bias first). var: prior variance of the weights. noise: observation noise variance.
      bias_mean: prior mean of the bias weight. bias_var: its prior variance (default: var).
    Returns:
      LinearPrior.
    """
    for name, v in (("var", var), ("noise", noise), ("bias_var", var if bias_var is None else bias_var)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"flat_linear_prior: {name} must be a positive number, got {v!r}")
    if not np.isfinite(bias_mean):
        raise ValueError(f"flat_linear_prior: bias_mean must be finite, got {bias_mean!r}")
    mean = np.zeros((k, d), np.float32)
    mean[:, 0] = bias_mean
    cov = np.broadcast_to(np.eye(d) * var, (k, d, d)).astype(np.float32)
    cov[:, 0, 0] = var if bias_var is None else bias_var
    return LinearPrior(mean, cov, np.full(k, noise, np.float32))


def batch_posterior(mean0, cov0, noise, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Conjugate posterior of w after observations y = x w + eps (closed form, float64).

    S = (S0^-1 + x'x / noise)^-1,  m = S (S0^-1 m0 + x'y / noise).

    Args:
      mean0: (D,). cov0: (D, D). noise: () variance. x: (n, D). y: (n,).
    Returns:
      (m (D,), S (D, D)) float64.
    """
    cov0 = np.asarray(cov0, np.float64)
    p0 = np.linalg.inv(cov0)
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    prec = p0 + x.T @ x / float(noise)
    cov = np.linalg.inv(prec)
    cov = 0.5 * (cov + cov.T)
    return cov @ (p0 @ np.asarray(mean0, np.float64) + x.T @ y / float(noise)), cov


def _field(fit, name):
    v = fit[name] if isinstance(fit, dict) else getattr(fit, name)
    return np.asarray(v, np.float64)


def _scale_var(fit, name: str, d: int) -> np.ndarray:
    """(D,) prior variance per coordinate of one level: `name`_bias^2 for the bias weight, `name`^2 for the slopes."""
    slope = float(_field(fit, name))
    has_bias = (name + "_bias") in fit if isinstance(fit, dict) else hasattr(fit, name + "_bias")
    bias = float(_field(fit, name + "_bias")) if has_bias else slope
    return np.r_[bias ** 2, np.full(d - 1, slope ** 2)]


def linear_prior(fit, family_of_arm, kind: str = "family", *, model_of_arm=None, x=None, quality=None, arm=None,
                 newcomer: str = "family") -> LinearPrior:
    """Per-arm priors of the linear routers from a hierarchical fit (and, for "warm", the training rows).

    Args:
      fit: `hierarchical.quality.QualityFit` (or a dict / object with the same fields): w_global (D,), tau_global (),
        w_family (G, D), w_family_sd (G, D), tau_family (), noise_sd (M,) per fitted model, family_of_model (M,);
        optional tau_global_bias (), tau_family_bias (): the bias weight's scales (default: the slopes' ones).
      family_of_arm: (K,) int index into the fit's families (-1: a family the fit does not know).
      kind: "cold" | "family" | "warm" (module doc).
      model_of_arm: optional (K,) int index into the fit's models (-1: not fitted) for the per-model noise;
        otherwise (and for -1) an arm takes its family's mean noise variance (the global one without a family).
      x, quality, arm: the training rows for "warm": (n, D) features, (n,) quality, (n,) arm index in [0, K).
      newcomer: prior of an arm without training rows under "warm": "family" or "cold".
    Returns:
      LinearPrior of float32 arrays (K arms, D = len(fit.w_global)).
    """
    if kind not in ("cold", "family", "warm"):
        raise ValueError(f"linear_prior: kind must be 'cold', 'family' or 'warm', got {kind!r}")
    if newcomer not in ("family", "cold"):
        raise ValueError(f"linear_prior: newcomer must be 'family' or 'cold', got {newcomer!r}")
    w_g = _field(fit, "w_global")
    w_f, sd_f = _field(fit, "w_family"), _field(fit, "w_family_sd")
    d = w_g.shape[0]
    var_g, var_f = _scale_var(fit, "tau_global", d), _scale_var(fit, "tau_family", d)  # (D,) per coordinate
    noise_sd = _field(fit, "noise_sd")
    fam_of_model = np.asarray(_field(fit, "family_of_model"), int)
    fam = np.asarray(family_of_arm, int).reshape(-1)
    k, g = fam.shape[0], w_f.shape[0]
    if np.any(fam >= g):
        raise ValueError(f"linear_prior: family_of_arm has indices >= {g} (the fit's families)")
    var_m = noise_sd ** 2
    noise_glob = float(var_m.mean())
    noise_fam = np.array([var_m[fam_of_model == f].mean() if np.any(fam_of_model == f) else noise_glob
                          for f in range(g)])
    moa = np.full(k, -1) if model_of_arm is None else np.asarray(model_of_arm, int).reshape(-1)
    noise = np.where(moa >= 0, var_m[np.clip(moa, 0, None)] if var_m.size else noise_glob,
                     np.where(fam >= 0, noise_fam[np.clip(fam, 0, None)], noise_glob))

    cold_mean = np.broadcast_to(w_g, (k, d))
    cold_cov = np.broadcast_to(np.diag(var_g + var_f), (k, d, d))
    if kind == "cold":
        noise = np.full(k, noise_glob)
        return _f32(cold_mean, cold_cov, noise)
    known = fam >= 0
    fi = np.clip(fam, 0, None)
    fam_mean = np.where(known[:, None], w_f[fi], cold_mean)
    fam_cov = np.where(known[:, None, None], np.eye(d)[None] * (sd_f[fi] ** 2 + var_f)[:, None, :], cold_cov)
    if kind == "family":
        return _f32(fam_mean, fam_cov, noise)
    if x is None or quality is None or arm is None:
        raise ValueError("linear_prior: kind='warm' needs the training rows x, quality and arm")
    x = np.asarray(x, np.float64)
    q = np.asarray(quality, np.float64).reshape(-1)
    a = np.asarray(arm, int).reshape(-1)
    if x.ndim != 2 or x.shape[1] != d or q.shape[0] != x.shape[0] or a.shape[0] != x.shape[0]:
        raise ValueError(f"linear_prior: training rows must be x (n, {d}), quality (n,), arm (n,); got "
                         f"{x.shape}, {q.shape}, {a.shape}")
    mean, cov = fam_mean.copy(), fam_cov.copy()
    if newcomer == "cold":
        new = ~np.isin(np.arange(k), a)
        mean[new], cov[new], noise[new] = cold_mean[new], cold_cov[new], noise_glob
    return linear_posterior(_f32(mean, cov, noise), x, q, a)


def linear_posterior(prior: LinearPrior, x, quality, arm) -> LinearPrior:
    """Each arm's exact posterior after its rows, from any per-arm prior (e.g. LinUCB's ridge prior:
    ``linear_posterior(flat_linear_prior(k, d, 1.0, 1.0), rows.x, rows.quality, rows.arm)``).

    Args:
      prior: LinearPrior (K arms). x: (n, D). quality: (n,). arm: (n,) int in [0, K).
    Returns:
      LinearPrior (arms without rows keep their prior).
    """
    x = np.asarray(x, np.float64)
    q = np.asarray(quality, np.float64).reshape(-1)
    a = np.asarray(arm, int).reshape(-1)
    mean, cov = np.array(prior.mean, np.float64), np.array(prior.cov, np.float64)
    for j in range(mean.shape[0]):
        rows = a == j
        if rows.any():
            mean[j], cov[j] = batch_posterior(mean[j], cov[j], float(prior.noise[j]), x[rows], q[rows])
    return _f32(mean, cov, prior.noise)


def _f32(mean, cov, noise) -> LinearPrior:
    return LinearPrior(np.ascontiguousarray(mean, np.float32), np.ascontiguousarray(cov, np.float32),
                       np.ascontiguousarray(noise, np.float32))


def linear_world_truth(n: int, k: int, d: int, *, n_families: int = 2, tau_global: float = 0.15,
                       tau_family: float = 0.03, noise_sd: float = 0.1, seed: int = 0, clip: bool = True):
    """Synthetic draws from the routers' model: features, weights and quality (tests and benchmarks).

    x = [1, N(0, I_{d-1} / (d-1))] (slopes then move x'w by about tau, so clipping rarely binds); w_global = [0.5, 0, ...] + N(0, tau_global^2) on the slopes; w_f ~ N(w_global,
    tau_global^2 I); w_k ~ N(w_{family(k)}, tau_family^2 I) (family(k) = k mod n_families); q = x'w_k + N(0, noise_sd^2)
    clipped to [0, 1] (unless clip=False: then exactly the model).

    Returns:
      dict with x (n, d), quality (n, k), w (k, d), w_family (G, d), w_global (d,), family (k,) (float32 / int32).
    """
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, d - 1)) / np.sqrt(max(d - 1, 1))], 1)
    w_glob = np.concatenate([[0.5], rng.normal(0, tau_global, d - 1)])
    w_fam = w_glob + rng.normal(0, tau_global, (n_families, d))
    fam = np.arange(k) % n_families
    w = w_fam[fam] + rng.normal(0, tau_family, (k, d))
    q = x @ w.T + rng.normal(0, noise_sd, (n, k))
    q = np.clip(q, 0.0, 1.0) if clip else q
    return dict(x=x.astype(np.float32), quality=q.astype(np.float32), w=w.astype(np.float32),
                w_family=w_fam.astype(np.float32), w_global=w_glob.astype(np.float32), family=fam.astype(np.int32))
