"""`bandit-sim impact`: what a router costs and saves per month at a user's traffic.

Two parts:

- `project_monthly(outcomes, ...)`: the projection itself, from per-router, per-query outcomes. For each router,
  `cost_usd` and `quality` are (R, N) arrays: R replicates (episodes, each paired with one joint draw of the token
  model's predictive) of the N evaluation queries, in one query order shared by all routers. A month of traffic is
  `days * queries_per_day` queries drawn with the traffic profile's category mix (the evaluation split's own mix by
  default, or a user's), so

      monthly cost = days * queries_per_day * sum_c mix_c * mean over the queries of category c of cost[r, i].

  Intervals: percentile bootstrap where each replicate draws one of the R replicates (episode variation and token
  predictive) and resamples the queries of every category with replacement (prompt variation). Routers share the
  replicate and query draws (common random numbers: episode r is the same query order for every router), so
  savings are paired. Deterministic routers may pass R = 1 (or the same row R times).
- `run_impact(...)`: runs the routers through the compare protocol (`protocol.prepare`, `select_lambda` on the
  validation split, `run_policy` on the test split with trajectories; the fixed routers through the kernel's NumPy
  twin `sim.reference`, which needs no compilation), turns their choices into per-query cost and quality, measures the live router's per-query latency, and calls `project_monthly`.
  The two baselines the savings are measured against are the metrics module's definitions, not the kernel's
  policies of the same name: always-premium is `metrics.premium_model` (the best by training quality, ties cheaper;
  `Setup.premium_arms`), also the reference of the lambda selection's retention; best single is
  `metrics.best_fixed_model` on the test split in hindsight (realised normalised cost, the tuned router's lambda).
  Where a model has no answer for a query, these fixed routers take the next model of their ranking that has one.

`compare` can add its report section by calling `project_monthly` with the per-query outcomes of its routers (see
`outcomes_from_trajectory` for building them from `run_policy(..., trajectories=True)`).

Break-even. The router's overhead per query is its measured latency (s) x the user's compute price (USD/s); routing
pays against a baseline while the saving per query exceeds it. The break-even compute price is
saving per query / latency (reported in USD per hour); with `compute_usd_per_hour` given, the net monthly saving
subtracts the overhead.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from bandit_sim.data.catalog import user_prices as registered_prices
from bandit_sim.data.features import prompt_features
from bandit_sim.data.loaders import load_data
from bandit_sim.data.prices import PricesFileError, load_prices
from bandit_sim.experiments import metrics as M
from bandit_sim.experiments.protocol import episode_stats, prepare, run_policy, select_lambda
from bandit_sim.experiments.report import command_line, md_table, savefig, write_json
from bandit_sim.router.router import Query, Router
from bandit_sim.sim.policies import default_hyper
from bandit_sim.sim.priors import warm_prior_from_train
from bandit_sim.sim.reference import run_reference
from bandit_sim.sim.token_model import fit_token_model
from bandit_sim.sim.world import pivot_index
from hierarchical.predictive import predict
from hierarchical.storage import atomic_write

__all__ = ["project_monthly", "outcomes_from_trajectory", "run_impact", "read_prices", "check_routers", "ROUTERS",
           "DEFAULT_ROUTERS", "parse_mix", "measure_latency", "headlines"]

# report key -> (kernel policy, options, lambda chosen on validation?)
ROUTERS: dict[str, tuple[str, dict, bool]] = {
    "thompson": ("thompson", {}, True),
    # the text-only warm Thompson router (what a deployment has at query time), pure Thompson sampling
    "thompson_warm": ("thompson", {"warm_prior": True, "min_explore": 0.0, "explore_decay": 0.0}, True),
    # label-aware: reads the benchmark's category label (reported apart, never the default)
    "thompson_label_warm": ("contextual_thompson", {"warm_prior": True, "min_explore": 0.0}, True),
    "always_premium": ("always_premium", {}, False),  # the metrics module's premium model (not the kernel policy)
    "best_single": ("best_fixed", {}, False),  # metrics.best_fixed_model in hindsight (not the kernel policy)
    "cheapest": ("cheapest", {}, False),
    "oracle": ("oracle", {}, False),
    "random": ("random", {}, False),
}
BASELINES = ("always_premium", "best_single")
# the text-only warm Thompson router and the reference routers
DEFAULT_ROUTERS = ("thompson_warm", "always_premium", "best_single", "cheapest", "oracle", "random")


def _ci(x: np.ndarray) -> list[float]:
    return [float(np.percentile(x, 2.5)), float(np.percentile(x, 97.5))]


def parse_mix(text: str | None) -> dict[str, float] | None:
    """`cat=share,cat=share` (shares are normalised) -> dict, or None."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, _, v = part.rpartition("=")
        if not name:
            raise ValueError(f"--mix: expected CATEGORY=SHARE, got {part!r}")
        try:
            share = float(v)
        except ValueError:
            raise ValueError(f"--mix: the share of {name.strip()!r} must be a number, got {v!r}") from None
        if not math.isfinite(share):
            raise ValueError(f"--mix: the share of {name.strip()!r} must be finite, got {v!r}")
        out[name.strip()] = share
    if any(v < 0 for v in out.values()) or sum(out.values()) <= 0:
        raise ValueError("--mix: shares must be >= 0 with a positive sum")
    return out


