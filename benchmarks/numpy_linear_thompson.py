"""Linear Thompson routing vectorized over episodes in NumPy: the benchmark's reference for `linear_thompson`.

Not the NumPy twin of the tests (`bandit_sim.sim.reference.run_reference`, one step at a time, fed the kernel's
draws): this one draws its own normals with a NumPy Generator and runs every episode at once, as a NumPy user would
write it (einsum quadratic forms x'S_k x over all arms, an in-place rank-one update of each episode's chosen arm), so
`bandit-sim bench` can compare like with like. Same policy as `policies.linear_thompson`: the scalar draw
x'w_k ~ N(x'm_k, x'S_k x) clipped to [0, 1], the utility, the exploration schedule, the Sherman-Morrison step.
"""

from __future__ import annotations

import numpy as np

from bandit_sim.sim.policies import Hyper
from bandit_sim.sim.world import World

__all__ = ["linear_thompson_vectorized"]

F = np.float32


def linear_thompson_vectorized(world: World, hyper: Hyper, episodes: int, steps: int, seed: int = 0) -> dict:
    """Linear Thompson routing vectorized over episodes in NumPy (float32).

    Args:
      world: World (with x (N, D)). hyper: Hyper of scalars (lin_* sized for D). episodes: E. steps: T. seed: NumPy seed.
    Returns:
      dict with reward (E,), regret (E,), choices (E, K).
    """
    rng = np.random.default_rng(seed)
    w = World(*(np.asarray(a) for a in world))
    h = {k: np.asarray(v, F) for k, v in hyper._asdict().items()}
    n_q, k = w.quality.shape
    e = np.arange(episodes)
    reps = -(-steps // n_q)
    order = np.concatenate([rng.permuted(np.tile(np.arange(n_q), (episodes, 1)), axis=1) for _ in range(reps)],
                           axis=1)[:, :steps]
    m = w.mask.astype(F)
    qbar = np.sum(w.quality * m, 0) / np.maximum(m.sum(0), 1)
    mu_all = (qbar - h["lam"] * w.pred_cost - h["gam"] * w.pred_unc).astype(F)
    base_u = (-h["lam"] * w.pred_cost - h["gam"] * w.pred_unc).astype(F)
    mean = np.ascontiguousarray(np.broadcast_to(h["lin_mean"], (episodes,) + h["lin_mean"].shape), F)  # (E, K, D)
    cov = np.ascontiguousarray(np.broadcast_to(h["lin_cov"], (episodes,) + h["lin_cov"].shape), F)  # (E, K, D, D)
    noise = h["lin_noise"]
    x_all = np.asarray(w.x, F)
    total_r = np.zeros(episodes)
    regret = np.zeros(episodes)
    choices = np.zeros((episodes, k), np.int64)
    for t in range(steps):
        qi = order[:, t]
        x = x_all[qi]  # (E, D)
        avail = w.mask[qi] & (w.arrival_step <= t)
        sx = np.einsum("ekij,ej->eki", cov, x)  # S_k x
        mx = np.einsum("ekd,ed->ek", mean, x)
        v = np.maximum(np.einsum("eki,ei->ek", sx, x), 0)
        pi = np.clip(mx + np.sqrt(v) * rng.standard_normal((episodes, k), F), 0, 1)
        u = np.where(avail, pi + base_u[qi], -np.inf)
        greedy = np.argmax(u, 1)
        eps = max(h["min_explore"], h["explore_decay"] ** t)
        rand = np.argmax(np.where(avail, rng.random((episodes, k), F), -1.0), 1)
        arm = np.where(rng.random(episodes) < eps, rand, greedy)
        r = w.quality[qi, arm]
        # rank-one step of each episode's chosen arm, in place
        sxa = sx[e, arm]  # (E, D)
        s = noise[arm] + np.einsum("ed,ed->e", sxa, x)
        resid = r - np.einsum("ed,ed->e", mean[e, arm], x)
        mean[e, arm] += sxa * (resid / s)[:, None]
        cov[e, arm] -= sxa[:, :, None] * sxa[:, None, :] / s[:, None, None]
        total_r += r
        mu = mu_all[qi]
        regret += np.max(np.where(avail, mu, -np.inf), 1) - mu[e, arm]
        choices[e, arm] += 1
    return dict(reward=total_r, regret=regret, choices=choices)
