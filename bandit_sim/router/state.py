"""Saving and loading a live router: one `.npz` of arrays plus a JSON entry, written atomically, never pickled.

Layout (format "bandit-sim-router", VERSION 1):

- arrays: ``state/n`` (1, C) int32 pulls, ``state/s`` and ``state/s_comp`` (1, C) float32 success sums,
  ``state/prior_a``, ``state/prior_b`` (1, C), ``hyper/<field>`` (the policy's Hyper), ``family`` (C,) int32,
  ``prices`` (C, 2) float64 USD per token, ``stats`` (C, 5) float64 per-slot counters, ``totals`` (3,),
  ``key/noise`` and ``key/fallback`` (PRNG key data, uint32), ``tokens/<name>`` (the token forecaster's arrays:
  posterior draws and standardiser, or the stand-in's statistics);
- with ``policy == "linear_thompson"``, instead of the Beta arrays: ``state/mean`` (C, D) and ``state/cov``
  (C, D, D) float32 weight posteriors, ``featurizer/<name>`` (the query featurizer's arrays,
  `bandit_sim.data.text_features`), ``linear/global/{mean,cov,noise}`` and ``linear/family<j>/{mean,cov,noise}``
  (the priors `add_model` takes; family names in the JSON's ``linear.families``); older readers refuse such a file
  naming the missing Beta arrays. ``hyper/lin_*`` absent from older files take their defaults;
- ``__meta__``: UTF-8 JSON (uint8) with format, version, policy, options, capacity, chunk, cost_scale,
  family_strength, step counter, model per slot, families, pending decisions, the forecaster's kind and metadata,
  and a SHA-256 of every array (checked on load).

Writes go to a temporary file in the same folder, are fsync'ed, then `os.replace`d over the destination, so a
crash mid-write leaves the previous file intact. A truncated or corrupt file raises `RouterStateError` naming
what is wrong. Older versions are migrated (`MIGRATIONS`); a newer version is refused with the reason.

Version 0 (the first layout, kept readable): arrays ``alpha``, ``beta`` (K,) posterior parameters,
``prior_alpha``, ``prior_beta`` (K,), ``prices`` (K, 2); JSON ``models``, ``families``, ``cost_scale``, ``lam``,
``gam``, ``seed``, ``step``; no token model, no counters, no pending decisions. Migration: pulls
n = round(alpha + beta - prior_alpha - prior_beta), successes s = alpha - prior_alpha, keys from ``seed``, capacity
max(64, K); the token forecaster must be passed to `load_router(path, tokens=...)` (v0 did not store one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from bandit_sim.sim.episode import episode_keys
from bandit_sim.sim.policies import default_hyper
from hierarchical.storage import read_checked_npz, write_checked_npz

__all__ = ["write_state", "read_state", "read_and_migrate", "need", "RouterStateError", "FORMAT", "VERSION",
           "MIGRATIONS"]

FORMAT = "bandit-sim-router"
VERSION = 1


class RouterStateError(ValueError):
    """A router state file is missing, truncated, corrupt, of another format, or of an unreadable version."""


def write_state(path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write arrays + JSON meta (checksums added) atomically; returns the path (".npz" appended if missing)."""
    return write_checked_npz(path, arrays, meta)


def need(arrays: dict, names, path) -> None:
    """Raise RouterStateError naming the arrays of `names` the file lacks."""
    missing = [n for n in names if n not in arrays]
    if missing:
        raise RouterStateError(f"{path}: arrays {missing} missing")