def project_monthly(outcomes: dict[str, dict[str, np.ndarray]], *, queries_per_day: float, days: float = 30.0,
                    category=None, mix: dict[str, float] | None = None, baselines=BASELINES,
                    latency_s: dict[str, float] | float | None = None, compute_usd_per_hour: float | None = None,
                    n_boot: int = 2000, seed: int = 0) -> dict:
    """Project per-query outcomes to a month of traffic, with intervals (module doc).

    Args:
      outcomes: router -> {"cost_usd": (R, N), "quality": (R, N)} per query, one query order for all routers
        (R may differ between routers; R = 1 for a deterministic router with exact costs).
      queries_per_day: traffic volume; days: days per month.
      category: (N,) category label of each query (default: one category).
      mix: category -> share of the traffic (normalised; default: the shares in `category`).
      baselines: routers the savings are measured against (those present in `outcomes`).
      latency_s: routing overhead per query in seconds (one value, or per router; baselines route for free).
      compute_usd_per_hour: the user's compute price for the overhead (None: only the break-even price).
      n_boot: bootstrap replicates; seed: NumPy seed.
    Returns:
      dict: "routers" -> per router monthly_cost_usd / cost_per_query_usd / quality {"estimate", "ci95"}, and
      "vs_<baseline>" -> savings_usd_per_month, savings_fraction, quality_change (each with ci95), break-even
      compute price and net savings; plus the traffic profile used.
    """
    if queries_per_day <= 0 or days <= 0:
        raise ValueError("queries_per_day and days must be > 0")
    names = list(outcomes)
    if not names:
        raise ValueError("project_monthly: no routers")
    n = np.asarray(outcomes[names[0]]["cost_usd"]).shape[-1]
    cat = np.zeros(n, int).astype(str) if category is None else np.asarray(category).astype(str)
    if cat.shape != (n,):
        raise ValueError(f"category must be ({n},), got {cat.shape}")
    labels, counts = np.unique(cat, return_counts=True)
    if mix is None:
        w = counts / counts.sum()
    else:
        unknown = set(mix) - set(labels)
        if unknown:
            raise ValueError(f"mix names categories absent from the queries: {sorted(unknown)}; known: "
                             f"{labels.tolist()}")
        w = np.array([float(mix.get(c, 0.0)) for c in labels])
        w = w / w.sum()
    members = [np.flatnonzero(cat == c) for c in labels]
    volume = days * queries_per_day
    rng = np.random.default_rng(seed)
    u_rep = rng.uniform(size=n_boot)  # replicate draw, shared by routers (paired episodes)
    picks = [m[rng.integers(0, len(m), (n_boot, len(m)))] for m in members]  # (B, n_c) query indices per category

    def per_query(a: np.ndarray) -> tuple[float, np.ndarray]:
        """(point estimate, (B,) bootstrap) of the mix-weighted mean per query of an (R, N) array."""
        a = np.atleast_2d(np.asarray(a, np.float64))
        if a.shape[-1] != n:
            raise ValueError(f"outcome arrays must have N = {n} columns, got {a.shape}")
        point = sum(wc * a[:, m].mean() for wc, m in zip(w, members))
        r = np.minimum((u_rep * a.shape[0]).astype(int), a.shape[0] - 1)
        boot = sum(wc * a[r[:, None], p].mean(1) for wc, p in zip(w, picks))
        return float(point), boot

    lat = latency_s if isinstance(latency_s, dict) else {k: latency_s for k in names}
    res, boots = {}, {}
    for k in names:
        c_pt, c_b = per_query(outcomes[k]["cost_usd"])
        q_pt, q_b = per_query(outcomes[k]["quality"])
        boots[k] = (c_b, q_b)
        res[k] = {"cost_per_query_usd": {"estimate": c_pt, "ci95": _ci(c_b)},
                  "monthly_cost_usd": {"estimate": c_pt * volume, "ci95": _ci(c_b * volume)},
                  "quality": {"estimate": q_pt, "ci95": _ci(q_b)},
                  "replicates": int(np.atleast_2d(outcomes[k]["cost_usd"]).shape[0])}
    for k in names:
        l_k = None if k in baselines else lat.get(k)
        for base in baselines:
            if base not in outcomes or base == k:
                continue
            c_pt, q_pt = res[k]["cost_per_query_usd"]["estimate"], res[k]["quality"]["estimate"]
            cb_pt, qb_pt = res[base]["cost_per_query_usd"]["estimate"], res[base]["quality"]["estimate"]
            save_b = boots[base][0] - boots[k][0]  # per query
            frac_b = save_b / np.where(boots[base][0] > 0, boots[base][0], np.nan)
            d = {"savings_usd_per_month": {"estimate": (cb_pt - c_pt) * volume, "ci95": _ci(save_b * volume)},
                 "savings_fraction": {"estimate": (cb_pt - c_pt) / cb_pt if cb_pt > 0 else float("nan"),
                                      "ci95": _ci(frac_b[np.isfinite(frac_b)]) if np.isfinite(frac_b).any()
                                      else [float("nan")] * 2},
                 "quality_change": {"estimate": q_pt - qb_pt, "ci95": _ci(boots[k][1] - boots[base][1])}}
            if l_k:
                per_q = cb_pt - c_pt
                d["latency_s"] = float(l_k)
                d["break_even_compute_usd_per_hour"] = {"estimate": per_q / l_k * 3600.0,
                                                        "ci95": _ci(save_b / l_k * 3600.0)}
                if compute_usd_per_hour is not None:
                    over = l_k * compute_usd_per_hour / 3600.0
                    d["overhead_usd_per_month"] = over * volume
                    d["net_savings_usd_per_month"] = {"estimate": (per_q - over) * volume,
                                                      "ci95": _ci((save_b - over) * volume)}
                    d["routing_pays"] = bool(per_q > over)
            res[k][f"vs_{base}"] = d
    return {"queries_per_day": float(queries_per_day), "days_per_month": float(days),
            "queries_per_month": float(volume),
            "mix": {str(c): float(x) for c, x in zip(labels, w)},
            "queries_per_category": {str(c): int(x) for c, x in zip(labels, counts)},
            "bootstrap": {"replicates": n_boot, "resampled": "one replicate (episode + token draw) and the queries "
                                                              "of each category, with replacement; shared by routers"},
            "compute_usd_per_hour": compute_usd_per_hour, "routers": res}


