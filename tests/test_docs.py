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
