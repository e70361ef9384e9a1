"""NumPy reference of the routing kernel: a plain per-step Python loop for every policy.

`run_reference` mirrors `kernel.simulate` for one episode step by step, in float32. Fed the kernel's
query order and draws (from ``simulate(..., trajectories=True)``) it must choose the same arms and
produce the same metrics; without draws it samples its own with a NumPy Generator (exact Beta via
`Generator.beta`), which is the "NumPy per-step loop" of the benchmark.
The math (utility, exploration schedule, regret, convergence) is documented in policies.py/kernel.py.
"""

from __future__ import annotations

import numpy as np

from bandit_sim.sim.policies import Hyper
from bandit_sim.sim.world import World

__all__ = ["run_reference"]

F = np.float32


def _kahan(s, comp, x):
    y = F(x) - comp
    t = F(s + y)
    return t, F(F(t - s) - y)


def _hyper_np(hyper: Hyper) -> dict:
    return {k: np.asarray(v, np.float32) for k, v in hyper._asdict().items()}


def _random_arm(g, avail):
    return int(np.argmax(np.where(avail, g, F(-1.0))))


def run_reference(policy: str, world: World, hyper: Hyper, order: np.ndarray, *, draws=None,
                  rng: np.random.Generator | None = None, u_reward: np.ndarray | None = None,
                  reward: str = "observed", conv_threshold: float = 0.05, conv_window: int = 50,
                  options: dict | None = None) -> dict:
    """One episode of `policy`, one step at a time (NumPy float32).

    Args:
      policy: a name in policies.POLICIES.
      world: World (NumPy or JAX arrays).
      hyper: Hyper of scalars (no grid axis).
      order: (T,) int query order.
      draws: optional per-step draws from the kernel's trajectory (leaves with leading axis T); None ->
        sample with `rng`.
      rng: NumPy Generator (required when draws is None and the policy is random).
      u_reward: (T,) uniforms for Bernoulli rewards (required when reward == "bernoulli").
      reward: "observed" | "bernoulli".
      conv_threshold, conv_window: convergence definition (kernel.py).
      options: the policy's static options (sampler, n_categories, ...).
    Returns:
      dict with arm (T,), reward (T,), regret (T,), and totals reward, quality, cost, regret (float32),
      choices (K,), convergence (int), converged (bool), state (final posterior arrays).
    """
    options = dict(options or {})
    w = World(*(np.asarray(a) for a in world))
    h = _hyper_np(hyper)
    n_q, k = w.quality.shape
    order = np.asarray(order)
    steps = len(order)
    if draws is None and rng is None:
        raise ValueError("run_reference: give either draws or rng")
    if reward == "bernoulli" and u_reward is None:
        u_reward = rng.random(steps).astype(F)
    contextual = policy == "contextual_thompson"
    rows = options.get("n_categories", 1) if contextual else 1
    m = w.mask.astype(F)
    qbar = (np.sum(w.quality * m, 0, dtype=F) / np.maximum(np.sum(m, 0, dtype=F), F(1))).astype(F)
    lam, gam = h["lam"], h["gam"]
    premium = (np.sum(w.pred_cost * m, 0, dtype=F) / np.maximum(np.sum(m, 0, dtype=F), F(1))).astype(F)
    arm_u = (np.sum((w.quality - lam * w.pred_cost - gam * w.pred_unc) * m, 0, dtype=F)
             / np.maximum(np.sum(m, 0, dtype=F), F(1))).astype(F)

    # posterior state (Beta policies and UCB share n / s / s_comp)
    n = np.zeros((rows, k), np.int64)
    s = np.zeros((rows, k), F)
    sc = np.zeros((rows, k), F)
    # priors per posterior row: (K,) broadcast to every category, or (C, K) per category
    prior_a0 = np.broadcast_to(h["prior_alpha"], (rows, k)).astype(F)
    prior_b0 = np.broadcast_to(h["prior_beta"], (rows, k)).astype(F)
    prior_a, prior_b = prior_a0.copy(), prior_b0.copy()
    # linear-Gaussian posteriors (linear_thompson, linucb): per arm mean (K, D) and covariance (K, D, D)
    lin_m = np.array(h["lin_mean"], F)
    lin_S = np.array(h["lin_cov"], F)
    lin_noise = np.asarray(h["lin_noise"], F)
    sums = np.zeros(4, F)
    comp = np.zeros(4, F)
    choices = np.zeros(k, np.int64)
    window = np.zeros(conv_window, F)
    last_above = -1
    out_arm = np.zeros(steps, np.int64)
    out_r = np.zeros(steps, F)
    out_inst = np.zeros(steps, F)
    out_ab = np.full((steps, 2, k), np.nan, F)  # the Beta posterior each Thompson draw came from (NaN otherwise)

    def draw(t, name):
        return None if draws is None else np.asarray(getattr(draws, name) if hasattr(draws, name) else draws)[t]

    for t in range(steps):
        q_idx = int(order[t])
        avail = w.mask[q_idx] & (w.arrival_step <= t)
        pc, pu = w.pred_cost[q_idx], w.pred_unc[q_idx]
        qual, cost = w.quality[q_idx], w.cost[q_idx]
        row = int(w.category[q_idx]) if contextual else 0

        def util(pi):
            return np.where(avail, (pi - lam * pc - gam * pu).astype(F), F(-np.inf))

        def alpha_beta():
            nn = n[row].astype(F)
            return (prior_a[row] + s[row]).astype(F), (prior_b[row] + np.maximum(nn - s[row], F(0))).astype(F)

        # select
        if policy in ("thompson", "contextual_thompson"):
            a, b = alpha_beta()
            out_ab[t] = a, b
            if draws is None:
                if options.get("sampler", "exact") == "exact":
                    pi = rng.beta(a, b).astype(F)
                else:
                    tot = a + b
                    pi = np.clip(a / tot + np.sqrt(a * b / (tot * tot * (tot + 1))) * rng.standard_normal(k),
                                 0, 1).astype(F)
                u, g = F(rng.random()), rng.random(k).astype(F)
            else:
                pi, u, g = draw(t, "pi"), draw(t, "u"), draw(t, "g")
            eps = max(h["min_explore"], F(h["explore_decay"] ** F(t)))
            arm = _random_arm(g, avail) if u < eps else int(np.argmax(util(pi)))
        elif policy in ("simple_utility", "epsilon_greedy"):
            if draws is None:
                u, g = F(rng.random()), rng.random(k).astype(F)
            else:
                u, g = draw(t, "u"), draw(t, "g")
            a, b = alpha_beta()
            eps = h["epsilon"] if policy == "epsilon_greedy" else F(-1)
            arm = _random_arm(g, avail) if u < eps else int(np.argmax(util((a / (a + b)).astype(F))))
        elif policy == "ucb1":
            # pseudo-counts of the Beta prior (warm start): alpha + beta - 2 pulls, alpha - 1 successes
            n0 = np.maximum(prior_a0[0] + prior_b0[0] - F(2), F(0)).astype(F)
            s0 = np.clip(prior_a0[0] - F(1), F(0), n0).astype(F)
            nn = (n[0].astype(F) + n0).astype(F)
            tot = F(nn.sum(dtype=F) + F(1))
            idx = (s[0] + s0) / np.maximum(nn, F(1)) + h["ucb_c"] * np.sqrt(
                F(2) * np.log(tot) / np.maximum(nn, F(1)))
            uu = util(idx.astype(F))
            uu = np.where((nn == 0) & avail, F(np.inf), uu)
            arm = int(np.argmax(uu))
        elif policy in ("linear_thompson", "linucb"):
            x = np.asarray(w.x[q_idx], F)
            mean_x = (lin_m @ x).astype(F)  # x'm_k
            var_x = np.maximum(np.einsum("kij,i,j->k", lin_S, x, x).astype(F), F(0))  # x'S_k x
            if policy == "linucb":
                arm = int(np.argmax(util((mean_x + h["ucb_c"] * np.sqrt(var_x)).astype(F))))
            else:
                if draws is None:
                    z, u, g = rng.standard_normal(k).astype(F), F(rng.random()), rng.random(k).astype(F)
                else:
                    z, u, g = draw(t, "z"), draw(t, "u"), draw(t, "g")
                raw = (mean_x + np.sqrt(var_x) * z).astype(F)
                pi = np.clip(raw, F(0), F(1)).astype(F)
                eps = max(h["min_explore"], F(h["explore_decay"] ** F(t)))
                uu = util(pi)  # ties among equal utilities: the larger unclipped draw (formulas.argmax_ties_by)
                arm = _random_arm(g, avail) if u < eps else int(np.argmax(np.where(uu == uu.max(), raw, -np.inf)))
        elif policy == "random":
            g = rng.random(k).astype(F) if draws is None else np.asarray(draws)[t]
            arm = _random_arm(g, avail)
        elif policy == "always_premium":
            arm = int(np.argmax(np.where(avail, premium, -np.inf)))
        elif policy == "cheapest":
            arm = int(np.argmax(np.where(avail, -pc, -np.inf)))
        elif policy == "threshold":
            score = premium if w.features[q_idx, 0] > h["threshold"] else -pc
            arm = int(np.argmax(np.where(avail, score, -np.inf)))
        elif policy == "best_fixed":
            arm = int(np.argmax(np.where(avail, arm_u, -np.inf)))
        elif policy == "oracle":
            qmax = np.max(np.where(avail, qual, -np.inf))
            arm = int(np.argmax(np.where(avail & (qual == qmax), -cost, -np.inf)))
        else:
            raise ValueError(f"run_reference: unknown policy {policy!r}")

        # observe
        q = F(qual[arm])
        r = F(u_reward[t] < q) if reward == "bernoulli" else q
        mu = (qbar - lam * pc - gam * pu).astype(F)
        inst = F(np.max(np.where(avail, mu, -np.inf)) - mu[arm])

        # update
        if policy in ("thompson", "contextual_thompson", "simple_utility", "epsilon_greedy", "ucb1"):
            n[row, arm] += 1
            s[row, arm], sc[row, arm] = _kahan(s[row, arm], sc[row, arm], r)
        if policy != "ucb1" and policy in ("thompson", "contextual_thompson", "simple_utility", "epsilon_greedy"):
            arriving = (w.arrival_step == t + 1)
            if h["family_strength"] > 0 and arriving.any():
                pulls = n.sum(0).astype(F)
                succ = s.sum(0, dtype=F)
                arrived = w.arrival_step <= t
                for i in np.flatnonzero(arriving):
                    donors = (w.family == w.family[i]) & (np.arange(k) != i) & arrived
                    n_f, s_f = F(pulls[donors].sum()), F(succ[donors].sum())
                    if n_f > 0:
                        mm = F(s_f / max(n_f, F(1)))
                        n_eff = min(h["family_strength"], n_f)
                        prior_a[:, i] = prior_a0[:, i] + mm * n_eff
                        prior_b[:, i] = prior_b0[:, i] + (F(1) - mm) * n_eff
        if policy in ("linear_thompson", "linucb"):
            # Sherman-Morrison step of the chosen arm: S' = S - Sx x'S / (noise + x'Sx), m' = m + Sx (r - x'm) / (...)
            Sx = (lin_S[arm] @ x).astype(F)
            denom = F(lin_noise[arm] + F(x @ Sx))
            lin_m[arm] += Sx * F(F(r - F(x @ lin_m[arm])) / denom)
            lin_S[arm] -= (np.outer(Sx, Sx) / denom).astype(F)
        for j, v in enumerate((r, q, cost[arm], inst)):
            sums[j], comp[j] = _kahan(sums[j], comp[j], v)
        choices[arm] += 1
        window[t % conv_window] = inst
        mean = F(window.sum(dtype=F) / F(min(t + 1, conv_window)))
        if mean >= conv_threshold:
            last_above = t
        out_arm[t], out_r[t], out_inst[t] = arm, r, inst

    return dict(arm=out_arm, reward_t=out_r, regret_t=out_inst, alpha_beta_t=out_ab, reward=sums[0], quality=sums[1],
                cost=sums[2], regret=sums[3], choices=choices, convergence=last_above + 1,
                converged=last_above < steps - 1,
                state=dict(n=n, s=s, prior_a=prior_a, prior_b=prior_b, lin_mean=lin_m, lin_cov=lin_S))