def outcomes_from_trajectory(traj, world, info, cost_usd: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-query outcomes (E, N) of one router from `run_policy(..., trajectories=True)` (one pass, T = N).

    Args:
      traj: Trajectory with leaves (E, T); world, info: the World it ran on.
      cost_usd: optional (E, N, K) or (N, K) USD cost of each (query, model) per replicate (default: the World's
        realised cost x cost_scale).
    Returns:
      {"cost_usd": (E, N), "quality": (E, N), "arm": (E, N)} in World row order.
    """
    q_idx = np.asarray(jax.device_get(traj.query))
    arm = np.asarray(jax.device_get(traj.arm))
    e, t = arm.shape
    n = np.asarray(world.quality).shape[0]
    if t != n:
        raise ValueError(f"outcomes_from_trajectory: episodes must route every query once (T = N = {n}), got T = {t}")
    arms = np.empty((e, n), int)
    arms[np.arange(e)[:, None], q_idx] = arm
    rows = np.arange(n)[None, :]
    qual = np.asarray(world.quality, np.float64)[rows, arms]
    if cost_usd is None:
        cost = np.asarray(world.cost, np.float64)[rows, arms] * info.cost_scale
    else:
        c = np.asarray(cost_usd, np.float64)
        cost = c[np.arange(e)[:, None], rows, arms] if c.ndim == 3 else c[rows, arms]
    return {"cost_usd": cost, "quality": qual, "arm": arms}


def check_routers(routers) -> None:
    """ValueError naming the router names `run_impact` does not know (and the ones it does)."""
    unknown = sorted(set(routers) - set(ROUTERS))
    if unknown:
        raise ValueError(f"unknown routers {unknown}; known: {', '.join(ROUTERS)}")


def read_prices(path: str | Path) -> dict[str, tuple[float, float]]:
    """A user's prices, USD per 1M tokens: the prices file every command takes (`bandit_sim.data.prices`: TOML, CSV
    or JSON entries of name, input_per_m, output_per_m -- a serve config is one), or the short forms CSV
    (model, input, output) and JSON {model: [input, output]}.

    Returns:
      model -> (USD per input token, USD per output token).
    Raises:
      ValueError (`PricesFileError` for the prices-file format): naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise PricesFileError(f"{path}: no such prices file")
    suffix = path.suffix.lower()
    rows = None
    if suffix == ".json":
        raw = json.loads(path.read_text())
        if isinstance(raw, dict) and raw and all(isinstance(v, list) and not any(isinstance(x, dict) for x in v)
                                                 for v in raw.values()):  # {model: [in, out]}, not {backends: [...]}
            bad = [m for m, v in raw.items() if len(v) != 2]
            if bad:
                raise ValueError(f"{path}: {{model: [input, output]}} needs two prices per model; {bad} do not")
            rows = {str(m): (float(v[0]), float(v[1])) for m, v in raw.items()}
    elif suffix == ".csv":
        df = pd.read_csv(path)
        if {"model", "input", "output"} <= set(df.columns) and "input_per_m" not in df.columns:
            rows = {str(r.model): (float(r.input), float(r.output)) for r in df.itertuples()}
    if rows is None:  # the common prices-file format (names the entry and field on error)
        table, _ = load_prices(path)
        rows = {m: (pr.input_per_m, pr.output_per_m) for m, pr in table.items()}
    bad = [m for m, (a, b) in rows.items() if not (np.isfinite(a) and np.isfinite(b) and a >= 0 and b >= 0)]
    if bad:
        raise ValueError(f"{path}: prices must be finite and >= 0; not so for {bad}")
    return {m: (a / 1e6, b / 1e6) for m, (a, b) in rows.items()}


