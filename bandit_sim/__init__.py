"""bandit_sim: data layer, routing worlds, policies, the vectorized JAX routing simulator and the live router.

Layers (arrows point down only; `import-linter` checks them in `make test`):
    bandit_sim.cli -> bandit_sim.experiments -> bandit_sim.router -> bandit_sim.sim -> bandit_sim.data
and `hierarchical` (the NumPyro models) below all of them. The public names below are imported from their layer
on first use, so `import bandit_sim` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_data": "data.loaders", "RoutingData": "data.schema", "DataValidationError": "data.schema",
    "validate_table": "data.schema", "family_of": "data.catalog", "price_of": "data.catalog",
    "World": "sim.world", "world_from_table": "sim.world",
    "fit_token_model": "sim.token_model", "predict_grid": "sim.token_model",
    "Hyper": "sim.policies", "Policy": "sim.policies", "default_hyper": "sim.policies", "make_policy": "sim.policies",
    "REGISTRY": "sim.policies", "thompson": "sim.policies", "contextual_thompson": "sim.policies",
    "linear_thompson": "sim.policies", "linucb": "sim.policies", "linear_prior": "sim.linear",
    "TextFeaturizer": "data.text_features", "featurizer_for_table": "data.text_features",
    "simulate": "sim.simulate", "hyper_grid": "sim.episode", "episode_keys": "sim.episode",
    "episode_order": "sim.episode", "chunk_length": "sim.episode", "Metrics": "sim.episode",
    "Router": "router.router", "Decision": "router.router", "Query": "router.router",
    "RouterInputError": "router.router", "RouterStateError": "router.state",
    "StandInTokens": "router.tokens", "PosteriorTokens": "router.tokens",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bandit_sim' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
