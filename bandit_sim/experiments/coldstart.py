"""`bandit-sim coldstart`: how fast a newly released model becomes useful, with and without its family's prior.

Protocol (DESIGN.md "Cold start"), for each family with at least two models, in turn:
- The new model is the family's best model on the training split (the newcomer worth adopting). It is absent for
  the first `arrival` queries of every episode (masked), then available; each episode routes `arrival + horizon`
  test queries (concatenated random permutations of the test prompts).
- The other models start from their posterior after the training split (`incumbents="warm"`, default: an
  established router meets a newcomer), or from Beta(1, 1) (`incumbents="flat"`).
- Family prior: the newcomer's quality prior is Beta(1 + w*m, 1 + w*(1-m)) from the training record of the other
  models of its family (m their mean quality, w = min(20, their rows)); its token forecast (cost and uncertainty
  terms) is the hierarchical model's family prior (the model is left out of the token fit). Flat prior: Beta(1, 1)
  and the token model's global prior. Everything else is identical, the episodes share their random streams, and
  both conditions use one cost unit (the largest mean realised cost per query on the training split), so lambda and
  regret mean the same in both.
- Pure Thompson sampling: no forced exploration (explore_decay = min_explore = 0; the posterior's spread explores).
- Regret over the next 100 and 500 queries after the arrival: the sum of max_i mu_i(x) - mu_a(x) with
  mu_i(x) = qbar_i - lam * cost_i(x) (qbar_i the model's mean test quality, cost its realised normalised cost): the
  pseudo-regret against the router that knows every model (the same reference in both conditions).
- Identification: the number of queries after the arrival until the newcomer's share of pulls (rolling window of
  50 queries) comes within 20% of its share under full knowledge (the share of queries where it maximises mu) and
  stays there (the one convergence rule of `metrics.convergence_time`; band at least 1/50 wide); the horizon if never.
- Token error of the new model after n = 0, 10, 50, 100 observations of it (family prior vs global prior).
- Uncertainty and tests paired over episodes and over newcomers: intervals from a bootstrap over newcomers, then
  episodes within them. Two tests of family vs reference, side by side, at full precision:
  - conditional on these newcomers (``p_value``, ``test``, ``wilcoxon``): a paired t-test (and a Wilcoxon
    signed-rank test) over the (newcomer, episode) units. The episodes of one newcomer share its world, so they are
    not independent draws of "a newcomer": this is a fixed-effects test ("for these newcomers, does the family prior
    reduce regret?"), valid only conditional on the newcomers studied; its p-value says nothing about new ones.
  - across newcomers (``p_value_newcomers``, ``n_newcomers_test``, ``newcomer_test``): a one-sample t-test of the
    per-newcomer mean differences (family - reference, mean over episodes) against 0, n = the number of newcomers
    (and a Wilcoxon signed-rank test of them, zero differences dropped); NaN ("n/a") with fewer than 2 newcomers
    or when the differences have no spread (all 0 included). This is the test that generalises to other newcomers
    of the same kind; with one newcomer per family (4 on the bundled data) it has little power, and neither test nor
    the bootstrap over so few newcomers supports much inference beyond the newcomers studied.

The same study for linear Thompson sampling on the query text (policy ``linear_thompson``, metrics under
``"linear_thompson"``): the same newcomers, worlds, arrival, horizon, lambda, gamma, cost unit, episode streams and
pseudo-regret; the World's features x are a text featurizer fitted on the training prompts only
(`featurizer_for_table`, d = 32). Priors (`linear_newcomer_priors`): for each newcomer, one hierarchical SVI fit
(`sim.linear.fit_linear`) on the training rows of the other models (the newcomer's own rows are never used);
incumbents start from the exact posterior after their own training rows (or from the global prior with
``incumbents="flat"``); the newcomer starts from its family's weights and spread (family prior) or from the global
prior (global prior). Everything else is identical between the two conditions (the incumbents' priors are the same
arrays, recorded as ``incumbent_priors_identical``). As in the Beta study, the newcomer's token forecast is the token
model's family prior in the family condition and its global prior in the other.

Excess regret (both routers, beside the raw pseudo-regret, which is kept as it is): the reference of the
pseudo-regret ranks models by their mean quality, ignoring the query, so a contextual router accrues a large regret
against it in every condition, even where the newcomer is never pulled; no newcomer prior can change that part, and
it dominates a ratio of raw regrets. A third condition, ``known``, isolates what the prior is responsible for: the
router that already knows the newcomer as it knows the incumbents (the same episode streams; the newcomer's quality
prior is its posterior after its OWN training rows, Beta from its record or the exact linear posterior from its
family prior and its rows; its token forecast from the token model fitted with its rows). Per (newcomer, episode),
excess regret = regret(condition) - regret(known) over the next 100 and 500 queries; the reduction is
1 - excess(family) / excess(reference). The paired tests of family vs reference (conditional on the newcomers and
across newcomers) are the same tests as on the raw regret (the known regret cancels in the difference); the
reduction's denominator is what changes.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from scipy import stats as sps
from tqdm.auto import tqdm

from bandit_sim.data.features import prompt_features
from bandit_sim.data.loaders import RoutingData, load_data
from bandit_sim.data.text_features import featurizer_for_table, transform_table
from bandit_sim.experiments import metrics as M
from bandit_sim.experiments.protocol import run_policy, training_cost_scale
from bandit_sim.experiments.report import (command_line, fmt, interval, md_table, pval, savefig, short_name,
                                           write_json)
from bandit_sim.experiments.stats import bootstrap_ci, paired_test
from bandit_sim.sim.linear import fit_linear, linear_prior, train_rows
from bandit_sim.sim.priors import family_prior_from_train, warm_prior_from_train
from bandit_sim.sim.token_model import fit_token_model, predict_grid
from bandit_sim.sim.world import pivot_index, world_from_table
from hierarchical.predictive import predict
from hierarchical.quality import QualityConfig
from hierarchical.storage import atomic_write
from hierarchical.update import add_new_model

__all__ = ["run_coldstart", "linear_newcomer_priors", "NEW_MODEL_N"]

NEW_MODEL_N = (0, 10, 50, 100)
# smoke settings of the SVI fit: fewer draws, the full step budget (a fit cut at 2000 steps is not converged, and its
# scales are far off: tau_global 0.017 where the converged fit gives 0.005 and NUTS 0.0085 on the linear-truth world)
LIN_QUICK = QualityConfig(num_samples=200)
WINDOW = 50
BAND = 0.2  # identification: within 20% of the full-knowledge share


def _newcomers(rd) -> dict[str, str]:
    """family -> its best model on train, for families with >= 2 models."""
    train = rd.split("train")
    q = train.groupby("model")["quality"].mean()
    fam = train.groupby("model")["family"].first()
    out = {}
    for f in sorted(fam.unique()):
        members = fam.index[fam == f]
        if len(members) >= 2:
            out[f] = str(q[members].idxmax())
    return out


def _token_mae_after_n(rd, fit, model: str, seed: int) -> dict:
    """MAE of the new model's predicted median tokens on its test rows after n observations from train."""
    t = rd.table[rd.table["model"] == model]
    train = t[t["split"] == "train"].sample(frac=1.0, random_state=seed)
    test = t[t["split"] == "test"]
    x_test = prompt_features(rd.table, test["prompt_id"])
    y_test = test["output_tokens"].to_numpy(float)
    fam = fit.family_index(t["family"].iloc[0])
    out = {"family_prior": {}, "global_prior": {}}
    for n in NEW_MODEL_N:
        obs = train.iloc[:n]
        x_obs = prompt_features(rd.table, obs["prompt_id"]) if n else np.zeros((0, x_test.shape[1]), np.float32)
        for key, f in (("family_prior", fam), ("global_prior", None)):
            post = add_new_model(fit.post, x_obs, obs["output_tokens"].to_numpy(float), f, seed=seed)
            pred = predict(post, x_test, np.full(len(x_test), post.n_models - 1), key=jax.random.key(seed))
            out[key][str(n)] = float(np.mean(np.abs(np.asarray(pred.median) - y_test)))
    return out


