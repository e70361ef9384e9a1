"""Thompson routing vectorized over episodes in NumPy: the benchmark's reference implementation.

Not the NumPy twin of the tests (that is `bandit_sim.sim.reference.run_reference`, one step at a time, fed the
kernel's draws): this one samples its own exact Beta draws with `Generator.beta` and runs every episode at once,
as a NumPy user would write the router, so `bandit-sim bench` can compare like with like.
"""

from __future__ import annotations

import numpy as np

from bandit_sim.sim.policies import Hyper
from bandit_sim.sim.world import World

__all__ = ["thompson_vectorized"]

F = np.float32


def _hyper_np(hyper: Hyper) -> dict:
    return {k: np.asarray(v, np.float32) for k, v in hyper._asdict().items()}


def thompson_vectorized(world: World, hyper: Hyper, episodes: int, steps: int, seed: int = 0) -> dict:
    """Thompson routing vectorized over episodes in NumPy (exact Beta via Generator.beta).

    Same policy as `thompson` (utility, exploration schedule, fractional updates); per-episode query
    orders are random permutations (concatenated when steps > N).

    Args:
      world: World. hyper: Hyper of scalars. episodes: E. steps: T. seed: NumPy seed.
    Returns:
      dict with reward (E,), regret (E,), choices (E, K).
    """
    rng = np.random.default_rng(seed)
    w = World(*(np.asarray(a) for a in world))
    h = _hyper_np(hyper)
    n_q, k = w.quality.shape
    e = np.arange(episodes)
    reps = -(-steps // n_q)
    order = np.concatenate([rng.permuted(np.tile(np.arange(n_q), (episodes, 1)), axis=1) for _ in range(reps)],
                           axis=1)[:, :steps]
    m = w.mask.astype(F)
    qbar = np.sum(w.quality * m, 0) / np.maximum(m.sum(0), 1)
    mu_all = (qbar - h["lam"] * w.pred_cost - h["gam"] * w.pred_unc).astype(F)
    base_u = (-h["lam"] * w.pred_cost - h["gam"] * w.pred_unc).astype(F)
    a = np.tile(h["prior_alpha"], (episodes, 1))
    b = np.tile(h["prior_beta"], (episodes, 1))
    total_r = np.zeros(episodes)
    regret = np.zeros(episodes)
    choices = np.zeros((episodes, k), np.int64)
    for t in range(steps):
        qi = order[:, t]
        avail = w.mask[qi] & (w.arrival_step <= t)
        pi = rng.beta(a, b)
        u = np.where(avail, pi + base_u[qi], -np.inf)
        greedy = np.argmax(u, 1)
        eps = max(h["min_explore"], h["explore_decay"] ** t)
        rand = np.argmax(np.where(avail, rng.random((episodes, k)), -1.0), 1)
        arm = np.where(rng.random(episodes) < eps, rand, greedy)
        r = w.quality[qi, arm]
        a[e, arm] += r
        b[e, arm] += 1.0 - r
        total_r += r
        mu = mu_all[qi]
        regret += np.max(np.where(avail, mu, -np.inf), 1) - mu[e, arm]
        choices[e, arm] += 1
    return dict(reward=total_r, regret=regret, choices=choices)
