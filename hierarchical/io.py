"""Save and load fitted token posteriors: one `.npz` holding the arrays plus a JSON metadata entry, written atomically.

Layout: ``draws/<name>``, ``guide/<name>``, ``std_mean``, ``std_scale``, ``family_of_model``, ``elbo`` and
``__meta__`` (UTF-8 JSON as uint8: format, version, feature names, fit meta and a SHA-256 of every array, checked on
load). No pickle anywhere; arrays round-trip bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .features import Standardizer
from .fit import TokenPosterior
from .storage import read_checked_npz, write_checked_npz

__all__ = ["save_posterior", "load_posterior", "PosteriorFileError", "FORMAT", "VERSION"]

FORMAT = "hierarchical-token-posterior"
VERSION = 1


class PosteriorFileError(ValueError):
    """A posterior file is missing, truncated, corrupt or of another format."""


def save_posterior(post: TokenPosterior, path: str | os.PathLike) -> Path:
    """Write a posterior to `path` (.npz) atomically (`write_checked_npz`).

    Args:
      post: the fitted posterior.
      path: destination; ".npz" is appended if missing.
    Returns:
      The path written.
    """
    arrays = {f"draws/{k}": np.asarray(v) for k, v in post.draws.items()}
    arrays.update({f"guide/{k}": np.asarray(v) for k, v in post.guide_params.items()})
    arrays.update(std_mean=post.standardizer.mean, std_scale=post.standardizer.scale,
                  family_of_model=post.family_of_model, elbo=post.elbo)
    meta = dict(format=FORMAT, version=VERSION, feature_names=list(post.feature_names), meta=post.meta)
    return write_checked_npz(path, arrays, meta)


def load_posterior(path: str | os.PathLike) -> TokenPosterior:
    """Read a posterior written by `save_posterior`, verifying format and checksums.

    Args:
      path: the .npz file.
    Returns:
      TokenPosterior equal (bit for bit) to the one saved.
    Raises:
      PosteriorFileError: missing, unreadable, truncated or corrupt file, wrong format/version or checksum.
    """
    arrays, meta = read_checked_npz(path, error=PosteriorFileError, what="posterior file", fmt=FORMAT)
    if meta.get("version") != VERSION:
        raise PosteriorFileError(f"{path}: format {meta.get('format')!r} v{meta.get('version')}, "
                                 f"expected {FORMAT!r} v{VERSION}")
    return TokenPosterior(
        draws={k[6:]: v for k, v in arrays.items() if k.startswith("draws/")},
        standardizer=Standardizer(arrays["std_mean"], arrays["std_scale"]),
        family_of_model=arrays["family_of_model"],
        feature_names=tuple(meta["feature_names"]),
        guide_params={k[6:]: v for k, v in arrays.items() if k.startswith("guide/")},
        elbo=arrays["elbo"],
        meta=meta["meta"],
    )