def _identification(is_new: np.ndarray, target: float) -> np.ndarray:
    """Queries after the arrival until the rolling share of pulls of the newcomer stays within the band of `target`.

    Args:
      is_new: (E, H) 1 where the newcomer was pulled. target: its share under full knowledge.
    Returns:
      (E,) float: 1 + the last step whose rolling share lies outside the band (0 if none; H if the last does).
    """
    tol = max(BAND * target, 1.0 / WINDOW)
    outside = np.abs(M.rolling_mean(is_new.astype(np.float64), WINDOW) - target) > tol
    # the one convergence rule: "stays within" = the rolling deviation indicator stays below 1/2
    return M.convergence_time(outside.astype(np.float64), 0.5, 1).queries.astype(np.float64)


def _hier_ci(x: np.ndarray, rng, b: int = 2000) -> dict:
    """Mean of x (newcomers, episodes) with a 95% bootstrap interval over newcomers, then episodes within them.

    Resampling the newcomers carries their spread into the interval, but with a handful of newcomers (4 on the bundled
    data) the newcomer draws take few distinct values and the interval is rough; it supports little inference beyond
    the newcomers studied (see `_newcomer_test`).
    """
    x = np.asarray(x, np.float64)
    n, e = x.shape
    pick_n = rng.integers(0, n, (b, n))
    pick_e = rng.integers(0, e, (b, n, e))
    boot = x[pick_n[..., None], pick_e].mean((1, 2))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(x.mean()), "ci95": [float(lo), float(hi)]}


def _newcomer_outcomes(w, traj, j: int, lam: float, arrival: int) -> dict:
    """Pseudo-regret and identification of newcomer `j` after its arrival, from a run's trajectories.

    mu_i(x) = qbar_i - lam * cost_i(x) (qbar_i: model i's mean test quality; cost: realised, normalised) is the
    reference of the router that knows every model; the instantaneous regret is max_i mu_i(x) - mu_a(x).

    Returns:
      dict of (E,) arrays r100, r500, ident, share; (E, H) rolling; target (the full-knowledge share).
    """
    q, c = np.asarray(w.quality, np.float64), np.asarray(w.cost, np.float64)
    m = np.asarray(w.mask)
    qbar = np.where(m, q, 0).sum(0) / np.maximum(m.sum(0), 1)
    mu = np.where(m, qbar[None, :] - lam * c, -np.inf)  # (N, K) the full-knowledge reference
    order = np.asarray(jax.device_get(traj.query))[:, arrival:]  # (E, H)
    arms = np.asarray(jax.device_get(traj.arm))[:, arrival:]
    mu_t = mu[order]  # (E, H, K)
    inst = mu_t.max(-1) - np.take_along_axis(mu_t, arms[..., None], -1)[..., 0]
    target = float((mu.argmax(1) == j).mean())
    return {"r100": inst[:, :100].sum(1), "r500": inst[:, :500].sum(1),
            "ident": _identification(arms == j, target), "share": (arms == j).mean(1),
            "rolling": M.rolling_mean(inst, WINDOW), "target": target}


def linear_newcomer_priors(train, models, newcomer: str, featurizer, families: dict[str, str], *, seed: int = 0,
                           config: QualityConfig = QualityConfig()) -> tuple[dict, dict]:
    """The linear router's priors for a cold start: incumbents warm, the newcomer from its family or the global prior.

    One hierarchical SVI fit (`sim.linear.fit_linear`) on the training rows of the other models (the newcomer's rows
    are left out, and it is not one of the fitted models, so its family's weights, spread and noise come from the
    other members only). Incumbents: the exact posterior after their own training rows (`linear_prior(..., "warm")`,
    their own fitted noise); the newcomer has no rows and starts from its family's weights and spread
    (``newcomer="family"``) or from the global prior (``newcomer="cold"``). The two priors are identical in every
    incumbent's row.

    Args:
      train: tidy training rows. models: the World's arms, in order. newcomer: its name (one of `models`).
      featurizer: fitted on the training prompts (`featurizer_for_table`). families: model -> family.
      seed: SVI seed. config: SVI settings.
    Returns:
      ({"family_prior": LinearPrior, "global_prior": LinearPrior, "known": LinearPrior}, fit summary dict); "known" is
      the reference of the excess regret: the newcomer's exact posterior after its own training rows (from its family
      prior), the only prior that uses them.
    """
    models = list(models)
    inc = [m for m in models if m != newcomer]
    rows = train_rows(train[train["model"] != newcomer], inc, featurizer, families)
    fit = fit_linear(rows, config, seed=seed)
    fams = list(rows.families)
    fam_of_arm = np.array([fams.index(families[m]) if families.get(m) in fams else -1 for m in models])
    to_world = np.array([models.index(m) for m in inc])
    model_of_arm = np.array([inc.index(m) if m in inc else -1 for m in models])
    priors = {cond: linear_prior(fit, fam_of_arm, "warm", model_of_arm=model_of_arm, x=rows.x, quality=rows.quality,
                                 arm=to_world[rows.arm], newcomer=kind)
              for cond, kind in (("family_prior", "family"), ("global_prior", "cold"))}
    # the reference of the excess regret: the newcomer's exact posterior after its own training rows, from its family
    # prior, as the incumbents' (their rows are the same arrays in the same order: their posteriors are identical)
    own = train_rows(train[train["model"] == newcomer], [newcomer], featurizer, families)
    j = models.index(newcomer)
    priors["known"] = linear_prior(fit, fam_of_arm, "warm", model_of_arm=model_of_arm,
                                   x=np.concatenate([rows.x, own.x]),
                                   quality=np.concatenate([rows.quality, own.quality]),
                                   arm=np.concatenate([to_world[rows.arm], np.full(len(own.quality), j)]),
                                   newcomer="family")
    f = int(fam_of_arm[j])
    info = {"tau_global": float(fit.tau_global), "tau_family": float(fit.tau_family),
            "tau_global_bias": float(fit.tau_global_bias), "tau_family_bias": float(fit.tau_family_bias),
            "newcomer_train_rows": int(len(own.quality)),
            "family_weight_sd": float(np.sqrt(np.mean(np.asarray(fit.w_family_sd[f], np.float64) ** 2)))
            if f >= 0 else None,
            "family_known": f >= 0, "svi_steps": int(fit.meta["steps"]), "svi_converged": bool(fit.meta["converged"]),
            "svi_constant_lr_steps": int(fit.meta["constant_lr_steps"]),
            "svi_seconds": float(fit.meta["seconds"]), "svi_final_loss": float(fit.meta["final_loss"]),
            "train_rows": int(fit.meta["n_rows"])}
    return priors, info


