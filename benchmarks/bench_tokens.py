"""Fit-time benchmark of the token model: SVI (full table) vs NUTS (a subset) vs per-model BayesianRidge.

Usage: ``python -m benchmarks.bench_tokens --out results/bench/tokens.json [--data arenahard]``

SVI is timed twice in one process: the first fit includes tracing and XLA compilation, the second reuses the
compiled step (same shapes), so the difference is the compile cost. NUTS (one chain, non-centred model) is far too
slow on the full table (thousands of latent dimensions, plentiful data: near-maximum tree depth), so it runs on a
subset of models and prompts, next to SVI and BayesianRidge on the same subset. Every figure is recorded with the
device, versions, dtype and shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bandit_sim.data.loaders import load_data
from hierarchical.baselines import BayesianRidgePerModel
from hierarchical.features import query_features
from hierarchical.fit import FitConfig, fit_nuts, fit_svi


def _env() -> dict:
    import jax
    import numpyro
    import optax
    import sklearn

    return {"device": str(jax.devices()[0]), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "numpyro": numpyro.__version__, "optax": optax.__version__,
            "sklearn": sklearn.__version__, "dtype": "float32"}


def _arrays(table):

    prompts = table.drop_duplicates("prompt_id")
    feats = query_features(prompts["prompt"].tolist(),
                           prompts["input_tokens"].to_numpy() if "input_tokens" in prompts else None)
    p_index = {p: i for i, p in enumerate(prompts["prompt_id"])}
    models = sorted(table["model"].unique())
    fams = sorted(table["family"].unique())
    fam_of = (table.drop_duplicates("model").set_index("model")["family"].reindex(models)
              .map({f: i for i, f in enumerate(fams)}).to_numpy(np.int32))
    x = feats[table["prompt_id"].map(p_index).to_numpy()]
    m = table["model"].map({k: i for i, k in enumerate(models)}).to_numpy(np.int32)
    return x, m, fam_of, table["output_tokens"].to_numpy(np.float64), len(fams)


def _time_ridge(x, m, t):

    t0 = time.perf_counter()
    BayesianRidgePerModel().fit(x, m, t)
    return time.perf_counter() - t0


def run_bench(out: Path, data: str = "arenahard", table=None, svi_steps: int = 2500, batch_size: int | None = 8192,
              nuts_models: int = 8, nuts_prompts: int = 100, nuts_warmup: int = 300, nuts_samples: int = 300) -> dict:
    """Time SVI, NUTS and BayesianRidge fits and write a JSON record to `out`.

    Args:
      out: JSON path.
      data: `load_data` name (ignored when `table` is given).
      table: optional tidy table (prompt_id, prompt, model, family, output_tokens[, input_tokens]).
      svi_steps: SVI steps on the full table.
      batch_size: SVI minibatch rows (None = full batch).
      nuts_models / nuts_prompts: size of the NUTS subset (the first models by name, the first prompts).
      nuts_warmup / nuts_samples: NUTS iterations.
    Returns:
      The record written.
    """

    if table is None:

        table = load_data(data).table
    x, m, fam, t, g = _arrays(table)
    cfg = FitConfig(num_steps=svi_steps, batch_size=batch_size, min_steps=svi_steps)  # fixed steps: comparable
    rec: dict = {"env": _env(), "data": data, "full": {"rows": int(len(t)), "models": int(fam.size),
                                                       "families": g, "features": int(x.shape[1])}}
    svi = []
    for seed in (0, 1):
        t0 = time.perf_counter()
        post = fit_svi(x, m, fam, t, n_families=g, config=cfg, seed=seed, progress=False)
        svi.append({"seconds": time.perf_counter() - t0, "steps": post.meta["steps"]})
    rec["full"]["svi"] = {"first_fit_seconds_incl_compile": svi[0]["seconds"],
                          "second_fit_seconds_compiled": svi[1]["seconds"], "steps": svi[1]["steps"],
                          "steps_per_second_incl_sampling": svi[1]["steps"] / svi[1]["seconds"],
                          "batch_size": batch_size, "guide": cfg.guide}
    rec["full"]["bayesian_ridge_per_model_seconds"] = _time_ridge(x, m, t)

    keep_models = sorted(table["model"].unique())[:nuts_models]
    keep_prompts = table["prompt_id"].drop_duplicates().iloc[:nuts_prompts]
    sub = table[table["model"].isin(keep_models) & table["prompt_id"].isin(keep_prompts)]
    xs, ms, fs, ts, gs = _arrays(sub)
    rec["subset"] = {"rows": int(len(ts)), "models": int(fs.size), "families": gs}
    t0 = time.perf_counter()
    nuts = fit_nuts(xs, ms, fs, ts, n_families=gs, num_warmup=nuts_warmup, num_samples=nuts_samples)
    rec["subset"]["nuts"] = {"seconds": time.perf_counter() - t0, "warmup": nuts_warmup, "samples": nuts_samples,
                             "divergences": nuts.meta["divergences"]}
    sub_cfg = FitConfig(num_steps=svi_steps, batch_size=None, min_steps=svi_steps)
    t0 = time.perf_counter()
    svi_sub = fit_svi(xs, ms, fs, ts, n_families=gs, config=sub_cfg, progress=False)
    rec["subset"]["svi_seconds_incl_compile"] = time.perf_counter() - t0
    rec["subset"]["bayesian_ridge_per_model_seconds"] = _time_ridge(xs, ms, ts)
    # SVI vs NUTS posterior means of the model coefficients (the cross-check)
    diff = np.abs(svi_sub.draws["theta"].mean(0) - nuts.draws["theta"].mean(0))
    rec["subset"]["svi_vs_nuts_theta_mean_abs_diff"] = {"max": float(diff.max()), "mean": float(diff.mean())}
    rec["subset"]["svi_vs_nuts_sigma_mean_rel_diff"] = float(np.max(np.abs(
        np.exp(svi_sub.draws["log_sigma"]).mean(0) / np.exp(nuts.draws["log_sigma"]).mean(0) - 1)))

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(rec, f, indent=2)
    os.replace(tmp, out)
    return rec


def main(argv=None) -> int:
    """Command line: python -m benchmarks.bench_tokens --out PATH."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON output path")
    p.add_argument("--data", default="arenahard")
    p.add_argument("--svi-steps", type=int, default=2500)
    p.add_argument("--batch-size", type=int, default=8192, help="0 = full batch")
    p.add_argument("--nuts-models", type=int, default=8)
    p.add_argument("--nuts-prompts", type=int, default=100)
    p.add_argument("--nuts-warmup", type=int, default=300)
    p.add_argument("--nuts-samples", type=int, default=300)
    a = p.parse_args(argv)
    rec = run_bench(Path(a.out), a.data, svi_steps=a.svi_steps, batch_size=a.batch_size or None,
                    nuts_models=a.nuts_models, nuts_prompts=a.nuts_prompts, nuts_warmup=a.nuts_warmup,
                    nuts_samples=a.nuts_samples)
    print(json.dumps(rec, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
