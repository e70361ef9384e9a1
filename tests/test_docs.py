"""Every ```python block of README.md and docs/*.md runs (in a temporary folder).

A block right after an HTML comment ``<!-- slow -->`` runs only with ``-m slow`` (full token fit, 1,000-step
replay); ``<!-- no-test -->`` skips a block (none yet). Each block runs on its own, in a fresh namespace.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(?:<!--\s*(?P<tag>[\w-]+)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def _blocks():
    out = []
    for path in FILES:
        text = path.read_text()
        for i, m in enumerate(_BLOCK.finditer(text)):
            line = text[: m.start("code")].count("\n") + 1
            tag = m.group("tag")
            marks = [pytest.mark.slow] if tag == "slow" else []
            if tag == "no-test":
                marks.append(pytest.mark.skip(reason="marked no-test"))
            out.append(pytest.param(path, line, m.group("code"), marks=marks,
                                    id=f"{path.relative_to(ROOT)}:{line}"))
    return out


BLOCKS = _blocks()


def test_docs_have_examples():
    names = {p.values[0].name for p in BLOCKS}
    assert {"README.md", "router.md", "data_schema.md", "index.md"} <= names


@pytest.mark.parametrize("path,line,code", BLOCKS)
def test_doc_example_runs(path, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.name}:{line}", "exec"), {"__name__": f"doc_example_{line}"})


def test_results_index_and_readme_block_are_generated_from_the_results_files():
    """No typed figures: results/README.md and the README's results block are what the results files say."""
    from bandit_sim.experiments.pipeline import readme_results, results_index

    results = ROOT / "results"
    if not (results / "run.json").is_file():
        pytest.skip("no results/run.json (results not generated in this checkout)")
    assert (results / "README.md").read_text() == results_index(results), \
        "results/README.md is stale: rerun `make run`"
    text = (ROOT / "README.md").read_text()
    from bandit_sim.experiments.pipeline import README_BEGIN, README_END

    block = text[text.index(README_BEGIN): text.index(README_END) + len(README_END)]
    assert block == readme_results(ROOT), "README.md's results block is stale: run `python scripts/update_readme.py`"
    from bandit_sim.experiments.pipeline import SERVE_BEGIN, SERVE_END, serve_overhead_block

    serve = (ROOT / "docs" / "serve.md").read_text()
    assert serve[serve.index(SERVE_BEGIN): serve.index(SERVE_END) + len(SERVE_END)] == serve_overhead_block(ROOT), \
        "docs/serve.md's overhead figures are stale: run `python scripts/update_readme.py`"