def _token_draws(setup, split: str, seed: int, quick: bool, n_draws: int):
    """(mean (N, K), draws (D, N, K)) output tokens from the fitted token model's joint predictive samples."""
    rd = setup.data
    fit = fit_token_model(rd, seed=seed, quick=quick)
    prompt_ids, models = pivot_index(rd.table, split)
    feats = prompt_features(rd.table, prompt_ids)
    fam_of = rd.table.groupby("model")["family"].first()
    n, k = len(prompt_ids), len(models)
    m_idx = np.array([fit.model_index(m) for m in models])
    f_idx = np.array([fit.family_index(fam_of[m]) for m in models])
    pred = predict(fit.post, np.repeat(feats, k, axis=0), np.tile(m_idx, n), np.tile(f_idx, n),
                   key=jax.random.key(seed + 7), per_draw=1, return_samples=True)
    s = np.asarray(pred.samples, np.float64)  # (N*K, S): column j = posterior draw j (joint across rows)
    cols = np.random.default_rng(seed).choice(s.shape[1], n_draws, replace=s.shape[1] < n_draws)
    draws = s[:, cols].T.reshape(n_draws, n, k)
    return s.mean(1).reshape(n, k), draws


def _cost_grids(setup, prices: dict | None, token_noise, split: str = "test"):
    """USD cost of every (query, model) of the split: (N, K) realised, and (D, N, K) with token-model noise.

    Realised = the table's cost_usd, or with a prices file in_tok * p_in + out_tok * p_out. The replicate cost adds
    to the realised output tokens the token model's predictive deviation (draw - predictive mean), tokens >= 0.
    """
    w, info = setup.worlds[split], setup.infos[split]
    t = setup.data.table
    t = t[t["split"] == split]
    qi = {p: i for i, p in enumerate(info.prompt_ids)}
    mi = {m: j for j, m in enumerate(info.models)}
    rows = t["prompt_id"].astype(str).map(qi).to_numpy()
    cols = t["model"].astype(str).map(mi).to_numpy()
    n, k = len(info.prompt_ids), len(info.models)
    in_tok, out_tok = np.zeros((n, k)), np.zeros((n, k))
    in_tok[rows, cols] = t["input_tokens"].to_numpy(np.float64)
    out_tok[rows, cols] = t["output_tokens"].to_numpy(np.float64)
    if prices:
        missing = [m for m in info.models if m not in prices]
        if missing:
            raise ValueError(f"the prices file has no price for {missing}")
        p = np.array([prices[m] for m in info.models], np.float64)
    else:
        p = np.asarray(w.prices, np.float64)
    realised = (in_tok * p[:, 0] + out_tok * p[:, 1]) if prices else np.asarray(w.cost, np.float64) * info.cost_scale
    if token_noise is None:
        return realised, realised[None], p
    mean, draws = token_noise
    noisy = realised[None] + p[None, None, :, 1] * (np.maximum(out_tok[None] + draws - mean[None], 0.0) - out_tok[None])
    return realised, noisy, p


