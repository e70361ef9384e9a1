"""Summaries of a routing dataset: what `bandit-sim data describe` prints."""

from __future__ import annotations

import numpy as np

from bandit_sim.data.schema import RoutingData

__all__ = ["describe", "format_description"]


def describe(rd: RoutingData) -> dict:
    """Summary of a dataset as a JSON-ready dict.

    Returns:
      dict with n_prompts, n_models, n_rows, quality_kind, world_kind, models, families (model -> family),
      quality_mean, output_tokens_median, cost_usd_total (model -> float; quality_mean is None without quality),
      prompts_per_model, splits (split -> n prompts), notes.
    """
    t = rd.table
    g = t.groupby("model", sort=True)
    quality = g["quality"].mean()
    prompts_per_split = t.drop_duplicates("prompt_id")["split"].value_counts()
    out = {
        "name": rd.name,
        "n_prompts": int(t["prompt_id"].nunique()),
        "n_models": int(t["model"].nunique()),
        "n_rows": int(len(t)),
        "quality_kind": rd.quality_kind,
        "world_kind": rd.world_kind,
        "models": list(quality.index),
        "families": {m: f for m, f in g["family"].first().items()},
        "n_families": int(t["family"].nunique()),
        "quality_mean": {m: (None if np.isnan(v) else float(v)) for m, v in quality.items()},
        "output_tokens_median": {m: float(v) for m, v in g["output_tokens"].median().items()},
        "cost_usd_total": {m: float(v) for m, v in g["cost_usd"].sum().items()},
        "prompts_per_model": {m: int(v) for m, v in g["prompt_id"].nunique().items()},
        "splits": {s: int(prompts_per_split.get(s, 0)) for s in ("train", "val", "test")},
        "notes": list(rd.notes),
    }
    return out


def format_description(d: dict) -> str:
    """Human-readable table of `describe`'s output."""
    lines = [
        f"dataset {d['name']}: {d['n_prompts']} prompts, {d['n_models']} models, {d['n_families']} families, "
        f"{d['n_rows']} rows",
        f"quality: {d['quality_kind']}   world: {d['world_kind']}   "
        f"splits (prompts): " + ", ".join(f"{k} {v}" for k, v in d["splits"].items()),
        "",
    ]
    width = max(len(m) for m in d["models"])
    lines.append(f"{'model':<{width}}  {'family':<15} {'prompts':>7} {'quality':>8} {'tok.median':>10} {'cost $':>10}")
    for m in d["models"]:
        q = d["quality_mean"][m]
        qs = "-" if q is None else f"{q:.3f}"
        lines.append(f"{m:<{width}}  {d['families'][m]:<15} {d['prompts_per_model'][m]:>7} {qs:>8} "
                     f"{d['output_tokens_median'][m]:>10.0f} {d['cost_usd_total'][m]:>10.4f}")
    if d["notes"]:
        lines += ["", "notes:"] + [f"- {n}" for n in d["notes"]]
    return "\n".join(lines)
