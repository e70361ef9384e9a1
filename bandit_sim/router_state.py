"""Saving and loading a live router: one `.npz` of arrays plus a JSON entry, written atomically, never pickled.

Layout (format "bandit-sim-router", VERSION 1):

- arrays: ``state/n`` (1, C) int32 pulls, ``state/s`` and ``state/s_comp`` (1, C) float32 success sums,
  ``state/prior_a``, ``state/prior_b`` (1, C), ``hyper/<field>`` (the policy's Hyper), ``family`` (C,) int32,
  ``prices`` (C, 2) float64 USD per token, ``stats`` (C, 5) float64 per-slot counters, ``totals`` (3,),
  ``key/noise`` and ``key/fallback`` (PRNG key data, uint32), ``tokens/<name>`` (the token forecaster's arrays:
  posterior draws and standardiser, or the stand-in's statistics);
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

import json
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hierarchical.io import array_digest, atomic_savez

__all__ = ["save_router", "load_router", "RouterStateError", "FORMAT", "VERSION", "MIGRATIONS"]

FORMAT = "bandit-sim-router"
VERSION = 1


class RouterStateError(ValueError):
    """A router state file is missing, truncated, corrupt, of another format, or of an unreadable version."""


def write_state(path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write arrays + JSON meta (checksums added) atomically; returns the path (".npz" appended if missing)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    meta = dict(meta, sha256={k: array_digest(v) for k, v in arrays.items()})
    out = dict(arrays)
    out["__meta__"] = np.frombuffer(json.dumps(meta, default=_json_default).encode(), dtype=np.uint8)
    atomic_savez(path, out)
    return path


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def read_state(path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify (format, checksums) a state file; returns (arrays, meta) of any version."""
    path = Path(path)
    if not path.is_file():
        raise RouterStateError(f"{path}: no such router state file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise RouterStateError(f"{path}: not a readable router state .npz, truncated or corrupt "
                               f"({type(exc).__name__}: {exc})") from exc
    if "__meta__" not in arrays:
        raise RouterStateError(f"{path}: no __meta__ entry (not written by Router.save)")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RouterStateError(f"{path}: corrupt metadata JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise RouterStateError(f"{path}: format {got!r}, expected {FORMAT!r}")
    sums = meta.get("sha256")
    if sums is not None:  # v0 files carried no checksums
        if set(sums) != set(arrays):
            raise RouterStateError(f"{path}: arrays {sorted(set(arrays) ^ set(sums))} missing or unexpected")
        for k, v in arrays.items():
            if array_digest(v) != sums[k]:
                raise RouterStateError(f"{path}: checksum mismatch for array {k!r} (file corrupt)")
    return arrays, meta


# ---------------------------------------------------------------- router <-> (arrays, meta)


def _router_to_state(r) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    st = r.pstate
    arrays = {"state/n": st.n, "state/s": st.s, "state/s_comp": st.s_comp, "state/prior_a": st.prior_a,
              "state/prior_b": st.prior_b, "family": r._family, "prices": r._prices, "stats": r.stats,
              "totals": r.totals, "key/noise": jax.random.key_data(r._k_noise),
              "key/fallback": jax.random.key_data(r._k_fb)}
    arrays.update({f"hyper/{k}": v for k, v in r.hyper._asdict().items()})
    arrays = {k: np.asarray(jax.device_get(v)) for k, v in arrays.items()}
    tok_arrays, tok_meta = r.tokens.to_state()
    arrays.update({f"tokens/{k}": np.asarray(v) for k, v in tok_arrays.items()})
    meta = dict(format=FORMAT, version=VERSION, policy=r.policy, options=[list(o) for o in r.options],
                capacity=r.capacity, chunk=r.chunk, cost_scale=r.cost_scale, family_strength=r.family_strength,
                step=r.step, slots=r.slots, model_family=r.model_family, family_names=r.family_names,
                pending=r.pending, key_impl=str(jax.random.key_impl(r._k_noise)),
                tokens=dict(kind=r.tokens.kind, meta=tok_meta))
    return arrays, meta


def save_router(router, path) -> Path:
    """Write the whole router (posteriors, counts, models, token model, keys, step, pending decisions).

    Args:
      router: a `Router`.
      path: destination (".npz" appended if missing); replaced atomically.
    Returns:
      The path written.
    """
    arrays, meta = _router_to_state(router)
    return write_state(path, arrays, meta)


def _need(arrays: dict, names, path) -> None:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise RouterStateError(f"{path}: arrays {missing} missing")


def _restore(arrays: dict[str, np.ndarray], meta: dict[str, Any], tokens, path):
    from .policies import BetaState, Hyper
    from .router import Router
    from .router_tokens import tokens_from_state

    cap = int(meta["capacity"])
    _need(arrays, ["state/n", "state/s", "state/s_comp", "state/prior_a", "state/prior_b", "family", "prices",
                   "stats", "totals", "key/noise", "key/fallback"] + [f"hyper/{f}" for f in Hyper._fields], path)
    shapes = {"state/n": (1, cap), "state/s": (1, cap), "state/s_comp": (1, cap), "state/prior_a": (1, cap),
              "state/prior_b": (1, cap), "family": (cap,), "prices": (cap, 2), "stats": (cap, 5),
              "totals": (3,)}
    for k, shp in shapes.items():
        if arrays[k].shape != shp:
            raise RouterStateError(f"{path}: array {k!r} has shape {arrays[k].shape}, expected {shp}")
    if len(meta["slots"]) != cap:
        raise RouterStateError(f"{path}: {len(meta['slots'])} slots for capacity {cap}")
    r = Router.__new__(Router)
    if tokens is None:
        tk = {k[7:]: v for k, v in arrays.items() if k.startswith("tokens/")}
        try:
            tokens = tokens_from_state(meta["tokens"]["kind"], tk, meta["tokens"]["meta"])
        except (KeyError, ValueError) as exc:
            raise RouterStateError(f"{path}: token model unreadable ({exc})") from exc
    r.tokens = tokens
    r.policy = meta["policy"]
    r.options = tuple(tuple(o) for o in meta["options"])
    r.capacity, r.chunk = cap, int(meta["chunk"])
    r.cost_scale, r.family_strength = float(meta["cost_scale"]), float(meta["family_strength"])
    r.slots = list(meta["slots"])
    r.model_family = dict(meta["model_family"])
    r.family_names = list(meta["family_names"])
    r._prices = arrays["prices"].astype(np.float64)
    r._family = arrays["family"].astype(np.int32)
    r._dev_cache = None
    r.hyper = Hyper(**{f: jnp.asarray(arrays[f"hyper/{f}"], jnp.float32) for f in Hyper._fields})
    r._k_noise = jax.random.wrap_key_data(arrays["key/noise"])
    r._k_fb = jax.random.wrap_key_data(arrays["key/fallback"])
    r.step = int(meta["step"])
    r.pending = {k: dict(v) for k, v in meta["pending"].items()}
    r.stats = arrays["stats"].astype(np.float64)
    r.totals = arrays["totals"].astype(np.float64)
    r.pstate = BetaState(jnp.asarray(arrays["state/n"], jnp.int32), jnp.asarray(arrays["state/s"], jnp.float32),
                         jnp.asarray(arrays["state/s_comp"], jnp.float32),
                         jnp.asarray(arrays["state/prior_a"], jnp.float32),
                         jnp.asarray(arrays["state/prior_b"], jnp.float32))
    missing = [m for m in r.models if m not in _known_models(r.tokens)]
    if missing:
        raise RouterStateError(f"{path}: the token model has no forecast for routed models {missing}")
    return r


def _known_models(tokens) -> list[str]:
    return list(tokens.models) if hasattr(tokens, "models") else list(tokens.stats)


# ---------------------------------------------------------------- migrations


def _migrate_v0(arrays: dict[str, np.ndarray], meta: dict[str, Any], tokens, path):
    """v0 -> v1 (see the module docstring); returns (arrays, meta) of v1 minus the token model."""
    from .policies import default_hyper

    from .kernel import episode_keys

    _need(arrays, ["alpha", "beta", "prior_alpha", "prior_beta", "prices"], path)
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


def load_router(path, *, tokens=None):
    """Read a router written by `save_router`, migrating older format versions.

    Args:
      path: the .npz file.
      tokens: a token forecaster to use instead of the stored one (required for version 0 files).
    Returns:
      Router, continuing exactly where the saved one stopped (same decisions as an uninterrupted run).
    Raises:
      RouterStateError: missing, truncated or corrupt file, another format, a newer or unknown version.
    """
    arrays, meta = read_state(path)
    v = meta.get("version")
    if not isinstance(v, int) or v < 0:
        raise RouterStateError(f"{path}: version {v!r} is not a format version this code knows (0..{VERSION})")
    if v > VERSION:
        raise RouterStateError(f"{path}: written by a newer bandit-sim (router format v{v}); this one reads "
                               f"v0..v{VERSION}: upgrade bandit-sim to load it")
    while v < VERSION:
        arrays, meta = MIGRATIONS[v](arrays, meta, tokens, path)
        v = meta["version"]
    try:
        return _restore(arrays, meta, tokens, path)
    except KeyError as exc:
        raise RouterStateError(f"{path}: metadata lacks {exc}") from exc
