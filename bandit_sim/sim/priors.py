"""Beta quality priors taken from a training split: the family's record or the model's own history.

Both use `formulas.pseudo_count_prior` (the one prior-from-evidence formula of the simulator and the router).
"""

from __future__ import annotations

import numpy as np

from bandit_sim.sim.formulas import pseudo_count_prior

__all__ = ["family_prior_from_train", "warm_prior_from_train", "WARM_STRENGTH"]

WARM_STRENGTH = float("inf")  # pseudo-observation cap of the warm prior: inf = the whole training record


def family_prior_from_train(rd, models, strength: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Beta prior per arm from its family's training-split record, excluding the arm itself.

    alpha_i = 1 + w * m_f, beta_i = 1 + w * (1 - m_f), with m_f the mean training quality of the other models of
    arm i's family and w = min(strength, their number of training rows); Beta(1, 1) when the arm has no relative.

    Args:
      rd: RoutingData (its training split is used).
      models: the World's model order.
      strength: pseudo-count cap of the family prior.
    Returns:
      (prior_alpha (K,), prior_beta (K,)) float32.
    """
    train = rd.split("train")
    fam = train.groupby("model")["family"].first()
    stats = train.groupby("model")["quality"].agg(["sum", "count"])
    a = np.ones(len(models), np.float32)
    b = np.ones(len(models), np.float32)
    for i, m in enumerate(models):
        if m not in fam.index:
            continue
        rel = [r for r in fam.index if fam[r] == fam[m] and r != m and r in models]
        if not rel:
            continue
        s, n = float(stats.loc[rel, "sum"].sum()), float(stats.loc[rel, "count"].sum())
        a[i], b[i] = pseudo_count_prior(1.0, 1.0, s, n, strength, xp=np)
    return a, b


def warm_prior_from_train(rd, models, categories=None, strength: float = WARM_STRENGTH):
    """Beta priors from each model's own training-split record (the router starts from history).

    alpha = 1 + w*m, beta = 1 + w*(1 - m), with m the mean training quality of the model (per category when
    `categories` is given) and w = min(strength, its training rows). With the default strength (inf) this is exactly
    the Beta(1, 1) posterior after the training split (fractional rewards as pseudo-counts); a finite strength keeps
    at most that many pseudo-observations, so the online posterior can move faster when traffic drifts.

    Args:
      rd: RoutingData; models: the World's model order; categories: the World's category order (contextual) or None.
      strength: pseudo-observation cap.
    Returns:
      (prior_alpha, prior_beta): (K,) or (C, K) float32.
    """
    train = rd.split("train")
    cats = list(categories) if categories is not None else [None]
    a = np.ones((len(cats), len(models)), np.float32)
    b = np.ones((len(cats), len(models)), np.float32)
    for ci, cat in enumerate(cats):
        sub = train if cat is None else train[train["category"].astype(str) == cat]
        st = sub.groupby("model")["quality"].agg(["sum", "count"])
        for j, m in enumerate(models):
            if m in st.index and st.loc[m, "count"] > 0:
                a[ci, j], b[ci, j] = pseudo_count_prior(1.0, 1.0, float(st.loc[m, "sum"]), float(st.loc[m, "count"]),
                                                        strength, xp=np)
    return (a[0], b[0]) if categories is None else (a, b)
