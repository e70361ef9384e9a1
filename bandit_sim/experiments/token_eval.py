"""`bandit-sim tokens`: evaluate the hierarchical token model against baselines on a routing table.

Protocol (per seed; at least 3 seeds, mean and per-seed reported):
- Split prompts 80/20 (seeded) into train/test prompts.
- Held-out models ("leave-one-model-out by family"): in every family with >= 2 models that answered >= 90% of the
  prompts, one model (seeded) is removed from training altogether. All held-out models of a seed are removed from
  the same fit (one fit per seed rather than one per model, to fit the time budget); each family still keeps
  >= 1 trained model, so its family prior is estimated without the held-out model.
- Fit the hierarchical model (SVI) and the baselines on the training rows (train prompts x trained models).
- heldout_prompts: test prompts x trained models. heldout_models: test prompts x held-out models, predicted from
  the family prior (family known) and from the global prior (family unknown), plus the baselines defined there.
- new_model_after_n: each held-out model observed on n of its train-prompt rows (n = 0, 10, 50, 100, seeded order),
  updated by `hierarchical.update.add_new_model`, scored (MAE) on its test-prompt rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from bandit_sim.data.loaders import load_data
from hierarchical.baselines import BayesianRidgePerModel, GlobalMedian, PerModelMedian, PooledRidge
from hierarchical.evaluate import arviz_summary, paired_test, score
from hierarchical.features import query_features
from hierarchical.fit import FitConfig, fit_svi
from hierarchical.predictive import predict
from hierarchical.storage import atomic_write
from hierarchical.update import add_new_model

__all__ = ["run_token_eval", "PROMPT_METHODS", "MODEL_METHODS", "NEW_MODEL_N"]

PROMPT_METHODS = ("hierarchical", "bayesian_ridge_per_model", "pooled_ridge", "per_model_median", "global_median")
MODEL_METHODS = ("family_prior", "global_prior", "pooled_ridge", "global_median")
NEW_MODEL_N = (0, 10, 50, 100)
UNDEFINED = {
    "pooled_ridge": "sklearn Ridge gives a point prediction only: coverage and CRPS are null",
    "bayesian_ridge_per_model (held-out models)": "undefined for a model with no training rows",
    "per_model_median (held-out models)": "undefined for a model with no training rows",
}


def _prepare(table: pd.DataFrame):

    need = {"prompt_id", "prompt", "model", "family", "output_tokens"}
    missing = need - set(table.columns)
    if missing:
        raise ValueError(f"token eval: table lacks columns {sorted(missing)}")
    if len(table) == 0:
        raise ValueError("token eval: empty table")
    prompts = table.drop_duplicates("prompt_id")
    input_tokens = prompts["input_tokens"].to_numpy() if "input_tokens" in prompts else None
    feats = query_features(prompts["prompt"].tolist(), input_tokens)
    p_index = pd.Index(prompts["prompt_id"])
    models = sorted(table["model"].unique())
    families = sorted(table["family"].unique())
    fam_of = (table.drop_duplicates("model").set_index("model")["family"].reindex(models)
              .map({f: i for i, f in enumerate(families)}).to_numpy(np.int32))
    rows = dict(
        prompt=p_index.get_indexer(table["prompt_id"]).astype(np.int64),
        model=pd.Index(models).get_indexer(table["model"]).astype(np.int64),
        tokens=table["output_tokens"].to_numpy(np.float64),
    )
    return feats, p_index, models, families, fam_of, rows


def _pick_heldout(models, fam_of, rows, n_prompts, rng):
    counts = np.bincount(rows["model"], minlength=len(models))
    full = counts >= 0.9 * n_prompts
    held = []
    for g in np.unique(fam_of):
        cand = np.flatnonzero((fam_of == g) & full)
        if cand.size >= 2:
            held.append(int(rng.choice(cand)))
    return np.array(sorted(held), np.int64)


def _score_baseline(pred, y):

    return score(y, pred.point, pred.quantiles, pred.samples)


def _one_seed(seed, feats, models, families, fam_of, rows, cfg, test_frac, progress):


    rng = np.random.default_rng(seed)
    n_prompts = feats.shape[0]
    test_prompts = rng.permutation(n_prompts)[: int(round(test_frac * n_prompts))]
    is_test = np.isin(rows["prompt"], test_prompts)
    held = _pick_heldout(models, fam_of, rows, n_prompts, rng)
    is_held = np.isin(rows["model"], held)
    trained = np.setdiff1d(np.arange(len(models)), held)
    remap = np.full(len(models), -1, np.int64)
    remap[trained] = np.arange(trained.size)
    x_all = feats[rows["prompt"]]
    y_all = rows["tokens"]
    tr = ~is_test & ~is_held
    m_tr = remap[rows["model"][tr]]

    t0 = time.perf_counter()
    post = fit_svi(x_all[tr], m_tr, fam_of[trained], y_all[tr], n_families=len(families), config=cfg, seed=seed,
                   progress=progress)
    fit_seconds = time.perf_counter() - t0

    out: dict = {"seed": seed, "fit_seconds": fit_seconds, "svi_steps": post.meta["steps"],
                 "svi_converged": post.meta["converged"], "n_train_rows": int(tr.sum()),
                 "heldout_model_names": [models[i] for i in held]}
    # held-out prompts
    te = is_test & ~is_held
    x_te, m_te, y_te = x_all[te], remap[rows["model"][te]], y_all[te]
    t1 = time.perf_counter()
    pr = predict(post, x_te, m_te, key=jax.random.key(seed), y_true=y_te)
    t_pred = time.perf_counter() - t1
    t1 = time.perf_counter()
    hp = {"hierarchical": score(y_te, pr.median, pr.quantiles, crps=pr.crps)}
    br = BayesianRidgePerModel(seed=seed).fit(x_all[tr], m_tr, y_all[tr])
    pooled = PooledRidge().fit(x_all[tr], m_tr, y_all[tr], n_models=trained.size)
    pmm = PerModelMedian(seed=seed).fit(x_all[tr], m_tr, y_all[tr])
    gm = GlobalMedian(seed=seed).fit(x_all[tr], m_tr, y_all[tr])
    preds = {"bayesian_ridge_per_model": br.predict(x_te, m_te), "pooled_ridge": pooled.predict(x_te, m_te),
             "per_model_median": pmm.predict(x_te, m_te), "global_median": gm.predict(x_te, m_te)}
    for name, p in preds.items():
        hp[name] = _score_baseline(p, y_te)
    out["heldout_prompts"] = hp
    t_base = time.perf_counter() - t1
    fam_te = fam_of[rows["model"][te]]
    out["per_family_prompts"] = {
        families[g]: {"hierarchical": float(np.mean(np.abs(pr.median - y_te)[fam_te == g])),
                      "bayesian_ridge_per_model": float(np.mean(np.abs(preds["bayesian_ridge_per_model"].point
                                                                       - y_te)[fam_te == g])),
                      "n": int(np.sum(fam_te == g))}
        for g in np.unique(fam_te)}
    out["calibration_prompts"] = {"hierarchical": hp["hierarchical"]["coverage"],
                                  "bayesian_ridge_per_model": hp["bayesian_ridge_per_model"]["coverage"],
                                  "per_model_median": hp["per_model_median"]["coverage"]}

    # held-out models
    t1 = time.perf_counter()
    hm_rows = is_test & is_held
    x_h, y_h, mod_h = x_all[hm_rows], y_all[hm_rows], rows["model"][hm_rows]
    fam_h = fam_of[mod_h]
    minus = -np.ones(len(y_h), np.int64)
    p_fam = predict(post, x_h, minus, fam_h, key=jax.random.key(seed + 1), y_true=y_h)
    p_glob = predict(post, x_h, minus, minus, key=jax.random.key(seed + 2), y_true=y_h)
    hm = {"family_prior": score(y_h, p_fam.median, p_fam.quantiles, crps=p_fam.crps),
          "global_prior": score(y_h, p_glob.median, p_glob.quantiles, crps=p_glob.crps),
          "pooled_ridge": _score_baseline(pooled.predict(x_h, minus), y_h),
          "global_median": _score_baseline(gm.predict(x_h, minus), y_h)}
    per_model = {models[k]: {"family": families[fam_of[k]],
                             "family_prior": float(np.mean(np.abs(p_fam.median - y_h)[mod_h == k])),
                             "global_prior": float(np.mean(np.abs(p_glob.median - y_h)[mod_h == k]))}
                 for k in held}
    hm["per_model_mae"] = per_model
    out["heldout_models"] = hm
    out["calibration_models"] = {"family_prior": hm["family_prior"]["coverage"],
                                 "global_prior": hm["global_prior"]["coverage"]}

    t_models = time.perf_counter() - t1
    # new model after n observations
    t1 = time.perf_counter()
    new_mae = {str(n): [] for n in NEW_MODEL_N}
    for k in held:
        obs = np.flatnonzero(~is_test & (rows["model"] == k))
        obs = obs[rng.permutation(obs.size)]
        ev = np.flatnonzero(is_test & (rows["model"] == k))
        for n in NEW_MODEL_N:
            if obs.size < n:
                continue
            upd = add_new_model(post, x_all[obs[:n]], y_all[obs[:n]], int(fam_of[k]), seed=seed)
            pk = predict(upd, x_all[ev], np.full(ev.size, upd.n_models - 1), key=jax.random.key(seed + 3))
            new_mae[str(n)].append(float(np.mean(np.abs(pk.median - y_all[ev]))))
    out["new_model_after_n"] = {n: float(np.mean(v)) if v else None for n, v in new_mae.items()}
    out["new_model_models"] = {n: len(v) for n, v in new_mae.items()}
    out["seconds"] = {"fit": fit_seconds, "predict_heldout_prompts": t_pred, "baselines": t_base,
                      "heldout_models": t_models, "new_model": time.perf_counter() - t1}
    return out, post


def _mean_dict(dicts):
    """Element-wise mean of nested dicts of floats (None stays None)."""
    first = dicts[0]
    if isinstance(first, dict):
        return {k: _mean_dict([d[k] for d in dicts]) for k in first}
    if first is None or any(d is None for d in dicts):
        return None
    if isinstance(first, (int, float)):
        return float(np.mean(dicts))
    return first


def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt(v, nd=3):
    return "null" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _fmt_p(p):
    return "null" if p is None else f"{p:.2g}"


def _plots(out: Path, per_seed, families):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [50, 80, 95]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.2))
    for key, title, axis in (("calibration_prompts", "held-out prompts", ax[0]),
                             ("calibration_models", "held-out models", ax[1])):
        for method in per_seed[0][key]:
            vals = np.array([[s[key][method][str(lv)] for lv in levels] for s in per_seed if s[key][method]])
            if vals.size == 0:
                continue
            axis.errorbar(levels, vals.mean(0) * 100, yerr=vals.std(0) * 100 if len(vals) > 1 else None,
                          marker="o", capsize=3, label=method)
        axis.plot([40, 100], [40, 100], "k--", lw=1, label="ideal")
        axis.set(xlabel="nominal central interval (%)", ylabel="empirical coverage (%)", title=title,
                 xlim=(40, 100), ylim=(40, 100))
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=110)
    plt.close(fig)

    fams = sorted({f for s in per_seed for f in s["per_family_prompts"]})
    h = [np.mean([s["per_family_prompts"][f]["hierarchical"] for s in per_seed if f in s["per_family_prompts"]])
         for f in fams]
    b = [np.mean([s["per_family_prompts"][f]["bayesian_ridge_per_model"] for s in per_seed
                  if f in s["per_family_prompts"]]) for f in fams]
    mfam = sorted({v["family"] for s in per_seed for v in s["heldout_models"]["per_model_mae"].values()})

    def fam_mean(method, f):
        return np.mean([v[method] for s in per_seed for v in s["heldout_models"]["per_model_mae"].values()
                        if v["family"] == f])

    fig, ax = plt.subplots(1, 2, figsize=(13, 4.8))
    xs = np.arange(len(fams))
    ax[0].bar(xs - 0.2, h, 0.4, label="hierarchical")
    ax[0].bar(xs + 0.2, b, 0.4, label="bayesian_ridge_per_model")
    ax[0].set_xticks(xs, fams, rotation=60, ha="right", fontsize=8)
    ax[0].set(ylabel="MAE (tokens)", title="held-out prompts: MAE by family")
    ax[0].legend(fontsize=8)
    xs = np.arange(len(mfam))
    ax[1].bar(xs - 0.2, [fam_mean("family_prior", f) for f in mfam], 0.4, label="family prior")
    ax[1].bar(xs + 0.2, [fam_mean("global_prior", f) for f in mfam], 0.4, label="global prior")
    ax[1].set_xticks(xs, mfam, rotation=60, ha="right", fontsize=8)
    ax[1].set(ylabel="MAE (tokens)", title="held-out models: MAE by family")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "per_family_error.png", dpi=110)
    plt.close(fig)


def run_token_eval(
    data: str,
    out: Path,
    seeds: list[int],
    *,
    table: pd.DataFrame | None = None,
    num_steps: int = 14000,
    batch_size: int | None = 8192,
    guide: str = "normal",
    num_samples: int = 400,
    test_frac: float = 0.2,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Evaluate the token model and baselines over seeds; write report.md, metrics.json and two PNGs to `out`.

    Args:
      data: a `load_data` name or path (ignored when `table` is given, except as a label).
      out: output folder (created).
      seeds: the seeds (>= 1; the issue asks for >= 3).
      table: optional tidy table to use instead of loading `data` (tests).
      num_steps: SVI step budget per fit (the convergence check of `hierarchical.svi_loop` stops earlier; a fit
        that spends it reports svi_converged = False).
      batch_size: SVI minibatch rows (None = full batch; ignored when the table is smaller).
      guide: "normal" or "lowrank".
      num_samples: posterior draws kept.
      test_frac: share of prompts held out.
      progress: tqdm bars.
      command: the command line to record in the report.
    Returns:
      The metrics dict written to metrics.json.
    """

    if not seeds:
        raise ValueError("token eval: give at least one seed")
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if table is None:
        rd = load_data(data)
        table, notes = rd.table, list(rd.notes)
    feats, p_index, models, families, fam_of, rows = _prepare(table)
    cfg = FitConfig(guide=guide, num_steps=num_steps, batch_size=batch_size, num_samples=num_samples,
                    min_steps=min(1500, num_steps))
    per_seed, post0 = [], None
    for s in seeds:
        res, post = _one_seed(s, feats, models, families, fam_of, rows, cfg, test_frac, progress)
        per_seed.append(res)
        post0 = post0 or post

    def mean_of(key):
        return _mean_dict([r[key] for r in per_seed])

    hm_mean = _mean_dict([{k: v for k, v in r["heldout_models"].items() if k != "per_model_mae"} for r in per_seed])
    fam_err = np.array([v["family_prior"] for r in per_seed for v in r["heldout_models"]["per_model_mae"].values()])
    glob_err = np.array([v["global_prior"] for r in per_seed for v in r["heldout_models"]["per_model_mae"].values()])
    hm_mean["paired_test"] = paired_test(fam_err, glob_err)
    hm_mean["paired_test"]["pairs"] = "(held-out model, seed) pairs of per-model MAE: family_prior vs global_prior"
    for r in per_seed:
        pm = r["heldout_models"]["per_model_mae"]
        r["heldout_models"]["paired_test"] = paired_test([v["family_prior"] for v in pm.values()],
                                                         [v["global_prior"] for v in pm.values()])
    metrics = {
        "heldout_prompts": mean_of("heldout_prompts"),
        "heldout_models": hm_mean,
        "new_model_after_n": mean_of("new_model_after_n"),
        "fit_seconds": float(np.mean([r["fit_seconds"] for r in per_seed])),
        "seeds": list(seeds),
        "per_seed": per_seed,
        "config": {"data": data, "guide": guide, "num_steps": num_steps, "batch_size": batch_size,
                   "num_samples": num_samples, "test_frac": test_frac, "n_rows": int(len(table)),
                   "n_prompts": int(feats.shape[0]), "n_models": len(models), "n_families": len(families),
                   "interval": "central intervals of the posterior predictive; point prediction = median",
                   "crps": "sample CRPS in tokens"},
        "undefined": UNDEFINED,
        "data_notes": notes,
        "total_seconds": None,
    }
    _plots(out, per_seed, families)
    summary = arviz_summary(post0)
    metrics["total_seconds"] = time.perf_counter() - t_start
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    atomic_write(out / "report.md", _report(metrics, command or _default_command(data, out, seeds), summary,
                                             post0))
    return metrics