def _prior_quality(prior, x: np.ndarray, j: int) -> dict:
    """The newcomer's prior predictive quality on the test queries: mean of x'm_j and of sqrt(x'S_j x)."""
    x = np.asarray(x, np.float64)
    m, s = np.asarray(prior.mean[j], np.float64), np.asarray(prior.cov[j], np.float64)
    return {"mean": float((x @ m).mean()), "sd": float(np.sqrt(np.einsum("nd,de,ne->n", x, s, x)).mean())}


def _study(res: dict, conds: tuple[str, str], rng, seed: int) -> dict:
    """Summaries, reduction and paired tests of one router's cold-start study over (newcomer, episode) units.

    Args:
      res: condition -> key ("r100", "r500", "ident") -> (newcomers, episodes) array. conds: (family, reference).
      rng: the bootstrap generator (consumed in a fixed order). seed: seed of the tests' intervals.
    """
    fam_c, ref_c = conds
    summary = {c: {"regret_next_100": _hier_ci(res[c]["r100"], rng), "regret_next_500": _hier_ci(res[c]["r500"], rng),
                   "identification_queries": _hier_ci(res[c]["ident"], rng)} for c in conds}
    f500, r500 = res[fam_c]["r500"], res[ref_c]["r500"]
    red, red_ci, ttest, wil, across = _paired(f500, r500, rng, seed)
    n_new, n_ep = f500.shape
    return {**summary,
            "regret_next_500_reduction": red, "regret_next_500_reduction_ci95": red_ci,
            "p_value": ttest.p_value, "test": {**ttest.as_dict(), "scope": SCOPE_UNITS},
            "wilcoxon": {**wil.as_dict(), "scope": SCOPE_UNITS},
            "p_value_newcomers": across["p_value"], "n_newcomers_test": across["n"], "newcomer_test": across,
            "p_value_meaning": P_VALUE_MEANING,
            "units": {"newcomers": n_new, "episodes_per_newcomer": n_ep,
                      "mean_difference": float((f500 - r500).mean())}}


SCOPE_UNITS = ("conditional on these newcomers: (newcomer, episode) units, whose episodes share their newcomer's world "
               "(a fixed-effects test; it does not generalise to other newcomers)")
SCOPE_NEWCOMERS = "across newcomers: the per-newcomer mean differences (family - reference), n = the newcomers"
P_VALUE_MEANING = {
    "p_value": "paired t-test of family vs reference over the (newcomer, episode) units, valid conditional on these "
               "newcomers (for these newcomers, does the family prior reduce regret?); episodes of one newcomer share "
               "its world, so it says nothing about other newcomers (test, wilcoxon: the same units)",
    "p_value_newcomers": "one-sample t-test of the per-newcomer mean differences (family - reference) against 0, "
                         "n = n_newcomers_test (newcomer_test: with a Wilcoxon signed-rank test of them); the test "
                         "that generalises to other newcomers; NaN (null) with fewer than 2 newcomers or no spread in "
                         "the differences (all 0 included)",
}


def _newcomer_test(f: np.ndarray, r: np.ndarray) -> dict:
    """Family vs reference across newcomers: tests of the per-newcomer mean differences, n = the newcomers.

    The (newcomer, episode) units of `paired_test` share their newcomer's world, so that test is conditional on the
    newcomers studied; this one treats the newcomer as the unit (each contributes its mean difference over episodes),
    the test that generalises to other newcomers.

    Args:
      f, r: (newcomers, episodes) family and reference outcomes on the same episode streams.
    Returns:
      dict: test, scope, n, mean_differences (per newcomer), mean_difference, statistic and p_value (two-sided
      one-sample t-test against 0), wilcoxon_statistic, wilcoxon_p_value and wilcoxon_n (signed-rank test, zero
      differences dropped). p-values are NaN with fewer than 2 newcomers; the t-test's also where the differences have
      no spread (all 0 included), the Wilcoxon's where every difference is 0.
    """
    d = (np.asarray(f, np.float64) - np.asarray(r, np.float64)).mean(1)
    n = int(d.size)
    nan = float("nan")
    out = {"test": "one-sample t (per-newcomer mean differences against 0)", "scope": SCOPE_NEWCOMERS, "n": n,
           "mean_differences": [float(x) for x in d], "mean_difference": float(d.mean()) if n else nan,
           "statistic": nan, "p_value": nan, "wilcoxon_statistic": nan, "wilcoxon_p_value": nan,
           "wilcoxon_n": int(np.count_nonzero(d))}
    if n >= 2 and np.ptp(d) > 1e-12 * max(1.0, float(np.abs(d).max())):
        t = sps.ttest_1samp(d, 0.0, alternative="two-sided")
        out.update(statistic=float(t.statistic), p_value=float(t.pvalue))
    if n >= 2 and np.any(d != 0):
        w = sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out.update(wilcoxon_statistic=float(w.statistic), wilcoxon_p_value=float(w.pvalue))
    return out


def _paired(f: np.ndarray, r: np.ndarray, rng, seed: int):
    """Family vs reference over (newcomers, episodes) arrays: (reduction, its 95% CI, paired t-test and Wilcoxon over
    the (newcomer, episode) units -- conditional on these newcomers --, the tests across newcomers `_newcomer_test`)."""
    red, red_ci = _reduction(f, r, rng)
    return (red, red_ci, paired_test(f.ravel(), r.ravel(), "ttest", seed=seed),
            paired_test(f.ravel(), r.ravel(), "wilcoxon", seed=seed), _newcomer_test(f, r))