def test_serve_docs_config_and_the_example_file_both_load(tmp_path):
    """docs/serve.md's annotated config and examples/router.toml are valid configs with the same backends."""
    from bandit_sim.serve.config import load_config

    text = (ROOT / "docs" / "serve.md").read_text()
    block = re.search(r"## The config file\n\n```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "docs.toml").write_text(block)
    docs, example = load_config(tmp_path / "docs.toml"), load_config(ROOT / "examples" / "router.toml")
    assert [b.name for b in docs.backends] == [b.name for b in example.backends]
    assert [(b.input_per_m, b.output_per_m, b.tokens_mean, b.tokens_sd) for b in docs.backends] == \
        [(b.input_per_m, b.output_per_m, b.tokens_mean, b.tokens_sd) for b in example.backends]
    assert docs.policy == example.policy and docs.presets == example.presets


def test_readme_dataset_figures_match_the_data():
    """The README's dataset table and tokenizer/price sentences state what `data describe` and the data say."""
    import json

    import numpy as np

    from bandit_sim.data.loaders import load_data

    path = ROOT / "results" / "data" / "describe.json"
    if not path.is_file():
        pytest.skip("no results/data/describe.json (results not generated in this checkout)")
    d = json.loads(path.read_text())
    text = (ROOT / "README.md").read_text()
    for name in ("routerbench", "arenabench", "arenahard"):
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| `{name}` (bundled)"))
        assert f"{d[name]['n_prompts']:,} " in row and f"× {d[name]['n_models']} " in row, (name, row)
    assert f"{d['arenahard']['n_families']} families" in text
    notes = " ".join(d["arenahard"]["notes"])
    share = re.search(r"token_len for \d+ rows \((\d+\.\d)%\)", notes).group(1)
    assert f"`token_len` ({round(float(share))}%)" in text
    exact, ratio, err = re.search(r"(\d+\.\d)% exact, median ratio (\d\.\d+), mean \|rel. error\| (\d+\.\d)%",
                                  notes).groups()
    assert f"{exact}% of rows (median ratio {ratio}, mean |relative error| {err}%" in text
    # how well RouterBench's real per-call costs fit cost = in_tok·p_in + out_tok·p_out, model by model
    t = load_data("routerbench").table
    r2 = {}
    for m, g in t.groupby("model"):
        x = g[["input_tokens", "output_tokens"]].to_numpy(float)
        y = g["cost_usd"].to_numpy(float)
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        r2[m] = 1 - np.sum((y - x @ coef) ** 2) / np.sum((y - y.mean()) ** 2)
    exact = [m for m, v in r2.items() if round(v, 3) == 1.0]
    (odd,) = set(r2) - set(exact)
    assert f"{len(exact)} of its {len(r2)} models" in text and f"{odd}'s costs scatter" in text
    assert f"R² = {r2[odd]:.2f})" in text


def test_serve_target_is_judged_on_the_per_request_overhead(tmp_path):
    """Once the backends queue, a difference of latency percentiles can be negative: the README line and the docs
    table must not read that as a met target."""
    import json

    from bandit_sim.experiments.pipeline import _bench_lines, serve_overhead_block

    level = {"overhead_per_request_ms": {"p50": 11.0, "p99": 62.4, "mean": 15.0}, "requests_per_s": 176.0,
             "overhead_pct_ms": {"p50": 82.1, "p99": -447.9}, "backend_latency_ms": {"p50": 42.0, "p99": 1128.0},
             "passthrough_overhead_pct_ms": {"p50": 49.6}}
    one = {**level, "overhead_per_request_ms": {"p50": 3.8, "p99": 4.0, "mean": 4.0},
           "overhead_pct_ms": {"p50": 3.9, "p99": 4.5}, "backend_latency_ms": {"p50": 22.0, "p99": 23.0}}
    ip = dict(route_and_log=0.8, router_route=1.1, count_tokens=0.01, log_append_flush=0.01, log_append_fsync=0.2,
              feedback_with_fsync=0.9, state_save=2.7)
    bench = tmp_path / "results" / "bench"
    bench.mkdir(parents=True)
    (bench / "serve.json").write_text(json.dumps({"command": "c", "requests": 600, "backend_delay_ms": 20.0,
                                                 "levels": {"1": one, "32": level}, "in_process_ms": ip}))
    line = next(ln for ln in _bench_lines(bench) if "Server overhead" in ln)
    assert "p99 62.4 ms" in line and "target there is not met" in line
    block = serve_overhead_block(tmp_path)
    assert "-447" not in block and "per request: 62.4 ms" in block


def test_readme_points_to_the_results_block_in_the_right_direction():
    """A sentence sending the reader to "the results block above/below" is on the right side of the block."""
    from bandit_sim.experiments.pipeline import README_BEGIN, README_END

    text = (ROOT / "README.md").read_text()
    begin, end = text.index(README_BEGIN), text.index(README_END)
    refs = list(re.finditer(r"results\s+block\s+(above|below)", text))
    assert refs
    for m in refs:
        if begin <= m.start() <= end:
            continue  # the generated block itself
        line = text.count("\n", 0, m.start()) + 1
        assert m.group(1) == ("below" if m.start() < begin else "above"), f"README.md:{line}: {m.group(0)!r}"