def _fixed_outcomes(arms: np.ndarray, world, cost_rep: np.ndarray) -> dict:
    """Per-query outcomes (E, N) of a fixed router choosing `arms` (N,) (the same in every replicate)."""
    e, n = cost_rep.shape[0], np.asarray(world.quality).shape[0]
    arms = np.broadcast_to(np.asarray(arms, int), (e, n))
    rows = np.arange(n)[None, :]
    return {"cost_usd": np.asarray(cost_rep, np.float64)[np.arange(e)[:, None], rows, arms],
            "quality": np.asarray(world.quality, np.float64)[rows, arms], "arm": arms}


def _reference_outcomes(policy: str, world, info, lam: float, gam: float, cost_rep: np.ndarray, seed: int) -> dict:
    """Per-query outcomes (E, N) of a non-learning router from `sim.reference.run_reference`.

    Deterministic routers choose the same arm for a query whatever the order, so one pass decides every replicate;
    `random` runs one pass per replicate with its own Generator stream.
    """
    e = cost_rep.shape[0]
    k = world.quality.shape[1]
    hyper = default_hyper(k, lam=lam, gam=gam)
    n = world.quality.shape[0]
    passes = e if policy == "random" else 1
    arms = np.empty((passes, n), int)
    for i in range(passes):
        r = run_reference(policy, world, hyper, np.arange(n), rng=np.random.default_rng([seed, i]))
        arms[i] = np.asarray(r["arm"])
    arms = np.broadcast_to(arms, (e, n))
    rows = np.arange(n)[None, :]
    return {"cost_usd": np.asarray(cost_rep, np.float64)[np.arange(e)[:, None], rows, arms],
            "quality": np.asarray(world.quality, np.float64)[rows, arms], "arm": arms}