def _reduction(f: np.ndarray, r: np.ndarray, rng) -> tuple[float, list[float]]:
    """1 - mean(f) / mean(r) over (newcomers, episodes) arrays, with a bootstrap interval (newcomers, then episodes).

    A reduction is defined only for a positive reference mean: NaN (reported "n/a") otherwise. Its interval is NaN
    too when more than 2.5% of the bootstrap replicates have a reference mean <= 0: the ratio is then unbounded
    within the interval's coverage, and percentiles of the other replicates alone would leave the point outside its
    own interval (read the paired difference and its test instead).
    """
    ratio = f.mean() / r.mean() if r.mean() > 0 else np.nan
    boot_red = []
    n_new, n_ep = f.shape
    for _ in range(2000):
        i = rng.integers(0, n_new, n_new)
        e = rng.integers(0, n_ep, (n_new, n_ep))
        fr, flr = f[i[:, None], e].mean(), r[i[:, None], e].mean()
        boot_red.append(1.0 - fr / flr if flr > 0 else np.nan)
    boot_red = np.asarray(boot_red)
    ok = np.isfinite(boot_red)
    ci = np.percentile(boot_red[ok], [2.5, 97.5]) if ok.mean() >= 0.975 else [np.nan, np.nan]
    return (float(1.0 - ratio) if np.isfinite(ratio) else float("nan")), [float(x) for x in ci]


def _excess_study(res: dict, conds: tuple[str, str], rng, seed: int) -> dict:
    """Excess regret over the router that knows the newcomer (condition "known"), per (newcomer, episode) unit.

    Args:
      res: condition -> key -> (newcomers, episodes) array, with a "known" condition. conds: (family, reference).
      rng: the bootstrap generator. seed: seed of the tests' intervals.
    """
    fam_c, ref_c = conds
    kn = res["known"]
    ex = {c: {n: res[c][n] - kn[n] for n in ("r100", "r500")} for c in conds}
    out = {"known": {"regret_next_100": _hier_ci(kn["r100"], rng), "regret_next_500": _hier_ci(kn["r500"], rng)},
           "excess_regret_next_100": {c: _hier_ci(ex[c]["r100"], rng) for c in conds},
           "excess_regret_next_500": {c: _hier_ci(ex[c]["r500"], rng) for c in conds}}
    f500, r500 = ex[fam_c]["r500"], ex[ref_c]["r500"]
    red, red_ci, ttest, wil, across = _paired(f500, r500, rng, seed)
    return {**out, "excess_regret_next_500_reduction": red, "excess_regret_next_500_reduction_ci95": red_ci,
            "excess_p_value": ttest.p_value, "excess_test": {**ttest.as_dict(), "scope": SCOPE_UNITS},
            "excess_wilcoxon": {**wil.as_dict(), "scope": SCOPE_UNITS},
            "excess_p_value_newcomers": across["p_value"], "excess_n_newcomers_test": across["n"],
            "excess_newcomer_test": across, "excess_mean_difference": float((f500 - r500).mean())}


def _per_family_excess(res: dict, conds: tuple[str, str], seed: int) -> dict:
    """One newcomer's known-router regret and excess regret over the next 500 queries (intervals over episodes)."""
    kn = res["known"]["r500"]
    ex = {c: res[c]["r500"] - kn for c in conds}
    den = ex[conds[1]].mean()
    return {"known": {"regret_next_100": bootstrap_ci(res["known"]["r100"], seed=seed).as_dict(),
                      "regret_next_500": bootstrap_ci(kn, seed=seed).as_dict(),
                      "new_model_share": float(res["known"]["share"].mean())},
            "excess_regret_next_500": {c: bootstrap_ci(ex[c], seed=seed).as_dict() for c in conds},
            "excess_regret_next_500_reduction": float(1.0 - ex[conds[0]].mean() / den) if den > 0 else float("nan")}


def _per_family(res: dict, conds: tuple[str, str], model: str, seed: int) -> dict:
    """One newcomer's figures of one router: per-condition intervals over episodes, reduction, paired t-test."""
    f, fl = res[conds[0]], res[conds[1]]
    return {"new_model": model, "full_knowledge_share": f["target"],
            **{c: {"regret_next_100": bootstrap_ci(res[c]["r100"], seed=seed).as_dict(),
                   "regret_next_500": bootstrap_ci(res[c]["r500"], seed=seed).as_dict(),
                   "identification_queries": bootstrap_ci(res[c]["ident"], seed=seed).as_dict(),
                   "new_model_share": float(res[c]["share"].mean())} for c in conds},
            "regret_next_500_reduction": float(1.0 - f["r500"].mean() / fl["r500"].mean()) if fl["r500"].mean() > 0
            else float("nan"),
            "regret_test": {**paired_test(f["r500"], fl["r500"], "ttest", seed=seed).as_dict(),
                            "scope": "this newcomer only: a paired t-test over its episodes"}}


def _same_arms(p, q, arms: np.ndarray) -> bool:
    """Whether two LinearPriors are identical (mean, covariance and noise) in the rows `arms`."""
    return bool(all(np.array_equal(np.asarray(a)[arms], np.asarray(b)[arms]) for a, b in zip(p, q)))


LINEAR_CONDS = ("family_prior", "global_prior")
BETA_CONDS = ("family_prior", "flat_prior")


