"""`bandit-sim sweep`: a lambda x gamma grid of the Thompson router, checkpointed per chunk of cells.

Every chunk of `chunk_cells` grid cells is one call of the same compiled kernel (the cells are a traced vmap axis,
so chunks never recompile; the last chunk is padded with copies of its last cell). After each chunk the results
so far are written atomically to DIR/checkpoint.npz together with the sweep's configuration; a rerun with the same
configuration resumes after the last finished chunk, and one with a different configuration is refused (nothing
finished is overwritten). The configuration includes a fingerprint of the package's code: a checkpoint left by other
code (say an interrupted run before an upgrade) could hold different episodes, so it is moved aside to
checkpoint-<its fingerprint>.npz with a warning and the sweep starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from bandit_sim.experiments.protocol import episode_stats, fixed_outcome, prepare, run_policy
from bandit_sim.experiments.report import command_line, md_table, savefig, short_name, write_json
from hierarchical.storage import atomic_write, read_checked_npz, write_checked_npz

__all__ = ["parse_range", "run_sweep", "pareto_front"]

CHECKPOINT_FORMAT = "bandit-sim-sweep-checkpoint"
BASELINES = ("always_premium", "cheapest", "random", "threshold", "oracle")
REGRET_REFERENCE = (
    "the kernel's cumulative pseudo-regret, summed over an episode's queries and averaged over episodes: per query, "
    "max_i mu_i(x) - mu_a(x) over the available models, with mu_i(x) = qbar_i - lam * pred_cost_i(x) - gam * "
    "pred_unc_i(x), where qbar_i is model i's mean quality over the test queries (not its quality on the query) and "
    "pred_cost / pred_unc are the token model's predicted normalised cost and its uncertainty (not the realised "
    "cost); the reference is the router that knows every model's mean quality and ranks by this utility. Each cell "
    "uses its own (lam, gam), so cells measure regret against different utilities and are not comparable across lam "
    "(or gam): read quality retention and cost reduction to compare cells.")


def parse_range(spec: str, name: str) -> np.ndarray:
    """Parse "start:stop:n" (n evenly spaced values, inclusive) or a comma list "0,0.1,0.5".

    Raises:
      ValueError: naming the option when the spec is malformed, has n < 1, or gives negative / non-finite values.
    """
    try:
        if ":" in spec:
            a, b, n = spec.split(":")
            n = int(n)
            if n < 1:
                raise ValueError
            vals = np.linspace(float(a), float(b), n)
        else:
            vals = np.array([float(v) for v in spec.split(",")])
    except ValueError:
        raise ValueError(f"--{name} {spec!r}: expected start:stop:n (e.g. 0:1:16) or a comma list") from None
    if vals.size == 0 or not np.all(np.isfinite(vals)) or np.any(vals < 0):
        raise ValueError(f"--{name} {spec!r}: values must be finite and >= 0")
    return vals.astype(np.float32)


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (no more cost and more quality, or less cost and no less quality),
    sorted by cost."""
    order = np.lexsort((-quality, cost))
    front, best = [], -np.inf
    for i in order:
        if quality[i] > best:
            front.append(i)
            best = quality[i]
    return np.array(front, int)


def _config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def _save_checkpoint(path: Path, cfg: dict, done: np.ndarray, arrays: dict) -> None:
    write_checked_npz(path, {"done": done, **arrays}, {"format": CHECKPOINT_FORMAT, "config": cfg})