def measure_latency(rd, n_queries: int = 60, seed: int = 0) -> float:
    """Median seconds of one live `Router.route` call (stand-in tokens) after warm-up, on the test prompts."""
    router = Router.from_data(rd, seed=seed)
    test = rd.table[rd.table["split"] == "test"].drop_duplicates("prompt_id")
    prompts = test[["prompt", "input_tokens"]].head(n_queries + 5).to_numpy()
    times = []
    for i, (text, tok) in enumerate(prompts):
        t0 = time.perf_counter()
        router.route(Query(str(text), input_tokens=int(tok)))
        if i >= 5:  # warm-up: compilation
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_impact(data, out: Path, *, queries_per_day: float, days: float = 30.0, mix: dict | None = None,
               prices: str | Path | None = None, episodes: int = 64, seed: int = 0, tokens: str = "hierarchical",
               target_retention: float = 0.95, latency_ms: float | None = None,
               compute_usd_per_hour: float | None = None, n_boot: int = 2000, quick: bool = False,
               routers=DEFAULT_ROUTERS, argv=None) -> dict:
    """Run the routers on the test split and project their monthly cost and quality (module doc).

    Args:
      data: dataset name or path (needs quality); out: output folder.
      queries_per_day, days: traffic volume; mix: category -> share (default: the test split's mix).
      prices: optional prices file (`read_prices`); default: the dataset's costs (catalog prices).
      episodes: test episodes per router (each paired with one token-predictive draw); seed: base seed.
      tokens: "hierarchical" (token-model predictions and predictive draws) or "standin" (no token noise).
      target_retention: the quality retention the validation-split lambda selection aims for.
      latency_ms: routing overhead per query (default: measured on the live router).
      compute_usd_per_hour: the user's compute price (None: only break-even prices).
      n_boot: bootstrap replicates; quick: small settings (smoke test).
      routers: keys of `ROUTERS` to run (tuned ones first; always_premium is needed for the savings).
      argv: command line to record.
    Returns:
      The metrics dict written to DIR/metrics.json.
    """
    check_routers(routers)  # before the minutes of preparation below
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = command_line(argv)
    if quick:
        episodes, n_boot = min(episodes, 8), min(n_boot, 400)
    rd = data if not isinstance(data, str) else load_data(data, seed=seed)
    user_prices = read_prices(prices) if prices else None
    if user_prices is not None:  # every routed model needs a price: checked before the preparation below
        missing = sorted(set(rd.split("test")["model"]) - set(user_prices))
        if missing:
            raise ValueError(f"the prices file {prices} has no price for {missing} (models of {rd.name!r}'s test "
                             f"split); it prices {sorted(user_prices)}")
    setup = prepare(rd, seed=seed, tokens=tokens, quick=quick)
    rd = setup.data
    wv, iv = setup.worlds["val"], setup.infos["val"]
    wt, it = setup.worlds["test"], setup.infos["test"]
    n_test = wt.quality.shape[0]
    t_prep = time.perf_counter()
    noise = _token_draws(setup, "test", seed, quick, episodes) if tokens == "hierarchical" else None
    t_draws = time.perf_counter() - t_prep
    realised, noisy, p = _cost_grids(setup, user_prices, noise)
    cost_rep = noisy if noisy.shape[0] == episodes else np.broadcast_to(realised, (episodes, *realised.shape))
    t_sel = time.perf_counter()
    gam, val_eps = 0.25, (4 if quick else 16)
    chosen, outcomes, lam_t = {}, {}, None
    order = sorted(routers, key=lambda k2: not ROUTERS[k2][2])  # tuned routers first: best_single uses their lambda
    for key in order:
        pol, opt, tuned = ROUTERS[key]
        over = {k2: v for k2, v in opt.items() if k2 != "warm_prior"}
        if opt.get("warm_prior"):
            cats = it.categories if pol == "contextual_thompson" else None
            a, b = warm_prior_from_train(rd, it.models, cats)
            over.update(prior_alpha=a, prior_beta=b)
        if tuned:
            chosen[key] = select_lambda(wv, iv, pol, episodes=val_eps, seed=seed + 1, gam=gam,
                                        target_retention=target_retention, premium_arms=setup.premium_arms("val"),
                                        hyper_overrides=over)
            lam = chosen[key]["lam"]
            lam_t = lam if lam_t is None else lam_t
        else:
            lam = 0.3 if lam_t is None else lam_t  # best_single's utility: the Thompson router's lambda (as compare)
        if tuned:
            m, traj = run_policy(wt, it, pol, episodes=episodes, seed=seed, lam=lam, gam=gam, hyper_overrides=over,
                                 trajectories=True)
            o = outcomes_from_trajectory(traj, wt, it, cost_usd=cost_rep)
            st = episode_stats(m, it, n_test)
            if user_prices is None:  # the trajectory's realised cost matches the kernel's own totals
                tot = outcomes_from_trajectory(traj, wt, it)["cost_usd"].sum(1)
                if not np.allclose(tot, st.cost_usd, rtol=1e-3):
                    raise AssertionError(f"{key}: per-query costs do not add up to the kernel's episode totals")
        elif key == "always_premium":  # the reference of retention and savings: the metrics module's premium model
            o = _fixed_outcomes(setup.premium_arms("test"), wt, cost_rep)
        elif key == "best_single":  # the best fixed model in hindsight (metrics), under the tuned router's lambda
            o = _fixed_outcomes(M.fixed_decisions(np.asarray(wt.mask), M.best_fixed_order(
                np.asarray(wt.quality), np.asarray(wt.cost), lam)), wt, cost_rep)
        else:  # the other fixed routers through the NumPy twin of the kernel (no compilation; tested equal to it)
            o = _reference_outcomes(pol, wt, it, lam, gam, cost_rep, seed)
        outcomes[key] = {"cost_usd": o["cost_usd"], "quality": o["quality"],
                         "utilization": np.bincount(o["arm"].ravel(), minlength=len(it.models)) / o["arm"].size}
    t_routers = time.perf_counter() - t_sel
    t_lat = time.perf_counter()
    lat_s = latency_ms / 1000.0 if latency_ms is not None else measure_latency(rd, n_queries=20 if quick else 60,
                                                                                seed=seed)
    t_lat = time.perf_counter() - t_lat
    cats = np.array([it.categories[c] for c in np.asarray(wt.category)])
    proj = project_monthly({k: {"cost_usd": v["cost_usd"], "quality": v["quality"]} for k, v in outcomes.items()},
                           queries_per_day=queries_per_day, days=days, category=cats, mix=mix,
                           latency_s=lat_s, compute_usd_per_hour=compute_usd_per_hour, n_boot=n_boot, seed=seed)
    for k, v in outcomes.items():
        proj["routers"][k]["utilization"] = {m: float(x) for m, x in zip(it.models, v["utilization"])}
        proj["routers"][k]["lam"] = chosen.get(k, {}).get("lam", lam_t if k == "best_single" else None)
    premium = it.models[setup.premium]
    best_model = (max(it.models, key=lambda m: proj["routers"]["best_single"]["utilization"][m])
                  if "best_single" in proj["routers"] else None)
    # `bandit-sim --prices FILE` registers a file in the common format for the process (`use_prices_file`)
    chose_with = ("the registered user prices (catalog prices for models they do not list)" if registered_prices()
                  else "catalog prices")
    result = {
        "command": cmd, "data": rd.name, "seed": seed, "episodes": episodes, "test_queries": n_test,
        "models": list(it.models), "premium_model": premium, "best_single_model": best_model,
        "baseline_definitions": {
            "always_premium": "metrics.premium_model: the best model by mean training quality (ties: cheaper); where "
                              "it has no answer, the next of that ranking; the reference of savings and of the "
                              "validation retention",
            "best_single": "metrics.best_fixed_model on the test split in hindsight: the best mean quality - lam * "
                           "realised normalised cost at the tuned router's lambda (ties: cheaper); where it has no "
                           "answer, the next of that ranking"},
        "prices": "user prices file " + str(prices) if prices else "the dataset's costs (catalog prices)",
        "token_uncertainty": ("each episode is paired with one joint draw of the token model's posterior predictive; "
                              "its deviation from the predictive mean is added to the realised output tokens")
        if noise is not None else "none (stand-in token predictions)",
        "lambda_selection": {k: {k2: v[k2] for k2 in ("lam", "retention", "cost_reduction", "met_target")}
                             for k, v in chosen.items()},
        "latency_ms_per_query": lat_s * 1000.0,
        "latency_source": "given (--latency-ms)" if latency_ms is not None else
        "measured: median of live Router.route calls (stand-in tokens) after warm-up, this machine",
        "seconds": {"prepare": t_prep - t_start, "token_draws": t_draws, "routers": t_routers, "latency": t_lat,
                    "total": time.perf_counter() - t_start, "token_fit": setup.token_fit.get("fit_seconds")},
        "notes": list(setup.notes) + ([f"routers chose with {chose_with}; costs repriced with {prices}"]
                                      if prices else []),
        **proj,
    }
    _plot(out / "monthly_cost.png", result)
    write_json(out / "metrics.json", result)
    atomic_write(out / "report.md", _report(result))
    return result