def run_coldstart(data: str | RoutingData, out: Path, *, episodes: int = 100, arrival: int = 200, horizon: int = 500,
                  seed: int = 0, lam: float = 0.3, gamma: float = 0.25, tokens: str = "hierarchical",
                  quick: bool = False, incumbents: str = "warm", argv=None, progress: bool = True) -> dict:
    """Run the cold-start protocol and write DIR/metrics.json, DIR/report.md, DIR/convergence.png.

    Two routers, each in the two conditions, on the same newcomers, worlds and episode streams: Beta Thompson
    sampling (top-level keys) and linear Thompson sampling on the query text (key ``"linear_thompson"``; see the
    module doc).

    Args:
      data: dataset name, path or RoutingData; out: folder; episodes: E per newcomer and prior; arrival: T0 queries
        before the arrival; horizon: queries measured after it (>= 100); seed: base seed; lam: cost weight; gamma:
        uncertainty weight (utility pi - lam * (cost + gamma * sd)); tokens: "hierarchical" or "standin"; quick:
        smoke settings; incumbents: "warm" or "flat" (see the module doc); argv: command to record; progress: bar.
    Returns:
      metrics dict.
    """
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rd = data if isinstance(data, RoutingData) else load_data(data, seed=seed)
    data = rd.name
    if not rd.has_quality:
        raise ValueError(f"dataset {data!r} has no quality signal; cold start needs routing quality")
    if incumbents not in ("warm", "flat"):
        raise ValueError(f"incumbents must be 'warm' or 'flat', got {incumbents!r}")
    if int(arrival) < 0 or int(horizon) < 100 or int(episodes) < 2:
        raise ValueError(f"need arrival >= 0, horizon >= 100 and episodes >= 2; got {arrival}, {horizon}, {episodes}")
    if lam < 0 or gamma < 0:
        raise ValueError(f"lam and gamma must be >= 0, got {lam}, {gamma}")
    newcomers = _newcomers(rd)
    if not newcomers:
        raise ValueError(f"dataset {data!r} has no family with two or more models: no family prior to compare")
    scale = training_cost_scale(rd)
    steps = int(arrival) + int(horizon)
    explore = {"explore_decay": 0.0, "min_explore": 0.0}
    rng = np.random.default_rng(seed)
    # the linear router's query features: a text featurizer fitted on the training prompts only
    train = rd.split("train")
    featurizer, feat_note = featurizer_for_table(train, d=32, seed=seed)
    test_ids, _ = pivot_index(rd.table, "test")
    x_test = transform_table(featurizer, rd.table, test_ids)
    families = rd.table.groupby("model")["family"].first().astype(str).to_dict()
    lin_config = LIN_QUICK if quick else QualityConfig()

    per_family, lin_per_family, curves = {}, {}, {}
    units = {c: {"r100": [], "r500": [], "ident": []} for c in BETA_CONDS + ("known",)}
    lin_units = {c: {"r100": [], "r500": [], "ident": []} for c in LINEAR_CONDS + ("known",)}
    for fam, model in tqdm(list(newcomers.items()), desc=f"coldstart {data}", unit="family", disable=not progress):
        worlds = {}
        if tokens == "hierarchical":
            fit = fit_token_model(rd, seed=seed, exclude_models=[model], quick=quick)
            # the conditions differ only in the newcomer's column: predict the grid once, then that column
            mean, sd = predict_grid(fit, rd, "test", prior={model: "family"}, seed=seed)
            j = pivot_index(rd.table, "test")[1].index(model)
            mean_g, sd_g = mean.copy(), sd.copy()
            mean_g[:, j:j + 1], sd_g[:, j:j + 1] = predict_grid(fit, rd, "test", prior={model: "global"}, seed=seed,
                                                                columns=[model])
            # the known router's newcomer column: the token model fitted with the newcomer's rows (one fit, cached)
            mean_k, sd_k = mean.copy(), sd.copy()
            mean_k[:, j:j + 1], sd_k[:, j:j + 1] = predict_grid(fit_token_model(rd, seed=seed, quick=quick), rd, "test",
                                                                seed=seed, columns=[model])
            for cond, pred in (("family_prior", (mean, sd)), ("flat_prior", (mean_g, sd_g)), ("known", (mean_k, sd_k))):
                worlds[cond] = world_from_table(rd.table, "test", pred=pred, arrival={model: arrival},
                                                cost_scale=scale, x=x_test)
            token_mae = _token_mae_after_n(rd, fit, model, seed)
            token_fit = {"svi_converged": bool(fit.post.meta["converged"]), "svi_steps": int(fit.post.meta["steps"]),
                         "svi_seconds": float(fit.post.meta["seconds"])}
        else:
            w = world_from_table(rd.table, "test", arrival={model: arrival}, cost_scale=scale, x=x_test)
            worlds = {"family_prior": w, "flat_prior": w, "known": w}
            token_mae = None
            token_fit = None
        res = {}
        for cond, (w, info) in worlds.items():
            k = len(info.models)
            j = info.models.index(model)
            if incumbents == "warm":  # an established router: the other models start from their training record
                a, b = warm_prior_from_train(rd, info.models)
                a, b = a.copy(), b.copy()
            else:
                a, b = np.ones(k, np.float32), np.ones(k, np.float32)
            if cond != "known":  # the known router keeps the newcomer's own training record (warm_prior_from_train)
                a[j], b[j] = 1.0, 1.0  # the newcomer has no record of its own
            elif incumbents == "flat":
                ka, kb = warm_prior_from_train(rd, info.models)
                a[j], b[j] = ka[j], kb[j]
            if cond == "family_prior":
                fa, fb = family_prior_from_train(rd, info.models)
                a[j], b[j] = fa[j], fb[j]
            _, traj = run_policy(w, info, "thompson", episodes=episodes, seed=seed, lam=lam, gam=lam * gamma,
                                 steps=steps, trajectories="arms",
                                 hyper_overrides={"prior_alpha": a, "prior_beta": b, **explore})
            res[cond] = {**_newcomer_outcomes(w, traj, j, lam, arrival), "prior": [float(a[j]), float(b[j])]}
        per_family[fam] = _per_family(res, BETA_CONDS, model, seed)
        for cond in BETA_CONDS:
            per_family[fam][cond]["beta_prior"] = res[cond]["prior"]
        per_family[fam].update(_per_family_excess(res, BETA_CONDS, seed))
        w0 = worlds["family_prior"][0]
        q_test = np.asarray(w0.quality, np.float64)[:, j][np.asarray(w0.mask)[:, j]].mean()
        per_family[fam].update(new_model_train_quality=float(train.loc[train["model"] == model, "quality"].mean()),
                               new_model_test_quality=float(q_test))
        per_family[fam]["known"]["beta_prior"] = res["known"]["prior"]
        per_family[fam]["token_mae_after_n"] = token_mae
        per_family[fam]["token_fit"] = token_fit  # the token model fitted without the newcomer (None: stand-in)

        # linear Thompson sampling on the query text: the same worlds (the newcomer's token forecast from its
        # family / the global token prior), newcomers, arrival and episode streams; only the router differs
        info = worlds["family_prior"][1]
        j = info.models.index(model)
        lin_priors, fit_info = linear_newcomer_priors(train, info.models, model, featurizer, families, seed=seed,
                                                      config=lin_config)
        lres = {}
        for cond, bcond in zip(LINEAR_CONDS + ("known",), BETA_CONDS + ("known",)):
            w, info = worlds[bcond]
            p = lin_priors[cond]
            if incumbents == "flat":  # every incumbent from the global prior, as Beta(1, 1) in the Beta study
                g = lin_priors["global_prior"]
                new = np.arange(len(info.models)) == j
                p = p._replace(mean=np.where(new[:, None], p.mean, g.mean[j]).astype(np.float32),
                               cov=np.where(new[:, None, None], p.cov, g.cov[j]).astype(np.float32),
                               noise=np.where(new, p.noise, g.noise[j]).astype(np.float32))
            _, traj = run_policy(w, info, "linear_thompson", episodes=episodes, seed=seed, lam=lam, gam=lam * gamma,
                                 steps=steps, trajectories="arms",
                                 hyper_overrides={"lin_mean": p.mean, "lin_cov": p.cov, "lin_noise": p.noise,
                                                  **explore})
            avail = np.asarray(w.mask)[:, j]
            lres[cond] = {**_newcomer_outcomes(w, traj, j, lam, arrival),
                          "prior": {**_prior_quality(p, x_test[avail], j), "noise_var": float(p.noise[j])}}
            lres[cond]["_p"] = p
        pf, pg, pk = lres["family_prior"].pop("_p"), lres["global_prior"].pop("_p"), lres["known"].pop("_p")
        inc = np.arange(len(info.models)) != j
        lin_per_family[fam] = _per_family(lres, LINEAR_CONDS, model, seed)
        for cond in LINEAR_CONDS:
            lin_per_family[fam][cond]["prior_quality"] = lres[cond]["prior"]
        lin_per_family[fam].update(_per_family_excess(lres, LINEAR_CONDS, seed))
        lin_per_family[fam]["known"]["prior_quality"] = lres["known"]["prior"]
        lin_per_family[fam].update(
            fit=fit_info, new_model_train_quality=per_family[fam]["new_model_train_quality"],
            new_model_test_quality=per_family[fam]["new_model_test_quality"],
            incumbent_priors_identical=_same_arms(pf, pg, inc),
            known_incumbent_priors_identical=_same_arms(pf, pk, inc))

        curves[fam] = (model, res["family_prior"]["rolling"], res["flat_prior"]["rolling"], res["known"]["rolling"],
                       lres["family_prior"]["rolling"], lres["global_prior"]["rolling"], lres["known"]["rolling"])
        for cond in units:
            for key in units[cond]:
                units[cond][key].append(res[cond][key])
        for cond in lin_units:
            for key in lin_units[cond]:
                lin_units[cond][key].append(lres[cond][key])

    arr = {c: {k: np.stack(v) for k, v in d.items()} for c, d in units.items()}  # (newcomers, episodes)
    beta = _study(arr, BETA_CONDS, rng, seed)
    lin_arr = {c: {k: np.stack(v) for k, v in d.items()} for c, d in lin_units.items()}
    linear = _study(lin_arr, LINEAR_CONDS, rng, seed)
    # after both studies: the bootstrap draws of the raw figures are those of the run without the known condition
    beta.update(_excess_study(arr, BETA_CONDS, rng, seed))
    linear.update(_excess_study(lin_arr, LINEAR_CONDS, rng, seed))
    maes = [v["token_mae_after_n"] for v in per_family.values() if v["token_mae_after_n"]]
    token_mean = ({k: {n: float(np.mean([m[k][n] for m in maes])) for n in maes[0][k]} for k in maes[0]}
                  if maes else None)
    result = {
        "command": command_line(argv), "data": data, "seed": seed, "episodes": int(episodes), "arrival": int(arrival),
        "horizon": int(horizon), "steps_per_episode": steps, "incumbents": incumbents, "lam": lam, "gamma": gamma,
        "utility": "pi - lam * (cost + gamma * sd)", "exploration": "pure Thompson sampling (no forced exploration)",
        "cost_scale_usd": scale, "cost_scale": "the largest mean realised cost per query on the training split "
        "(one unit for both conditions)", "window": WINDOW, "band": BAND,
        "newcomers": newcomers,
        "skipped_families": sorted(set(rd.split("train")["family"]) - set(newcomers)),
        "router": "thompson (Beta per model)",
        "excess_regret": "regret(condition) - regret(known) per (newcomer, episode): known = the same router that "
                         "already knows the newcomer (its posterior after its own training rows, its token forecast "
                         "from the token model fitted with them), same episode streams; the pseudo-regret's reference "
                         "ignores the query, so a contextual router's raw regret holds a large part no newcomer prior "
                         "can change",
        **beta,
        "new_model_token_mae": token_mean,
        "per_family": per_family,
        "linear_thompson": {
            "router": "linear_thompson on the query text (Gaussian weights per model, x'w drawn per query)",
            "features": feat_note,
            "priors": "one hierarchical SVI fit per newcomer on the other models' training rows (the newcomer's "
                      "rows left out); incumbents: " + ("the exact posterior after their training rows"
                                                        if incumbents == "warm" else "the global prior")
                      + "; newcomer: its family's weights and spread (family_prior) vs the global prior "
                        "(global_prior)",
            **linear, "per_family": lin_per_family},
        "token_model": "hierarchical (family prior vs global prior for the new model)" if tokens == "hierarchical"
        else "stand-in (the same for both conditions)",
        "notes": list(rd.notes),
    }
    result["seconds"] = time.perf_counter() - t_start
    _plot(out, curves, arrival)
    write_json(out / "metrics.json", result)
    atomic_write(out / "report.md", _report(result))
    return result


