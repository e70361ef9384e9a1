"""hierarchical: NumPyro models fit with SVI (optax) -- output-token counts pooled model -> family -> global, and
the linear quality model on query features (quality.py) behind the linear routers' priors.

Arrays in, arrays out (features, model index, family index, tokens); no dependency on bandit_sim or pandas.
Public names are imported on first use, so `import hierarchical.features` or `hierarchical.io` does not load
NumPyro.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FEATURE_NAMES": "features", "query_features": "features", "Standardizer": "features",
    "FitConfig": "fit", "TokenPosterior": "fit", "fit_svi": "fit", "fit_nuts": "fit",
    "Prediction": "predictive", "predict": "predictive",
    "add_new_model": "update",
    "QualityFit": "quality", "QualityConfig": "quality", "fit_quality": "quality",
    "save_posterior": "io", "load_posterior": "io", "PosteriorFileError": "io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hierarchical' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