def _plot(path: Path, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["routers"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, k in enumerate(names):
        v = r["routers"][k]
        c, q = v["monthly_cost_usd"], v["quality"]
        # max(0, .): a constant cost's interval equals its estimate up to rounding (matplotlib refuses < 0)
        ax.errorbar(c["estimate"], q["estimate"], xerr=[[max(0.0, c["estimate"] - c["ci95"][0])],
                                                        [max(0.0, c["ci95"][1] - c["estimate"])]],
                    yerr=[[max(0.0, q["estimate"] - q["ci95"][0])], [max(0.0, q["ci95"][1] - q["estimate"])]],
                    fmt="o", capsize=2, label=k, color=f"C{i}")
    ax.set_xscale("log")
    ax.set_xlabel(f"monthly cost, USD ({r['queries_per_day']:,.0f} queries/day; 95% interval)")
    ax.set_ylabel("mean quality per query")
    ax.set_title(f"{r['data']}: projected monthly cost and quality", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    savefig(fig, path)


def _usd(x: float) -> str:
    return f"${x:,.0f}" if abs(x) >= 100 else f"${x:,.2f}"


def _report(r: dict) -> str:
    lines = ["# Economic impact: projected monthly cost and quality", "",
             f"Made by `{r['command']}` (seed {r['seed']}, {r['seconds']['total']:.0f} s).", "",
             f"Traffic: {r['queries_per_day']:,.0f} queries/day × {r['days_per_month']:g} days = "
             f"{r['queries_per_month']:,.0f} queries/month, category mix "
             + ", ".join(f"{c} {s:.1%}" for c, s in r["mix"].items()) + f". Prices: {r['prices']}. "
             f"{r['episodes']} test episodes per router on {r['test_queries']} test queries of `{r['data']}`; "
             f"premium model `{r['premium_model']}`, best single model `{r['best_single_model']}`"
             + (f" (always-premium: {r['baseline_definitions']['always_premium']}; best single: "
                f"{r['baseline_definitions']['best_single']})" if "baseline_definitions" in r else "") + ".", "",
             f"Intervals (95%): {r['bootstrap']['resampled']} ({r['bootstrap']['replicates']} bootstrap replicates); "
             f"token-model uncertainty: {r['token_uncertainty']}.", "",
             "![monthly cost](monthly_cost.png)", ""]
    rows = []
    for k, v in r["routers"].items():
        c, q = v["monthly_cost_usd"], v["quality"]
        s = v.get("vs_always_premium")
        rows.append([k, f"{_usd(c['estimate'])} [{_usd(c['ci95'][0])}, {_usd(c['ci95'][1])}]",
                     f"{q['estimate']:.3f} [{q['ci95'][0]:.3f}, {q['ci95'][1]:.3f}]",
                     f"{_usd(s['savings_usd_per_month']['estimate'])} ({s['savings_fraction']['estimate']:.1%}) "
                     f"[{_usd(s['savings_usd_per_month']['ci95'][0])}, {_usd(s['savings_usd_per_month']['ci95'][1])}]"
                     if s else "–",
                     f"{s['quality_change']['estimate']:+.3f}" if s else "–"])
    lines.append(md_table(["router", "monthly cost [95% CI]", "quality [95% CI]", "saving vs always-premium",
                           "quality vs premium"], rows))
    lines += ["", "## Against the best single model", ""]
    rows = []
    for k, v in r["routers"].items():
        s = v.get("vs_best_single")
        if s:
            rows.append([k, f"{_usd(s['savings_usd_per_month']['estimate'])} [{_usd(s['savings_usd_per_month']['ci95'][0])}, "
                            f"{_usd(s['savings_usd_per_month']['ci95'][1])}]",
                         f"{s['quality_change']['estimate']:+.3f} [{s['quality_change']['ci95'][0]:+.3f}, "
                         f"{s['quality_change']['ci95'][1]:+.3f}]"])
    lines.append(md_table(["router", "saving per month [95% CI]", "quality change [95% CI]"], rows))
    lines += ["", "## Break-even: when the routing overhead stops paying", "",
              f"Overhead per query = latency ({r['latency_ms_per_query']:.3f} ms, {r['latency_source']}) × compute "
              "price. Routing pays while the saving per query exceeds it; the break-even compute price is "
              "saving per query / latency.", ""]
    rows = []
    for k, v in r["routers"].items():
        for base in BASELINES:
            s = v.get(f"vs_{base}")
            if s and "break_even_compute_usd_per_hour" in s:
                b = s["break_even_compute_usd_per_hour"]
                net = s.get("net_savings_usd_per_month")
                rows.append([k, base, f"{b['estimate']:,.2f} [{b['ci95'][0]:,.2f}, {b['ci95'][1]:,.2f}]",
                             _usd(net["estimate"]) if net else "–"])
    lines.append(md_table(["router", "against", "break-even compute price, USD/hour [95% CI]",
                           "net saving/month at your price"], rows))
    if r["compute_usd_per_hour"] is None:
        lines += ["", "No compute price given (`--compute-usd-per-hour`): net savings not computed."]
    lines += ["", "## λ chosen on the validation split", ""]
    lines.append(md_table(["router", "λ", "val retention", "val cost reduction", "target met"],
                          [[k, f"{v['lam']:g}", v["retention"], v["cost_reduction"], str(v["met_target"])]
                           for k, v in r["lambda_selection"].items()]))
    lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def headlines(r: dict, with_latency: bool = True) -> list[str]:
    """The headline lines of an impact metrics dict (`bandit-sim run`'s index and the README quote them).

    Args:
      r: the metrics dict; with_latency: include the latency-dependent figures (break-even price, latency), which
        change from run to run with the machine (the README quotes the lines without them).
    """
    rs = r["routers"]
    prem = rs["always_premium"]
    out = [f"{r['data']} at {r['queries_per_day']:,.0f} queries/day: always-premium (`{r['premium_model']}`) "
           f"{_usd(prem['monthly_cost_usd']['estimate'])}/month, quality {prem['quality']['estimate']:.3f}"]
    order = sorted(rs, key=lambda k2: (not ROUTERS.get(k2, ("", {}, False))[2], k2))  # tuned routers first
    for k in order:
        v = rs[k]
        s = v.get("vs_always_premium")
        if not s or k == "always_premium":
            continue
        c, sv = v["monthly_cost_usd"], s["savings_usd_per_month"]
        line = (f"{k}: {_usd(c['estimate'])}/month [{_usd(c['ci95'][0])}, {_usd(c['ci95'][1])}], saves "
                f"{_usd(sv['estimate'])} ({s['savings_fraction']['estimate']:.1%}) [{_usd(sv['ci95'][0])}, "
                f"{_usd(sv['ci95'][1])}] vs always-premium, quality {v['quality']['estimate']:.3f} "
                f"({s['quality_change']['estimate']:+.3f})")
        if with_latency and "break_even_compute_usd_per_hour" in s:
            line += f"; break-even compute price {s['break_even_compute_usd_per_hour']['estimate']:,.0f} USD/hour"
        out.append(line)
    if with_latency:
        out.append(f"routing latency {r['latency_ms_per_query']:.3f} ms/query ({r['latency_source'].split(':')[0]})")
    return out
