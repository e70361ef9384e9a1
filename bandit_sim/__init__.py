"""bandit_sim: data layer, routing worlds, policies, the vectorized JAX routing simulator and the live router.

Public names are imported lazily (on first attribute access), so `import bandit_sim` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "load_data": "loaders", "RoutingData": "loaders",
    "family_of": "catalog", "price_of": "catalog",
    "fit_token_model": "token_bridge", "predict_grid": "token_bridge",
    "World": "world", "world_from_table": "world",
    "Hyper": "policies", "Policy": "policies", "default_hyper": "policies", "make_policy": "policies",
    "simulate": "kernel", "episode_keys": "kernel", "episode_order": "kernel", "chunk_length": "kernel",
    "Router": "router", "Decision": "router", "Query": "router", "RouterInputError": "router",
    "RouterStateError": "router_state",
    "StandInTokens": "router_tokens", "PosteriorTokens": "router_tokens",
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