def _plot(out: Path, curves, arrival: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 7.0), squeeze=False, sharey="col")
    for col, (fam, (model, rf, rfl, rk, lf, lg, lk)) in enumerate(curves.items()):
        for row, (router, pair, known) in enumerate((("Beta Thompson", ((rf, "family prior"), (rfl, "flat prior")), rk),
                                                     ("linear Thompson (text)", ((lf, "family prior"),
                                                                                 (lg, "global prior")), lk))):
            ax = axes[row, col]
            x = np.arange(pair[0][0].shape[1])
            for (r, label), c in zip(pair, ("tab:blue", "tab:orange")):
                ax.plot(x, r.mean(0), c=c, label=label)
                ax.fill_between(x, np.quantile(r, 0.1, 0), np.quantile(r, 0.9, 0), color=c, alpha=0.2)
            ax.plot(x, known.mean(0), c="0.4", ls="--", lw=1, label="newcomer known")
            ax.set_title(f"{router}: {short_name(model)} ({fam}) arrives", fontsize=8)
            if row == 1:
                ax.set_xlabel(f"queries after arrival (step {arrival})")
            ax.set_ylabel(f"rolling mean regret (w={WINDOW})")
            ax.legend(fontsize=7)
    fig.tight_layout()
    savefig(fig, out / "convergence.png")


def _ci_txt(x: dict, nd: int = 2) -> str:
    return f"{x['mean']:.{nd}f} [{x['ci95'][0]:.{nd}f}, {x['ci95'][1]:.{nd}f}]"


