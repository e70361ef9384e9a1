"""Files the project writes and reads: one atomic writer and one checked-npz format (arrays + JSON + SHA-256).

No pickle anywhere: `write_checked_npz` stores arrays and a ``__meta__`` JSON entry holding a checksum of every
array; `read_checked_npz` verifies it and names the file and the problem when something is wrong. Every file the
project writes (reports, JSON, router state, posteriors, checkpoints, caches) goes through `atomic_write`.
NumPy only: importing this module does not load JAX or NumPyro.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["array_digest", "atomic_write", "atomic_savez", "npz_path", "write_checked_npz", "read_checked_npz"]


def array_digest(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes, dtype and shape (the checksum stored beside each saved array)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes() + str(a.dtype).encode() + str(a.shape).encode()).hexdigest()


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write bytes (or UTF-8 text) to `path` atomically: a temp file in the same folder, fsync, rename.

    The one atomic writer of the project (reports, JSON, npz files, parquet bytes): a crash mid-write leaves the
    previous file intact and no partial file behind.

    Args:
      path: destination (its folder is created).
      data: the whole content.
    Returns:
      The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to an .npz atomically (`atomic_write`); no object arrays (loadable with allow_pickle=False).

    Args:
      path: destination (its folder is created); a crash leaves the previous file intact.
      arrays: name -> array.
    Returns:
      The path written.
    """
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write(path, buf.getvalue())


def npz_path(path: str | os.PathLike) -> Path:
    """The file a checked npz at `path` lives in: `path`, with ".npz" appended when it does not end in ".npz".

    `write_checked_npz` and `read_checked_npz` both go through it, so what is saved as "x" is read back as "x".
    """
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _json_default(x):
    if isinstance(x, np.generic):  # NumPy scalars: int, float, bool
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} {x!r} is not JSON data")


def _json_key(obj, where: str = "") -> str:
    """The key path (a.b[2]) of the first value in `obj` that `_json_default` refuses."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        try:
            json.dumps(v, default=_json_default)
        except (TypeError, ValueError):
            return _json_key(v, f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}" if where else str(k))
    return where


def write_checked_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """The project's one data-file format: arrays plus JSON metadata with a SHA-256 per array, written atomically.

    The metadata goes into the ``__meta__`` entry (UTF-8 JSON as uint8) with ``sha256`` added; `read_checked_npz`
    verifies it. ".npz" is appended to `path` when missing.

    Args:
      path: destination. arrays: name -> array (no object arrays). meta: JSON-serialisable metadata (NumPy
        scalars and arrays are converted).
    Returns:
      The path written.
    Raises:
      TypeError: a metadata value that is not JSON data (the message names its key); nothing is written.
    """
    path = npz_path(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    meta = dict(meta, sha256={k: array_digest(v) for k, v in arrays.items()})
    out = dict(arrays)
    try:
        text = json.dumps(meta, default=_json_default)
    except (TypeError, ValueError) as exc:  # never a silent str(): the file would not read back what was saved
        raise TypeError(f"{path}: metadata key {_json_key(meta)!r} cannot be saved as JSON: {exc}") from None
    out["__meta__"] = np.frombuffer(text.encode(), dtype=np.uint8)
    return atomic_savez(path, out)


def read_checked_npz(path: str | os.PathLike, *, error: type[Exception] = ValueError, what: str = "data file",
                     fmt: str | None = None, require_checksums: bool = True) -> tuple[dict[str, np.ndarray], dict]:
    """Read a file written by `write_checked_npz`: (arrays, meta), checksums verified, never unpickled.

    Args:
      path: the .npz file (".npz" appended when missing, as `write_checked_npz` does).
      error: exception class raised (with a message naming the file and the problem).
      what: what the file is, for messages ("router state file", ...).
      fmt: when given, meta["format"] must equal it.
      require_checksums: refuse a file without ``sha256`` (False reads old formats that had none).
    Returns:
      (arrays without ``__meta__``, meta dict).
    """
    given = Path(path)
    path = npz_path(given)
    if not path.is_file():
        note = f" ({given} is not read: these files end in .npz)" if given != path and given.exists() else ""
        raise error(f"{path}: no such {what}{note}")
    try:
        z = np.load(path, allow_pickle=False)
        arrays = None  # one .npy array under an .npz name: not an archive
        if isinstance(z, np.lib.npyio.NpzFile):
            with z:
                arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise error(f"{path}: not a readable {what} (.npz), truncated or corrupt ({type(exc).__name__}: {exc})") from exc
    if arrays is None:
        raise error(f"{path}: not a {what}: it holds a single array (a .npy file), not an .npz archive")
    if "__meta__" not in arrays:
        raise error(f"{path}: no __meta__ entry (not a {what})")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: corrupt metadata JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise error(f"{path}: metadata is not a JSON object")
    if fmt is not None and meta.get("format") != fmt:
        raise error(f"{path}: format {meta.get('format')!r}, expected {fmt!r}")
    sums = meta.get("sha256")
    if sums is None and require_checksums:
        raise error(f"{path}: no checksums in the metadata (not a {what})")
    if sums is not None:
        if set(sums) != set(arrays):
            raise error(f"{path}: arrays {sorted(set(arrays) ^ set(sums))} missing or unexpected")
        for k, v in arrays.items():
            if array_digest(v) != sums[k]:
                raise error(f"{path}: checksum mismatch for array {k!r} (file corrupt)")
    return arrays, meta
