"""Save and load fitted token posteriors: one `.npz` holding the arrays plus a JSON metadata entry, written atomically.

Layout: ``draws/<name>``, ``guide/<name>``, ``std_mean``, ``std_scale``, ``family_of_model``, ``elbo`` and
``__meta__`` (UTF-8 JSON as uint8: format, version, feature names, fit meta and a SHA-256 of every array, checked on
load). No pickle anywhere; arrays round-trip bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .features import Standardizer
from .fit import TokenPosterior

__all__ = ["array_digest", "atomic_savez", "save_posterior", "load_posterior", "PosteriorFileError", "FORMAT", "VERSION"]

FORMAT = "hierarchical-token-posterior"
VERSION = 1


class PosteriorFileError(ValueError):
    """A posterior file is missing, truncated, corrupt or of another format."""


def array_digest(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes, dtype and shape (the checksum stored beside each saved array)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes() + str(a.dtype).encode() + str(a.shape).encode()).hexdigest()


def save_posterior(post: TokenPosterior, path: str | os.PathLike) -> Path:
    """Write a posterior to `path` (.npz) atomically (temp file + os.replace).

    Args:
      post: the fitted posterior.
      path: destination; ".npz" is appended if missing.
    Returns:
      The path written.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays = {f"draws/{k}": np.asarray(v) for k, v in post.draws.items()}
    arrays.update({f"guide/{k}": np.asarray(v) for k, v in post.guide_params.items()})
    arrays.update(std_mean=post.standardizer.mean, std_scale=post.standardizer.scale,
                  family_of_model=post.family_of_model, elbo=post.elbo)
    meta = dict(format=FORMAT, version=VERSION, feature_names=list(post.feature_names), meta=post.meta,
                sha256={k: array_digest(v) for k, v in arrays.items()})
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, default=float).encode(), dtype=np.uint8)
    atomic_savez(path, arrays)
    return path


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an .npz atomically: a temp file in the same folder, fsync, then rename over `path`.

    Args:
      path: destination (its folder is created); a crash leaves the previous file intact.
      arrays: name -> array (no object arrays: the file is data, loadable with allow_pickle=False).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_posterior(path: str | os.PathLike) -> TokenPosterior:
    """Read a posterior written by `save_posterior`, verifying format and checksums.

    Args:
      path: the .npz file.
    Returns:
      TokenPosterior equal (bit for bit) to the one saved.
    Raises:
      PosteriorFileError: missing, unreadable, truncated or corrupt file, wrong format/version or checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise PosteriorFileError(f"{path}: no such posterior file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise PosteriorFileError(f"{path}: not a readable posterior .npz ({type(exc).__name__}: {exc})") from exc
    if "__meta__" not in arrays:
        raise PosteriorFileError(f"{path}: no __meta__ entry (not written by save_posterior)")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PosteriorFileError(f"{path}: corrupt metadata JSON ({exc})") from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise PosteriorFileError(f"{path}: format {meta.get('format')!r} v{meta.get('version')}, "
                                 f"expected {FORMAT!r} v{VERSION}")
    sums = meta.get("sha256", {})
    if set(sums) != set(arrays):
        raise PosteriorFileError(f"{path}: arrays {sorted(set(arrays) ^ set(sums))} missing or unexpected")
    for k, v in arrays.items():
        if array_digest(v) != sums[k]:
            raise PosteriorFileError(f"{path}: checksum mismatch for array {k!r} (file corrupt)")
    return TokenPosterior(
        draws={k[6:]: v for k, v in arrays.items() if k.startswith("draws/")},
        standardizer=Standardizer(arrays["std_mean"], arrays["std_scale"]),
        family_of_model=arrays["family_of_model"],
        feature_names=tuple(meta["feature_names"]),
        guide_params={k[6:]: v for k, v in arrays.items() if k.startswith("guide/")},
        elbo=arrays["elbo"],
        meta=meta["meta"],
    )