TESTS_NOTE = ("Two tests of family vs reference stand side by side. The paired t-test (and Wilcoxon) over the "
              "(newcomer, episode) units is conditional on these newcomers: the episodes of one newcomer share its "
              "world, so they are not independent draws of a newcomer, and the test answers only \"for these "
              "newcomers, does the family prior reduce regret?\". The test across newcomers takes each newcomer's mean "
              "difference over its episodes as one unit (one-sample t-test, n = the number of newcomers; n/a with "
              "fewer than 2 newcomers or no spread in the differences) and is the one that speaks to other newcomers; "
              "with so few newcomers (one per family) it has little power, and neither it nor the bootstrap over "
              "newcomers supports much inference beyond the newcomers studied.")


def _linear_section(r: dict, lin: dict) -> list[str]:
    """The report's section on linear Thompson sampling: both routers side by side, then per newcomer."""
    f, fl, lf, lg = r["family_prior"], r["flat_prior"], lin["family_prior"], lin["global_prior"]
    lines = ["## Linear Thompson sampling on the query text", "",
             f"The same newcomers, worlds (including the newcomer's token forecast: family vs global token prior), "
             f"arrival, horizon, utility, cost unit and episode streams; the router draws x'w per model and query. "
             f"{lin['features'][:1].upper() + lin['features'][1:]}. Priors: {lin['priors']}. Pure Thompson sampling.", ""]
    lines.append(md_table(["", "Beta: family prior", "Beta: flat prior", "linear: family prior",
                           "linear: global prior"], [
        ["regret over the next 100 queries", _ci_txt(f["regret_next_100"]), _ci_txt(fl["regret_next_100"]),
         _ci_txt(lf["regret_next_100"]), _ci_txt(lg["regret_next_100"])],
        ["regret over the next 500 queries", _ci_txt(f["regret_next_500"]), _ci_txt(fl["regret_next_500"]),
         _ci_txt(lf["regret_next_500"]), _ci_txt(lg["regret_next_500"])],
        ["queries to identification", _ci_txt(f["identification_queries"], 0),
         _ci_txt(fl["identification_queries"], 0), _ci_txt(lf["identification_queries"], 0),
         _ci_txt(lg["identification_queries"], 0)]]))
    lines.append("")
    lines.append(md_table(["router", "reduction of regret over the next 500 (family vs reference prior)", "95% CI",
                           "mean difference (family - reference)",
                           "paired t-test p, (newcomer, episode) units: conditional on these newcomers",
                           "Wilcoxon p, same units", "t-test p across newcomers (per-newcomer means)",
                           "Wilcoxon p across newcomers"], [
        [name, fmt(x["regret_next_500_reduction"]), interval(x["regret_next_500_reduction_ci95"]),
         f"{x['units']['mean_difference']:.3f}", pval(x["p_value"]), pval(x["wilcoxon"]["p_value"]),
         f"{pval(x['p_value_newcomers'])} (n = {x['n_newcomers_test']})",
         pval(x["newcomer_test"]["wilcoxon_p_value"])]
        for name, x in (("Beta Thompson (family vs flat)", r), ("linear Thompson (family vs global)", lin))]))
    lines += ["", "The two scopes of the tests as in the summary: over the (newcomer, episode) units, conditional on "
              "these newcomers; across newcomers, the test that speaks to other newcomers."]
    lines += ["", "Per newcomer (linear Thompson): the newcomer's prior predictive quality on the test queries "
              "(mean of x'm and of sqrt(x'Sx)) beside its observed mean test quality, and the fit's scales "
              "(tau: per-weight sd of a family around the global weights, of a model around its family's).", ""]
    rows = []
    for fam, v in lin["per_family"].items():
        pf, pg = v["family_prior"]["prior_quality"], v["global_prior"]["prior_quality"]
        rows.append([fam, f"`{v['new_model']}`", f"{v['full_knowledge_share']:.3f}",
                     v["family_prior"]["regret_next_500"]["estimate"], v["global_prior"]["regret_next_500"]["estimate"],
                     f"{v['regret_test']['p_value']:.3g}", f"{pf['mean']:.3f} ± {pf['sd']:.3f}",
                     f"{pg['mean']:.3f} ± {pg['sd']:.3f}", f"{v['new_model_test_quality']:.3f}",
                     f"{v['fit'].get('tau_family_bias', float('nan')):.4f} / {v['fit']['tau_family']:.4f}",
                     f"{v['fit'].get('tau_global_bias', float('nan')):.4f} / {v['fit']['tau_global']:.4f}",
                     v["family_prior"]["new_model_share"], v["global_prior"]["new_model_share"]])
    lines.append(md_table(["family", "new model", "full-knowledge share", "regret 500 (family)", "regret 500 (global)",
                           "p (t-test over its episodes)", "prior quality (family)", "prior quality (global)", "observed quality",
                           "tau_family (bias / slopes)", "tau_global (bias / slopes)", "new-model share (family)",
                           "new-model share (global)"], rows))
    fits = [v["fit"] for v in lin["per_family"].values()]
    bad = [fam for fam, v in lin["per_family"].items() if not v["fit"].get("svi_converged", True)]
    lines += ["", f"Quality fits (SVI): {len(fits) - len(bad)} of {len(fits)} met the convergence rule "
              f"({', '.join(str(f.get('svi_steps')) for f in fits)} steps; "
              f"{sum(f.get('svi_seconds', 0.0) for f in fits):.0f} s in all)"
              + (f"; **not converged for {', '.join(bad)}**: the scales above may still be moving." if bad else ".")]
    return lines + [""]