def _default_command(data, out, seeds):
    return f"bandit-sim tokens --data {data} --out {out} --seed {seeds[0]} --n-seeds {len(seeds)}"


def _report(m, command, summary, post) -> str:
    hp, hm = m["heldout_prompts"], m["heldout_models"]
    seeds = m["seeds"]
    L = [f"# Token model evaluation: {m['config']['data']}", "",
         f"Made by: `{command}`  ", f"Seeds: {seeds}; total time {m['total_seconds']:.1f} s; "
         f"{m['config']['n_rows']} rows, {m['config']['n_prompts']} prompts, {m['config']['n_models']} models, "
         f"{m['config']['n_families']} families.", "",
         "Point prediction = predictive median (tokens); intervals are central posterior-predictive intervals; "
         "CRPS is the sample CRPS in tokens. Values are means over seeds; per-seed values are in metrics.json.", ""]

    def rows_for(block, methods):
        r = []
        for k in methods:
            v = block[k]
            cov = v["coverage"] or {}
            r.append([k, _fmt(v["mae"], 1), _fmt(cov.get("50")), _fmt(cov.get("80")), _fmt(cov.get("95")),
                      _fmt(v["crps"], 1), v["n"]])
        return r

    hdr = ["method", "MAE", "cov 50%", "cov 80%", "cov 95%", "CRPS", "rows (mean)"]
    L += ["## Held-out prompts (test prompts x trained models)", "", _md_table(hdr, rows_for(hp, PROMPT_METHODS)), ""]
    L += ["Per-seed MAE:", "", _md_table(["method", *[f"seed {s}" for s in seeds]],
                                         [[k, *[_fmt(r["heldout_prompts"][k]["mae"], 1) for r in m["per_seed"]]]
                                          for k in PROMPT_METHODS]), ""]
    L += ["## Held-out models (leave-one-model-out by family; test prompts)", "",
          _md_table(hdr, rows_for(hm, MODEL_METHODS)), ""]
    pt = hm["paired_test"]
    L += [f"Family prior vs global prior, paired over {pt['n_pairs']} (model, seed) pairs: mean MAE difference "
          f"{_fmt(pt['mean_diff'], 1)} tokens, family prior better for {_fmt(pt['share_a_better'])} of models, "
          f"{pt['test']} p = {_fmt_p(pt['p_value'])}.", "",
          "Per-seed held-out models: " + "; ".join(
              f"seed {r['seed']}: {', '.join(r['heldout_model_names'])} (p = "
              f"{_fmt_p(r['heldout_models']['paired_test']['p_value'])})" for r in m["per_seed"]), ""]
    L += ["## New model after n observations (MAE on its test prompts, mean over held-out models)", "",
          _md_table(["n", "mean", *[f"seed {s}" for s in seeds]],
                    [[n, _fmt(m["new_model_after_n"][n], 1),
                      *[_fmt(r["new_model_after_n"][n], 1) for r in m["per_seed"]]] for n in m["new_model_after_n"]]),
          "", "Update: EM-weighted conjugate normal update of the new model's coefficients from its family prior "
          "(hierarchical/update.py); n = 0 is the family prior.", ""]
    L += ["## Fit", "", f"fit_seconds (mean over seeds, the first includes compilation): {m['fit_seconds']:.1f}; "
          "per seed: " + ", ".join(f"{r['fit_seconds']:.1f}" for r in m["per_seed"]) + "; SVI steps: "
          + ", ".join(str(r["svi_steps"]) for r in m["per_seed"]) + "; converged (ELBO check): "
          + ", ".join(str(r["svi_converged"]) for r in m["per_seed"]) + ".", "",
          f"Guide {m['config']['guide']}, batch {m['config']['batch_size'] or 'full'}, "
          f"{m['config']['num_samples']} posterior draws.", ""]
    L += ["### ArviZ summary of the global parameters (first seed; SVI draws, so r_hat/ESS do not apply)", "",
          _md_table(["parameter", *summary.columns], [[i, *[_fmt(float(v)) for v in r]]
                                                       for i, r in summary.iterrows()]), ""]
    L += ["## Plots", "", "![calibration](calibration.png)", "", "![per-family error](per_family_error.png)", ""]
    L += ["## Notes", ""] + [f"- {k}: {v}" for k, v in m["undefined"].items()] + \
         ["- Censoring: the data carry no max-length flag, so no row is treated as censored "
          "(the model supports `censor_at`)."] + [f"- data: {n}" for n in m["data_notes"]]
    return "\n".join(L) + "\n"