def _code_fingerprint() -> str:
    """sha256 (first 16 hex digits) of what computes a sweep's cells: the bandit_sim and hierarchical sources, the
    bundled data files and the JAX version. Deliberately broad: any edit to the package discards a resumable
    checkpoint (it is moved aside, not deleted), rather than risk mixing episodes of two versions."""
    h = hashlib.sha256(jax.__version__.encode())
    root = Path(__file__).resolve().parents[2]
    files = [f for pkg in ("bandit_sim", "hierarchical") for f in sorted((root / pkg).rglob("*.py"))]
    files += sorted(f for f in (root / "bandit_sim" / "data" / "bundled").glob("*") if f.is_file())
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _load_checkpoint(path: Path, cfg: dict):
    try:
        data, meta = read_checked_npz(path, what="sweep checkpoint", fmt=CHECKPOINT_FORMAT)
        saved = meta["config"]
    except (ValueError, KeyError) as exc:  # truncated, corrupt, another format
        raise ValueError(f"{path}: unreadable sweep checkpoint ({exc}); move it away to start afresh") from exc
    if saved != cfg and {k: v for k, v in saved.items() if k != "code"} == {k: v for k, v in cfg.items() if k != "code"}:
        old = saved.get("code", "unknown")
        stale, i = path.with_name(f"checkpoint-{old}.npz"), 1
        while stale.exists():  # never overwrite an earlier moved-aside checkpoint
            stale, i = path.with_name(f"checkpoint-{old}-{i}.npz"), i + 1
        path.replace(stale)
        warnings.warn(f"{path} was written by other code (fingerprint {old}, now {cfg['code']}): its "
                      f"{int(data['done'].sum())} finished chunk(s) may hold other episodes, so it was moved to "
                      f"{stale.name} and the sweep starts afresh", stacklevel=3)
        return None
    if saved != cfg:
        diff = sorted(k for k in set(saved) | set(cfg) if saved.get(k) != cfg.get(k))
        raise ValueError(f"{path} belongs to a different sweep (differs in {diff}); use another --out "
                         f"or delete the checkpoint to start afresh")
    return data


