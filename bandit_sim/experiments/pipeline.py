"""`bandit-sim run`: regenerate every report under results/ from the bundled data.

Each stage writes its own folder with a report naming the command that made it; `results/README.md` indexes them,
with headline figures read back from each stage's metrics file (`results_index`), never typed in.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from bandit_sim.data.describe import describe, format_description
from bandit_sim.data.loaders import BUNDLED, load_data
from bandit_sim.experiments.coldstart import run_coldstart
from bandit_sim.experiments.compare import run_compare
from bandit_sim.experiments.report import fmt, interval, pval
from bandit_sim.experiments.families import DEFAULT_DATASETS, run_families
from bandit_sim.experiments.families import headlines as families_headlines
from bandit_sim.experiments.impact import headlines as impact_headlines
from bandit_sim.experiments.impact import run_impact
from bandit_sim.experiments.sweep import parse_range, run_sweep
from bandit_sim.experiments.token_eval import run_token_eval
from hierarchical.storage import atomic_write

__all__ = ["run_all"]


def _stage_data(out: Path, seed: int, quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# Bundled datasets", "", "Made by `bandit-sim data describe --data NAME` for each bundled dataset "
             "(also `bandit-sim run`).", ""]
    summary = {}
    for name in BUNDLED:
        d = describe(load_data(name))
        summary[name] = d
        parts += [f"## {name}", "", "```", format_description(d), "```", ""]
    atomic_write(out / "describe.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    atomic_write(out / "README.md", "\n".join(parts))


def _heads_tokens(m: dict) -> list[str]:
    hp, hm = m["heldout_prompts"], m["heldout_models"]
    best_base = min((k for k in hp if k != "hierarchical" and isinstance(hp[k], dict) and "mae" in hp[k]),
                    key=lambda k: hp[k]["mae"])
    return [f"held-out prompts: hierarchical MAE {hp['hierarchical']['mae']:.1f} tokens vs best baseline "
            f"{best_base} {hp[best_base]['mae']:.1f}; coverage 50/80/95% = "
            + "/".join(f"{hp['hierarchical']['coverage'][c]:.3f}" for c in ("50", "80", "95")),
            f"held-out models: family prior MAE {hm['family_prior']['mae']:.1f} vs global prior "
            f"{hm['global_prior']['mae']:.1f} (paired p = {hm['paired_test']['p_value']:.2g})",
            "new model MAE after n = 0/10/50/100 observations: "
            + " / ".join(f"{v:.1f}" for v in m["new_model_after_n"].values())]


def _stage_tokens(out: Path, seed: int, quick: bool) -> None:
    seeds = [seed] if quick else [seed, seed + 1, seed + 2]
    extra = {"num_steps": 300, "num_samples": 100} if quick else {}
    cmd = f"bandit-sim tokens --data arenahard --out {out} --seed {seed} --n-seeds {len(seeds)}" + (
        " --steps 300" if quick else "")
    run_token_eval("arenahard", out, seeds, command=cmd, **extra)


def _ci(x: dict, nd: int = 3) -> str:
    return f"{x['mean']:.{nd}f} [{x['ci95'][0]:.{nd}f}, {x['ci95'][1]:.{nd}f}]"


def _reduction(point, ci) -> str:
    """A cold-start reduction with its interval ("n/a" where undefined: see coldstart._reduction)."""
    return ("n/a" if fmt(point) == "–" else fmt(point)) + " " + interval(ci)


def _heads_compare(r: dict) -> list[str]:
    h = r["headline"]
    heads = [f"headline (warm track, chosen on validation): {h['router']}: quality retention "
             f"{_ci(h['test']['quality_retention'])} at cost reduction {_ci(h['test']['cost_reduction'])}, AIQ "
             f"{_ci(h['test']['aiq'])}; target (≥ {h['target']['quality_retention']} at ≥ "
             f"{h['target']['cost_reduction']}) {'met' if h['target_met'] else 'not met'}"]
    for t in ("warm", "cold"):
        rs = r["tracks"][t]["routers"]
        names = [n for n in rs if n not in ("always_premium", "cheapest", "random")]
        heads.append(f"{t} track AIQ: " + ", ".join(f"{n} {rs[n]['aiq']['mean']:.3f}" for n in
                                                    sorted(names, key=lambda n: -rs[n]["aiq"]["mean"])))
        comp = r["comparisons"][t]
        heads.append(f"{t} track, Thompson vs the others (Holm, per-prompt utility): wins against "
                     f"{', '.join(n for n, c in comp.items() if c['verdict'] == 'win') or 'none'}; ties with "
                     f"{', '.join(n for n, c in comp.items() if c['verdict'] == 'tie') or 'none'}; loses to "
                     f"{', '.join(n for n, c in comp.items() if c['verdict'] == 'loss') or 'none'}")
        diff = r["tracks"][t].get("aiq_differences")
        if diff and diff["vs"]:
            pick = [n for n in ("zero_router", "mf_router", "linucb", "knn_router", "thompson") if n in diff["vs"]]
            heads.append(f"{t} track, AIQ of {diff['focal']} minus (paired bootstrap): " + "; ".join(
                f"{n} {d['difference']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
                for n, d in ((n, diff["vs"][n]) for n in pick)))
    lc = r.get("learning_curve")
    if lc:
        shares = ", ".join(f"{f:g}" for f in lc["fractions"])
        for n in ("linear_thompson", "linucb", "mf_router"):
            e = lc["routers"].get(n)
            if e:
                first = e["first_share_above_zero_router"]
                heads.append(f"learning curve, {n}: AIQ at training shares {shares}: "
                             + ", ".join(f"{a['mean']:.3f}" for a in e["aiq"]) + " (zero router "
                             + f"{lc['routers']['zero_router']['aiq'][-1]['mean']:.3f}); above the zero router from "
                             + ("no share" if first is None else f"share {first:g}"))
    return heads


def _stage_compare(data: str):
    def stage(out: Path, seed: int, quick: bool) -> None:
        argv = ["compare", "--data", data, "--out", str(out), "--seed", str(seed), "--learning-curve"] + (
            ["--folds", "3", "--episodes", "4", "--bootstrap", "50", "--quick"] if quick else [])
        run_compare(data, out, seed=seed, quick=quick, progress=True, argv=argv, learning_curve=True,
                    **({"folds": 3, "episodes": 4, "bootstrap": 50} if quick else {}))
    return stage


def _p_newcomers(x: dict, prefix: str = "") -> str:
    """The coldstart tests of family vs reference, both scopes: "paired p = ... over (newcomer, episode) units,
    conditional on these N newcomers; p = ... across newcomers (t-test on N newcomer means)". Metrics written before
    the test across newcomers existed have no `p_value_newcomers`: their line is the old "paired p = ..."."""
    p = x[f"{prefix}p_value"]
    if f"{prefix}p_value_newcomers" not in x:
        return f"paired p = {p:.2g}"
    pn, n = x[f"{prefix}p_value_newcomers"], x[f"{prefix}n_newcomers_test"]
    return (f"paired p = {p:.2g} over (newcomer, episode) units, conditional on these {n} newcomers; "
            f"p = {pval(pn, 2)} across newcomers (t-test on {n} newcomer means)")


def _heads_coldstart(r: dict) -> list[str]:
    f, fl = r["family_prior"], r["flat_prior"]
    units = f"{r['units']['newcomers']} newcomers x {r['units']['episodes_per_newcomer']} episodes"
    tests = f"{_p_newcomers(r)}, {units}" if "p_value_newcomers" not in r else f"{units}; {_p_newcomers(r)}"
    return [f"regret over the next 500 queries: family prior {_ci(f['regret_next_500'], 2)} vs flat prior "
            f"{_ci(fl['regret_next_500'], 2)}; reduction "
            f"{_reduction(r['regret_next_500_reduction'], r['regret_next_500_reduction_ci95'])} ({tests})",
            f"queries to identification: family prior {_ci(f['identification_queries'], 0)} vs flat prior "
            f"{_ci(fl['identification_queries'], 0)}"] + _heads_coldstart_linear(r)


def _heads_coldstart_linear(r: dict) -> list[str]:
    lin = r.get("linear_thompson")
    if not lin:
        return []
    f, g = lin["family_prior"], lin["global_prior"]
    return [f"linear Thompson on the query text, regret over the next 500 queries: family prior on weights "
            f"{_ci(f['regret_next_500'], 2)} vs global prior {_ci(g['regret_next_500'], 2)}; reduction "
            f"{_reduction(lin['regret_next_500_reduction'], lin['regret_next_500_reduction_ci95'])} "
            f"({_p_newcomers(lin)}); "
            f"identification {_ci(f['identification_queries'], 0)} vs {_ci(g['identification_queries'], 0)} queries"
            ] + _heads_coldstart_excess(r)


def _heads_coldstart_excess(r: dict) -> list[str]:
    out = []
    for name, x, (fc, rc) in (("Beta Thompson", r, ("family_prior", "flat_prior")),
                              ("linear Thompson", r.get("linear_thompson") or {}, ("family_prior", "global_prior"))):
        if "excess_regret_next_500" not in x:
            continue
        ex = x["excess_regret_next_500"]
        out.append(f"{name}, excess regret over the next 500 queries over the router that knows the newcomer: family "
                   f"{_ci(ex[fc], 2)} vs {rc.split('_')[0]} {_ci(ex[rc], 2)}; reduction "
                   f"{_reduction(x['excess_regret_next_500_reduction'], x['excess_regret_next_500_reduction_ci95'])} "
                   f"({_p_newcomers(x, 'excess_')})")
    return out


def _stage_coldstart(data: str):
    def stage(out: Path, seed: int, quick: bool) -> None:
        eps = 8 if quick else 100
        argv = ["coldstart", "--data", data, "--episodes", str(eps), "--out", str(out), "--seed", str(seed)]
        run_coldstart(data, out, episodes=eps, seed=seed, quick=quick, argv=argv + (["--quick"] if quick else []))
    return stage


def _heads_sweep(r: dict) -> list[str]:
    return [f"{len(r['pareto'])} Pareto-optimal (λ, γ) cells of {len(r['lams']) * len(r['gams'])}"]


def _stage_sweep(out: Path, seed: int, quick: bool) -> None:
    lam, gam, eps = ("0:1:4", "0:1:4", 8) if quick else ("0:1:16", "0:1:16", 16)
    argv = ["sweep", "--data", "routerbench", "--lam", lam, "--gam", gam, "--episodes", str(eps), "--out", str(out),
            "--seed", str(seed)]
    run_sweep("routerbench", out, parse_range(lam, "lam"), parse_range(gam, "gam"), episodes=eps, seed=seed,
              quick=quick, argv=argv + (["--quick"] if quick else []))


def _heads_data(d: dict) -> list[str]:
    return [f"{n}: {x['n_prompts']} prompts x {x['n_models']} models ({x['quality_kind']})" for n, x in d.items()]


def _stage_families(out: Path, seed: int, quick: bool) -> None:
    argv = ["families", "--data", ",".join(DEFAULT_DATASETS), "--out", str(out), "--seed", str(seed)]
    run_families(DEFAULT_DATASETS, out, seed=seed, quick=quick, argv=argv + (["--quick"] if quick else []))


IMPACT_QUERIES_PER_DAY = 100_000  # the traffic profile of the results/ run (a parameter, not a result)


def _stage_impact(out: Path, seed: int, quick: bool) -> None:
    argv = ["impact", "--data", "routerbench", "--queries-per-day", str(IMPACT_QUERIES_PER_DAY), "--out", str(out),
            "--seed", str(seed)]
    run_impact("routerbench", out, queries_per_day=IMPACT_QUERIES_PER_DAY, seed=seed, quick=quick,
               argv=argv + (["--quick"] if quick else []))


def _heads_impact(r: dict) -> list[str]:
    return impact_headlines(r)


class Stage(NamedTuple):
    name: str  # folder under results/
    what: str  # the index line
    report: str  # the report file, relative to the stage folder
    metrics: str  # the metrics file the headline figures are read from
    run: Callable[[Path, int, bool], None]
    heads: Callable[[dict], list[str]]


STAGES = (
    Stage("data", "dataset summaries (`bandit-sim data describe`)", "README.md", "describe.json", _stage_data,
          _heads_data),
    Stage("tokens", "token model vs baselines on arenahard (`bandit-sim tokens`)", "report.md", "metrics.json",
          _stage_tokens, _heads_tokens),
    Stage("compare/routerbench", "routing comparison on RouterBench, 5 folds x 2 tracks (`bandit-sim compare`)",
          "report.md", "metrics.json", _stage_compare("routerbench"), _heads_compare),
    Stage("compare/arenabench", "routing comparison on arena-bench, 5 folds x 2 tracks (`bandit-sim compare`)",
          "report.md", "metrics.json", _stage_compare("arenabench"), _heads_compare),
    Stage("coldstart/routerbench", "cold start on RouterBench: family prior vs flat prior, Beta and linear Thompson "
          "(`bandit-sim coldstart`)",
          "report.md", "metrics.json", _stage_coldstart("routerbench"), _heads_coldstart),
    Stage("coldstart/arenabench", "cold start on arena-bench: family prior vs flat prior, Beta and linear Thompson "
          "(`bandit-sim coldstart`)",
          "report.md", "metrics.json", _stage_coldstart("arenabench"), _heads_coldstart),
    Stage("sweep", "λ×γ sweep with Pareto frontier (`bandit-sim sweep`)", "report.md", "metrics.json", _stage_sweep,
          _heads_sweep),
    Stage("families", "model-family correlation: variance components and ICCs (`bandit-sim families`)", "report.md",
          "metrics.json", _stage_families, families_headlines),
    Stage("impact", "economic impact: projected monthly cost (`bandit-sim impact`)", "report.md", "metrics.json",
          _stage_impact, _heads_impact),
)


def results_index(out: Path) -> str:
    """results/README.md, generated from the results files on disk (every figure read from a metrics file).

    Args:
      out: the results folder (with run.json, written by `run_all`).
    Returns:
      the markdown text.
    """
    out = Path(out)
    run = json.loads((out / "run.json").read_text())
    lines = ["# Results", "", f"Generated by `{run['command']}` (Python {run['python']}, {run['machine']}; "
             f"{run['total_seconds']:.0f} s in all). Every figure in these reports is computed by the command named "
             "in that report; rerun it to reproduce. The lines below are read from each stage's metrics file.", ""]
    for st in STAGES:
        path = out / st.name / st.metrics
        if not path.is_file():
            continue
        lines.append(f"- [{st.what}]({st.name}/{st.report}) ({run['seconds'].get(st.name, float('nan')):.0f} s)")
        lines += [f"  - {h}" for h in st.heads(json.loads(path.read_text()))]
    return "\n".join(lines) + "\n"


def run_all(out: Path, seed: int = 0, quick: bool = False, stages: Sequence[str] | None = None) -> int:
    """Run every stage into ``out`` and write ``out/run.json`` (timings) and ``out/README.md`` (the index).

    Args:
      out: results folder.
      seed: base seed of every stage.
      quick: smaller versions of every stage (for smoke tests).
      stages: run only these stages (names as in `STAGES`; default all).
    Returns:
      Process exit code (0 on success).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    known = [st.name for st in STAGES]
    unknown = sorted(set(stages or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages: {known}")
    prev = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    seconds = dict(prev.get("seconds", {})) if stages else {}
    t_all = time.perf_counter()
    for st in STAGES:
        if stages and st.name not in stages:
            continue
        t0 = time.perf_counter()
        print(f"[run] stage {st.name} ...", file=sys.stderr, flush=True)
        st.run(out / st.name, seed, quick)
        seconds[st.name] = time.perf_counter() - t0
    run = {"command": f"bandit-sim run --out {out}{' --quick' if quick else ''} --seed {seed}",
           "python": platform.python_version(), "machine": platform.machine(), "seconds": seconds,
           "total_seconds": float(sum(seconds.values())) if stages else time.perf_counter() - t_all}
    atomic_write(out / "run.json", json.dumps(run, indent=2, sort_keys=True) + "\n")
    atomic_write(out / "README.md", results_index(out))
    print(f"[run] wrote {out / 'README.md'}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------- README figures

README_BEGIN = "<!-- results:begin (generated by `make run` / `make bench` from results/; do not edit) -->"
README_END = "<!-- results:end -->"


def _latency_text(t: dict) -> str:
    """One router's timings from bench_router.py's JSON: route, observe and route_batch."""
    b = t["route_batch"]
    return (f"one `route` median {t['route']['median_ms']:.2f} ms (p90 {t['route']['p90_ms']:.2f} ms), one `observe` "
            f"{t['observe']['median_ms']:.2f} ms, a {b['batch']:,}-query `route_batch` {b['median_ms']:.0f} ms "
            f"({b['per_query_us']:.0f} µs per query)")


def _bench_lines(bench: Path) -> list[str]:
    lines = []
    router = bench / "router.json"
    if router.is_file():
        r = json.loads(router.read_text())
        lines.append(f"- Live router latency ({r['tokens']} tokens, {r['models']} models in {r['capacity']} slots, "
                     f"after warm-up; `{r['command']}`): {_latency_text(r)}.")
        lin = r.get("linear_thompson")
        if lin:
            lines.append(f"- Linear Thompson live router in the same run (D = {lin['features']}; `route` featurises the "
                         f"text): {_latency_text(lin)}.")
    kern = bench / "bench.json"
    if kern.is_file():
        k = json.loads(kern.read_text())
        ratios = k.get("ratios", {})
        if "jax_over_numpy_vectorized" in ratios:
            lines.append(f"- Simulator throughput (`bandit-sim bench`): the JAX kernel runs "
                         f"{ratios['jax_over_numpy_vectorized']:.2f}x the NumPy vectorised twin and "
                         f"{ratios['jax_over_numpy_loop']:.0f}x the NumPy per-step loop (exact Beta Thompson; "
                         "`results/bench/bench.md`).")
            lin = k.get("linear_thompson")
            if lin:
                lines.append(f"- Linear Thompson kernel (`bandit-sim bench`, K = {lin['K']}, D = {lin['D']}, "
                             f"E = {lin['episodes']}): {lin['jax_decisions_per_s']:.3g} decisions/s, "
                             f"{lin['ratio']:.2f}x its NumPy vectorised twin timed alternately in the same run, "
                             f"compile {lin['compile_s']:.1f} s.")
    srv = bench / "serve.json"
    if srv.is_file():
        v = json.loads(srv.read_text())
        low, top = min(v["levels"], key=int), max(v["levels"], key=int)
        one, many = v["levels"][low]["overhead_per_request_ms"], v["levels"][top]["overhead_per_request_ms"]
        # per request: the client's latency through the server minus that request's upstream time (a difference of
        # two latency percentiles is not an overhead once the backends queue: it can even be negative)
        lines.append(f"- Server overhead per request (`{v['command']}`; latency through the server minus the "
                     f"upstream call's, [docs/serve.md](docs/serve.md#overhead)): p50 {one['p50']:.1f} ms / p99 "
                     f"{one['p99']:.1f} ms at {low} client{'s' if int(low) > 1 else ''}; at {top} concurrent "
                     f"clients p50 {many['p50']:.1f} ms / p99 "
                     f"{many['p99']:.1f} ms at {v['levels'][top]['requests_per_s']:.0f} req/s (the 5 ms p99 target "
                     f"there is {'met' if many['p99'] <= 5 else 'not met'}).")
    tok = bench / "tokens.json"
    if tok.is_file():
        t = json.loads(tok.read_text())
        svi = t["full"]["svi"]
        lines.append(f"- Token-model fit (`python -m benchmarks.bench_tokens`): SVI on {t['full']['rows']:,} rows, "
                     f"{svi['steps']} steps: {svi['first_fit_seconds_incl_compile']:.1f} s with compilation, "
                     f"{svi['second_fit_seconds_compiled']:.1f} s compiled; NUTS on a {t['subset']['rows']}-row "
                     f"subset: {t['subset']['nuts']['seconds']:.0f} s.")
    return lines


def readme_results(root: Path) -> str:
    """The README's generated results block: the results index and the benchmark figures, read from files.

    Args:
      root: the repository root (holding results/).
    Returns:
      the block, markers included.
    """
    root = Path(root)
    idx = results_index(root / "results").splitlines()
    body = [ln.replace("](", "](results/", 1) if ln.startswith("- [") else ln for ln in idx[4:]]
    return "\n".join([README_BEGIN, "", *idx[2:3], "", *body, *_bench_lines(root / "results" / "bench"), "",
                      README_END])


SERVE_BEGIN = "<!-- serve-overhead:begin (generated from results/bench/serve.json by `make bench`; do not edit) -->"
SERVE_END = "<!-- serve-overhead:end -->"


def serve_overhead_block(root: Path) -> str:
    """docs/serve.md's overhead table and in-process timings, read from results/bench/serve.json (markers included)."""
    path = Path(root) / "results" / "bench" / "serve.json"
    if not path.is_file():
        return "\n".join([SERVE_BEGIN, "", "No `results/bench/serve.json` yet: run `make bench`.", "", SERVE_END])
    v = json.loads(path.read_text())
    m = v.get("machine", {})
    load = m.get("load_average_at_end")
    rows = []
    for n in sorted(v["levels"], key=int):
        x = v["levels"][n]
        o, per, be = x["overhead_pct_ms"], x["overhead_per_request_ms"], x["backend_latency_ms"]
        p99 = (f"{o['p99']:.1f} ms (per request: {per['p99']:.1f} ms)"
               if be["p99"] < 10 * v["backend_delay_ms"] and o["p99"] >= 0
               else f"per request: {per['p99']:.1f} ms (the difference of p99s is not meaningful: the backend's own "
                    f"p99 was {be['p99'] / 1e3:.1f} s)")
        rows.append(f"| {n} | {o['p50']:.1f} ms (per request: {per['p50']:.1f} ms) | {p99} | "
                    f"{x['requests_per_s']:.0f} | {x['passthrough_overhead_pct_ms']['p50']:.1f} ms |")
    ip = v["in_process_ms"]
    return "\n".join([
        SERVE_BEGIN, "",
        f"Last run (`{v['command']}`; {m.get('cpus', '?')} CPUs, Python {m.get('python', '?')}"
        + (f", load average {load[0]:.1f} at the end: backends, server and load generator share the cores" if load
           else "") + f"; backends answer after {v['backend_delay_ms']:.0f} ms, {v['requests']} requests per level):",
        "", "| clients | overhead p50 | overhead p99 | req/s via server | proxy alone (backend named), overhead p50 |",
        "|---|---|---|---|---|", *rows, "",
        f"In-process, per call: one `route` and its log line {ip['route_and_log']:.1f} ms (the router step alone "
        f"{ip['router_route']:.1f} ms), token count {ip['count_tokens']:.3f} ms, a log append "
        f"{ip['log_append_flush']:.3f} ms (with fsync {ip['log_append_fsync']:.1f} ms), a feedback with its fsync "
        f"{ip['feedback_with_fsync']:.1f} ms, a state save {ip['state_save']:.1f} ms (every `save_every` events).",
        "", SERVE_END])


def _sync_block(path: Path, begin: str, end: str, block: str) -> bool:
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path}: no generated block ({begin!r} ... {end!r})")
    a, b = text.index(begin), text.index(end) + len(end)
    new = text[:a] + block + text[b:]
    if new != text:
        atomic_write(path, new)
    return new != text


def sync_readme(root: Path) -> bool:
    """Rewrite the generated blocks (README.md's results, docs/serve.md's overhead) from the results files; True if
    either changed."""
    root = Path(root)
    blocks = [(root / "README.md", README_BEGIN, README_END, readme_results(root)),
              (root / "docs" / "serve.md", SERVE_BEGIN, SERVE_END, serve_overhead_block(root))]
    for path, begin, end, _ in blocks:  # every file checked before any is written
        text = path.read_text()
        if begin not in text or end not in text:
            raise ValueError(f"{path}: no generated block ({begin!r} ... {end!r})")
    changed = [_sync_block(*b) for b in blocks]
    return any(changed)