def _excess_section(r: dict, lin: dict | None) -> list[str]:
    """The report's section on the excess regret over the router that knows the newcomer (both routers)."""
    if "excess_regret_next_500" not in r:
        return []
    studies = [("Beta Thompson", r, BETA_CONDS)] + ([("linear Thompson (text)", lin, LINEAR_CONDS)] if lin else [])
    lines = ["## Excess regret over the router that knows the newcomer", "",
             "The pseudo-regret's reference ranks the models by their mean quality and ignores the query, so a "
             "contextual router accrues a large regret against it in every condition, even over queries where the "
             "newcomer is never pulled; no newcomer prior can change that part, and it dominates the ratio of raw "
             "regrets. The third condition, *known*, is the same router on the same episode streams with the newcomer "
             "already known as the incumbents are (its posterior after its own training rows; its token forecast from "
             "the token model fitted with them). Excess regret = regret(condition) - regret(known), per (newcomer, "
             "episode): what the newcomer's prior is responsible for. The tests of family vs reference (over the "
             "(newcomer, episode) units, conditional on these newcomers, and across newcomers) are the same as on the "
             "raw regret (the known regret cancels in the difference); the reduction's denominator is what changes.",
             ""]
    rows = []
    for name, x, (fc, rc) in studies:
        rows.append([f"{name} ({fc.split('_')[0]} vs {rc.split('_')[0]})", _ci_txt(x["known"]["regret_next_500"]),
                     _ci_txt(x[fc]["regret_next_500"]), _ci_txt(x[rc]["regret_next_500"]),
                     _ci_txt(x["excess_regret_next_100"][fc]), _ci_txt(x["excess_regret_next_100"][rc]),
                     _ci_txt(x["excess_regret_next_500"][fc]), _ci_txt(x["excess_regret_next_500"][rc]),
                     f"**{fmt(x['excess_regret_next_500_reduction'])}** "
                     f"{interval(x['excess_regret_next_500_reduction_ci95'])}",
                     pval(x["excess_p_value"]), pval(x["excess_wilcoxon"]["p_value"]),
                     f"{pval(x['excess_p_value_newcomers'])} (n = {x['excess_n_newcomers_test']})"])
    lines.append(md_table(["router", "regret 500 (known)", "regret 500 (family)", "regret 500 (reference)",
                           "excess 100 (family)", "excess 100 (reference)", "excess 500 (family)",
                           "excess 500 (reference)", "reduction of excess 500 [95% CI]",
                           "paired t-test p, (newcomer, episode) units: conditional on these newcomers",
                           "Wilcoxon p, same units", "t-test p across newcomers (per-newcomer means)"], rows))
    lines += ["", "*Known* knows the newcomer as the incumbents are known, from the training split, not from the test "
              "means the reference ranks by: where a model's training mean is off its test mean, learning on the test "
              "stream can beat it, the excess is then negative, and a reduction is a ratio of small or negative "
              "numbers (read the excess figures and the paired tests beside it; a reduction is – where the reference's "
              "mean excess is not positive, its interval [n/a] where more than 2.5% of the bootstrap replicates have a "
              "reference mean <= 0). The newcomer's training and test mean "
              "quality are listed per newcomer.", "",
              "Per newcomer (excess regret over the next 500 queries, mean over episodes):", ""]
    rows = []
    for name, x, (fc, rc) in studies:
        for fam, v in x["per_family"].items():
            red = v["excess_regret_next_500_reduction"]
            rows.append([name, fam, f"`{v['new_model']}`", v["known"]["regret_next_500"]["estimate"],
                         v["excess_regret_next_500"][fc]["estimate"], v["excess_regret_next_500"][rc]["estimate"],
                         "n/a" if red is None or not np.isfinite(red) else f"{red:.3f}", v["known"]["new_model_share"],
                         v["full_knowledge_share"], f"{v['new_model_train_quality']:.3f}",
                         f"{v['new_model_test_quality']:.3f}"])
    lines.append(md_table(["router", "family", "new model", "regret 500 (known)", "excess 500 (family)",
                           "excess 500 (reference)", "reduction", "new-model share (known)", "full-knowledge share",
                           "train mean quality", "test mean quality"], rows))
    return lines + [""]


def _report(r: dict) -> str:
    f, fl = r["family_prior"], r["flat_prior"]
    lines = [f"# Cold start: {r['data']}", "",
             f"Made by `{r['command']}` (seed {r['seed']}, {r['seconds']:.0f} s). {r['episodes']} episodes per newcomer "
             f"and prior, {r['steps_per_episode']} test queries each; the new model arrives after {r['arrival']} "
             f"queries; the other models start from "
             f"{'their training-split posterior' if r['incumbents'] == 'warm' else 'Beta(1, 1)'}. "
             f"{r['exploration'][:1].upper() + r['exploration'][1:]}, utility {r['utility']} with λ = {r['lam']}, γ = {r['gamma']}; one cost "
             f"unit for both conditions ({r['cost_scale']}: ${r['cost_scale_usd']:.3g}). Token model: "
             f"{r['token_model']}.", "",
             f"## Summary: Beta Thompson sampling ({r['units']['newcomers']} newcomers, one per family; intervals: "
             "bootstrap over newcomers, then episodes)", ""]
    lines.append(md_table(["", "family prior", "flat prior"], [
        ["regret over the next 100 queries", _ci_txt(f["regret_next_100"]), _ci_txt(fl["regret_next_100"])],
        ["regret over the next 500 queries", _ci_txt(f["regret_next_500"]), _ci_txt(fl["regret_next_500"])],
        ["queries to identification (share within 20% of full knowledge)", _ci_txt(f["identification_queries"], 0),
         _ci_txt(fl["identification_queries"], 0)]]))
    lines += ["", f"Regret over the next 500 queries: reduction **{fmt(r['regret_next_500_reduction'])}** "
              f"{interval(r['regret_next_500_reduction_ci95'])} with the family prior; paired t-test over the "
              f"{r['units']['newcomers']} x {r['units']['episodes_per_newcomer']} (newcomer, episode) units, "
              f"conditional on these {r['units']['newcomers']} newcomers: p = {pval(r['p_value'])} (Wilcoxon "
              f"signed-rank p = {pval(r['wilcoxon']['p_value'])}); across newcomers (t-test on the "
              f"{r['n_newcomers_test']} per-newcomer mean differences): p = {pval(r['p_value_newcomers'])} (Wilcoxon "
              f"p = {pval(r['newcomer_test']['wilcoxon_p_value'])}).", "", TESTS_NOTE, "",
              "Regret is the pseudo-regret against the router that knows every model's mean quality (the same "
              "reference in both conditions).", ""]
    lin = r.get("linear_thompson")
    if lin:
        lines += _linear_section(r, lin)
    lines += _excess_section(r, lin)
    lines += ["![convergence](convergence.png)", "", "## Per newcomer (Beta Thompson)", ""]
    rows = []
    for fam, v in r["per_family"].items():
        rows.append([fam, f"`{v['new_model']}`", f"{v['full_knowledge_share']:.3f}",
                     v["family_prior"]["regret_next_500"]["estimate"], v["flat_prior"]["regret_next_500"]["estimate"],
                     f"{v['regret_test']['p_value']:.3g}", v["family_prior"]["identification_queries"]["estimate"],
                     v["flat_prior"]["identification_queries"]["estimate"], v["family_prior"]["new_model_share"],
                     v["flat_prior"]["new_model_share"]])
    lines.append(md_table(["family", "new model", "full-knowledge share", "regret 500 (family)", "regret 500 (flat)",
                           "p (t-test over its episodes)", "identification (family)", "identification (flat)",
                           "new-model share (family)", "new-model share (flat)"], rows))
    if r["skipped_families"]:
        lines += ["", f"Families with a single model (no family history to borrow) are skipped: "
                      f"{', '.join(r['skipped_families'])}."]
    if r["new_model_token_mae"]:
        lines += ["", "## New model's token error after n observations (MAE in tokens, mean over newcomers)", ""]
        tm = r["new_model_token_mae"]
        lines.append(md_table(["prior"] + [f"n = {n}" for n in tm["family_prior"]],
                              [[k] + list(v.values()) for k, v in tm.items()]))
    lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"