def run_sweep(data: str, out: Path, lams: np.ndarray, gams: np.ndarray, *, episodes: int = 64, seed: int = 0,
              tokens: str = "hierarchical", chunk_cells: int = 32, policy: str = "thompson", quick: bool = False,
              argv=None, progress: bool = True, stop_after_chunks: int | None = None) -> dict:
    """Run the lambda x gamma grid on the test split with checkpointing; write heatmaps, Pareto plot, report.

    Args:
      data: dataset; out: folder; lams, gams: grid axes; episodes: E per cell; seed: base seed (common random
        numbers across cells); tokens: token model for the cost/uncertainty terms; chunk_cells: cells per compiled
        call; policy: "thompson" or "contextual_thompson"; quick: smoke settings; argv: command to record.
      progress: progress bar. stop_after_chunks: stop after this many new chunks (to test resuming).
    Returns:
      metrics dict (also DIR/metrics.json), or {"interrupted": True, ...} when stopped early.
    """
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"data": getattr(data, "name", data), "lams": lams.tolist(), "gams": gams.tolist(), "episodes": int(episodes), "seed": int(seed),
           "tokens": tokens, "chunk_cells": int(chunk_cells), "policy": policy, "quick": bool(quick),
           "code": _code_fingerprint()}
    ckpt = out / "checkpoint.npz"
    setup = prepare(data, seed=seed, tokens=tokens, quick=quick, splits=("test",))
    wt, it = setup.worlds["test"], setup.infos["test"]
    n, k = wt.quality.shape
    L, G = np.meshgrid(lams, gams, indexing="ij")
    cells_lam, cells_gam = L.reshape(-1), G.reshape(-1)
    n_cells = cells_lam.size
    n_chunks = -(-n_cells // chunk_cells)
    fields = ("quality", "cost_usd", "regret", "convergence")
    saved = _load_checkpoint(ckpt, cfg) if ckpt.exists() else None
    if saved is not None:
        done = saved["done"].astype(bool)
        arrays = {f: saved[f] for f in fields}
    else:
        done = np.zeros(n_chunks, bool)
        arrays = {f: np.full((n_cells, episodes), np.nan) for f in fields}
    resumed = int(done.sum())

    new = 0
    todo = [c for c in range(n_chunks) if not done[c]]
    for c in tqdm(todo, desc="sweep", unit="chunk", disable=not progress, initial=resumed, total=n_chunks):
        if stop_after_chunks is not None and new >= stop_after_chunks:
            return {"interrupted": True, "chunks_done": int(done.sum()), "chunks": n_chunks}
        sl = np.arange(c * chunk_cells, (c + 1) * chunk_cells)
        idx = np.minimum(sl, n_cells - 1)  # pad the last chunk with its last cell: same shape, no recompile
        m, _ = run_policy(wt, it, policy, episodes=episodes, seed=seed,
                          cells={"lam": cells_lam[idx], "gam": cells_gam[idx]})
        st = episode_stats(m, it, n)
        keep = sl < n_cells
        for f, v in zip(fields, (st.quality, st.cost_usd, st.regret, st.convergence.astype(float))):
            arrays[f][sl[keep]] = v[keep]
        done[c] = True
        new += 1
        _save_checkpoint(ckpt, cfg, done, arrays)

    # baselines on the same world and episodes; always-premium, the reference of retention and cost reduction, is the
    # metrics module's premium model (best training quality, ties cheaper), not the kernel's always_premium policy
    base = {}
    for b in BASELINES:
        if b == "always_premium":
            q_p, c_p = fixed_outcome(wt, it, setup.premium_arms("test"))
            base[b] = {"quality": q_p, "cost_usd": c_p}
            continue
        m, _ = run_policy(wt, it, b, episodes=episodes if b == "random" else 1, seed=seed)
        st = episode_stats(m, it, n)
        base[b] = {"quality": float(st.quality.mean()), "cost_usd": float(st.cost_usd.mean())}
    q_prem, c_prem = base["always_premium"]["quality"], base["always_premium"]["cost_usd"]
    singles = {m: {"quality": float(np.asarray(wt.quality)[:, j].mean()),
                   "cost_usd": float(np.asarray(wt.cost)[:, j].sum() * it.cost_scale)} for j, m in enumerate(it.models)}

    shape = (lams.size, gams.size)
    ret = (arrays["quality"].mean(1) / q_prem).reshape(shape)
    red = (1 - arrays["cost_usd"].mean(1) / c_prem).reshape(shape)
    reg = arrays["regret"].mean(1).reshape(shape)
    front = pareto_front(arrays["cost_usd"].mean(1), arrays["quality"].mean(1))
    result = {
        "command": command_line(argv), "config": cfg, "config_hash": _config_hash(cfg),
        "resumed_chunks": resumed, "chunks": n_chunks, "steps_per_episode": n, "models": list(it.models),
        "lams": lams.tolist(), "gams": gams.tolist(), "premium_model": it.models[setup.premium],
        "quality_retention": ret.tolist(), "cost_reduction": red.tolist(), "regret": reg.tolist(),
        "regret_reference": REGRET_REFERENCE,
        "pareto": [{"lam": float(cells_lam[i]), "gam": float(cells_gam[i]),
                    "quality_retention": float(ret.reshape(-1)[i]), "cost_reduction": float(red.reshape(-1)[i])}
                   for i in front],
        "baselines": {b: {**v, "quality_retention": v["quality"] / q_prem, "cost_reduction": 1 - v["cost_usd"] / c_prem}
                      for b, v in base.items()},
        "single_models": {m: {**v, "quality_retention": v["quality"] / q_prem, "cost_reduction": 1 - v["cost_usd"] / c_prem}
                          for m, v in singles.items()},
        "token_model": setup.token_source,
        "notes": setup.notes,
    }
    _plots(out, result, ret, red, reg)
    write_json(out / "metrics.json", result)
    atomic_write(out / "report.md", _report(result, time.perf_counter() - t_start))
    return result


def _plots(out: Path, r: dict, ret, red, reg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lams, gams = np.array(r["lams"]), np.array(r["gams"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
    titles = ("cost reduction vs always-premium", "quality retention vs always-premium",
              "pseudo-regret vs the router that knows mean qualities,\n"
              "μ_i(x) = q̄_i − λ·pred_cost_i(x) − γ·pred_unc_i(x) with each cell's own (λ, γ):\n"
              "not comparable across λ")
    labels = ("1 − cost / always-premium's", "quality / always-premium's",
              "Σ over queries of max_i μ_i(x) − μ_chosen(x), per episode")
    for ax, z, title, label, cmap in zip(axes, (red, ret, reg), titles, labels, ("viridis", "viridis", "magma_r")):
        im = ax.imshow(z, origin="lower", aspect="auto", cmap=cmap,
                       extent=(gams[0], gams[-1], lams[0], lams[-1]) if lams.size > 1 and gams.size > 1 else None)
        ax.set_xlabel("γ (uncertainty weight)")
        ax.set_ylabel("λ (cost weight)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax).set_label(label, fontsize=7)
    savefig(fig, out / "heatmaps.png")

    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(red.reshape(-1), ret.reshape(-1), s=8, c="lightsteelblue", label="λ×γ cells")
    pf = r["pareto"]
    ax.plot([p["cost_reduction"] for p in pf], [p["quality_retention"] for p in pf], "b.-", label="Pareto frontier")
    for b, v in r["baselines"].items():
        ax.scatter(v["cost_reduction"], v["quality_retention"], marker="s", s=30)
        ax.annotate(b, (v["cost_reduction"], v["quality_retention"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for m, v in r["single_models"].items():
        ax.scatter(v["cost_reduction"], v["quality_retention"], marker="x", s=20, c="gray")
        ax.annotate(short_name(m), (v["cost_reduction"], v["quality_retention"]), fontsize=6, color="gray")
    ax.axhline(0.95, ls=":", c="k", lw=0.8)
    ax.axvline(0.60, ls=":", c="k", lw=0.8)
    ax.set_xlabel("cost reduction vs always-premium")
    ax.set_ylabel("quality retention vs always-premium")
    ax.set_title("Thompson λ×γ sweep: Pareto frontier vs baselines")
    ax.legend(fontsize=7, loc="lower left")
    savefig(fig, out / "pareto.png")


def _report(r: dict, seconds: float) -> str:
    cfg = r["config"]
    lines = [f"# λ×γ sweep: {cfg['data']}", "",
             f"Made by `{r['command']}` (seed {cfg['seed']}, {seconds:.0f} s; {r['chunks']} chunks of "
             f"{cfg['chunk_cells']} cells, {r['resumed_chunks']} resumed from a checkpoint). Policy `{cfg['policy']}`, "
             f"{cfg['episodes']} episodes per cell, each routing the {r['steps_per_episode']} test queries once; common "
             f"random numbers across cells. Token model: {r['token_model']}.", "",
             "![heatmaps](heatmaps.png)", "",
             f"Regret (third heatmap): {r.get('regret_reference', REGRET_REFERENCE)}", "",
             "![pareto](pareto.png)", "", "## Pareto frontier", ""]
    lines.append(md_table(["λ", "γ", "quality retention", "cost reduction"],
                          [[p["lam"], p["gam"], p["quality_retention"], p["cost_reduction"]] for p in r["pareto"]]))
    lines += ["", "## Baselines (same world, same episodes)", "",
              "Quality retention and cost reduction are against always-premium: the metrics module's premium model"
              + (f", `{r['premium_model']}`" if "premium_model" in r else "") + " (the best by mean training quality, "
              "ties cheaper). The `threshold` baseline's premium arm is the kernel policy's (the highest mean "
              "predicted cost).", ""]
    lines.append(md_table(["baseline", "quality retention", "cost reduction", "cost $"],
                          [[b, v["quality_retention"], v["cost_reduction"], v["cost_usd"]] for b, v in r["baselines"].items()]))
    lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"