def read_state(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify (format, checksums) a state file; returns (arrays, meta) of any version."""
    # v0 files carried no checksums
    return read_checked_npz(path, error=RouterStateError, what="router state file", fmt=FORMAT,
                            require_checksums=False)


# ---------------------------------------------------------------- migrations


def _migrate_v0(arrays: dict[str, np.ndarray], meta: dict[str, Any], tokens, path):
    """v0 -> v1 (see the module docstring); returns (arrays, meta) of v1 minus the token model."""
    need(arrays, ["alpha", "beta", "prior_alpha", "prior_beta", "prices"], path)
    for f in ("models", "families", "cost_scale", "lam", "gam", "seed", "step"):
        if f not in meta:
            raise RouterStateError(f"{path}: v0 metadata lacks {f!r}; cannot migrate")
    if tokens is None:
        raise RouterStateError(f"{path}: a version 0 state has no token model; cannot migrate without one: "
                               f"pass tokens=StandInTokens.from_table(...) or PosteriorTokens(...) to load")
    models = list(meta["models"])
    k = len(models)
    a, b = arrays["alpha"].astype(np.float64), arrays["beta"].astype(np.float64)
    pa, pb = arrays["prior_alpha"].astype(np.float64), arrays["prior_beta"].astype(np.float64)
    if not all(x.shape == (k,) for x in (a, b, pa, pb)) or arrays["prices"].shape != (k, 2):
        raise RouterStateError(f"{path}: v0 arrays do not match its {k} models; cannot migrate")
    s, n = a - pa, np.rint(a + b - pa - pb)
    if np.any(s < -1e-6) or np.any(n < s - 1e-6):
        raise RouterStateError(f"{path}: v0 posterior below its prior (alpha < prior_alpha or beta < prior_beta); "
                               f"cannot recover counts")
    cap = max(64, k)
    pad = lambda x, v=0.0: np.concatenate([x, np.full((cap - k,) + x.shape[1:], v, x.dtype)])  # noqa: E731
    fam_names = sorted(set(meta["families"]))
    hyper = default_hyper(cap, lam=meta["lam"], gam=meta["gam"], prior_alpha=pad(pa, 1.0), prior_beta=pad(pb, 1.0))
    with jax.threefry_partitionable(False):
        ek = episode_keys(jax.random.key(int(meta["seed"])))
    stats = np.zeros((cap, 5))
    stats[:k, 0] = stats[:k, 1] = n
    stats[:k, 2] = s
    new = {"state/n": pad(n.astype(np.int32))[None], "state/s": pad(s.astype(np.float32))[None],
           "state/s_comp": np.zeros((1, cap), np.float32), "state/prior_a": pad(pa, 1.0).astype(np.float32)[None],
           "state/prior_b": pad(pb, 1.0).astype(np.float32)[None],
           "family": pad(np.array([fam_names.index(f) for f in meta["families"]], np.int32), -1),
           "prices": pad(arrays["prices"].astype(np.float64)), "stats": stats,
           "totals": np.array([n.sum(), s.sum(), 0.0]),  # v0 kept no cost: the cost total restarts at 0
           "key/noise": np.asarray(jax.random.key_data(ek.noise)),
           "key/fallback": np.asarray(jax.random.key_data(ek.fallback))}
    new.update({f"hyper/{f}": np.asarray(v) for f, v in hyper._asdict().items()})
    new_meta = dict(format=FORMAT, version=1, policy="thompson", options=[], capacity=cap, chunk=32,
                    cost_scale=float(meta["cost_scale"]), family_strength=20.0, step=int(meta["step"]),
                    slots=models + [None] * (cap - k), model_family=dict(zip(models, meta["families"])),
                    family_names=fam_names, pending={}, tokens=None, migrated_from=0)
    return new, new_meta


MIGRATIONS = {0: _migrate_v0}  # version v -> function turning a v file into v + 1


def read_and_migrate(path, *, tokens=None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a state file and migrate it to the current version: (arrays, meta) for `Router.load`.

    Args:
      path: the .npz file.
      tokens: a token forecaster to use instead of the stored one (required for version 0 files).
    Returns:
      (arrays, meta) of version `VERSION`.
    Raises:
      RouterStateError: missing, truncated or corrupt file, another format, a newer or unknown version.
    """
    arrays, meta = read_state(path)
    v = meta.get("version")
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise RouterStateError(f"{path}: version {v!r} is not a format version this code knows (0..{VERSION})")
    if v > VERSION:
        raise RouterStateError(f"{path}: written by a newer bandit-sim (router format v{v}); this one reads "
                               f"v0..v{VERSION}: upgrade bandit-sim to load it")
    while v < VERSION:
        arrays, meta = MIGRATIONS[v](arrays, meta, tokens, path)
        v = meta["version"]
    return arrays, meta
