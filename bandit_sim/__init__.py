"""bandit_sim: data layer, routing worlds, policies and the vectorized JAX routing simulator."""

__version__ = "0.1.0"
