"""End-to-end test of `bandit-sim tokens` logic on a tiny table (written to tmp_path)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bandit_sim.experiments.token_eval import MODEL_METHODS, NEW_MODEL_N, PROMPT_METHODS, run_token_eval
from hierarchical.fit import _RUNNERS

TOPICS = ["Write a detailed essay about", "How do I fix this Python code:\n```python\nx = 1\n```\nfor",
          "Briefly, what is", "Prove that the integral of", "List 10 ideas for"]


def _tiny_table(n_prompts=150, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    models = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "c1": "C", "c2": "C", "d1": "D"}
    base = {"A": 6.2, "B": 5.6, "C": 5.0, "D": 5.8}
    rows = []
    for p in range(n_prompts):
        topic = rng.integers(len(TOPICS))
        prompt = f"{TOPICS[topic]} subject {p} " + "word " * int(rng.integers(1, 60))
        effect = [0.4, 0.1, -0.8, 0.2, 0.3][topic]
        for j, (mod, fam) in enumerate(models.items()):
            loc = base[fam] + 0.1 * (j % 3) + effect
            tokens = int(np.expm1(loc + 0.4 * rng.standard_t(5)))
            rows.append(dict(prompt_id=f"p{p}", prompt=prompt, model=mod, family=fam, output_tokens=max(tokens, 0),
                             input_tokens=len(prompt.split())))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokens")
    metrics = run_token_eval("tiny", out, [0, 1, 2], table=_tiny_table(), num_steps=400, num_samples=100,
                             progress=False, command="pytest tiny token eval")
    return out, metrics


def test_eval_writes_report_plots_and_metrics(eval_run):
    out, metrics = eval_run
    for name in ("report.md", "metrics.json", "calibration.png", "per_family_error.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(on_disk) >= {"heldout_prompts", "heldout_models", "new_model_after_n", "fit_seconds"}
    for method in PROMPT_METHODS:
        block = on_disk["heldout_prompts"][method]
        assert block["mae"] > 0
        if method == "pooled_ridge":
            assert block["coverage"] is None and block["crps"] is None
        else:
            assert set(block["coverage"]) == {"50", "80", "95"} and block["crps"] > 0
    for method in MODEL_METHODS:
        assert on_disk["heldout_models"][method]["mae"] > 0
    assert 0.0 <= on_disk["heldout_models"]["paired_test"]["p_value"] <= 1.0
    assert set(on_disk["new_model_after_n"]) == {str(n) for n in NEW_MODEL_N}
    assert all(v is not None and v > 0 for v in on_disk["new_model_after_n"].values())
    assert len(on_disk["per_seed"]) == 3 and on_disk["fit_seconds"] > 0
    report = (out / "report.md").read_text()
    assert "pytest tiny token eval" in report and "Seeds: [0, 1, 2]" in report and "ArviZ" in report


def test_eval_hierarchical_beats_global_median_and_is_calibrated(eval_run):
    _, m = eval_run
    hp = m["heldout_prompts"]
    assert hp["hierarchical"]["mae"] < hp["global_median"]["mae"]
    assert 0.85 < hp["hierarchical"]["coverage"]["95"] <= 1.0


def test_eval_reuses_the_compiled_step_across_seeds(eval_run):
    # three seeds, three fits: one compiled SVI chunk (same K, G, D; rows padded to the same size). The key holds
    # (guide, rank, chunk, batch_size, num_samples, ...): the eval's fits are the ones with 100 draws
    runners = [r for k, r in _RUNNERS.items() if k[4] == 100]
    assert len(runners) == 1 and runners[0].run_chunk._cache_size() == 1


def test_eval_rejects_empty_table(tmp_path):
    empty = _tiny_table().iloc[:0]
    with pytest.raises(ValueError, match="empty table"):
        run_token_eval("tiny", tmp_path, [0], table=empty)
