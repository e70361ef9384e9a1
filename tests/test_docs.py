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
