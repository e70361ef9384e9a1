"""The families and impact figures quoted in README.md and results/README.md are the ones in their metrics files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bandit_sim.experiments.families import headlines as families_headlines
from bandit_sim.experiments.impact import headlines as impact_headlines

ROOT = Path(__file__).resolve().parents[1]


def _metrics(stage: str) -> dict:
    path = ROOT / "results" / stage / "metrics.json"
    if not path.exists():
        pytest.skip(f"{path} not generated yet (bandit-sim run)")
    return json.loads(path.read_text())


def test_families_figures_match_metrics():
    m = _metrics("families")
    readme, index = (ROOT / "README.md").read_text(), (ROOT / "results" / "README.md").read_text()
    for line in families_headlines(m):
        assert f"- {line}\n" in readme, line
        assert f"  - {line}\n" in index, line
    # the README's reading of them
    o = {n: b["outcomes"]["log_tokens"] for n, b in m["datasets"].items()}
    assert o["arenahard"]["bayes"]["family_beyond_prompt"]["ci95"][0] > 0
    assert o["arenahard"]["anova"]["family_beyond_prompt"]["ci95"][0] > 0
    assert o["arenabench"]["bayes"]["family_beyond_prompt"]["ci95"][0] > 0
    assert o["arenabench"]["anova"]["family_beyond_prompt"]["ci95"][0] == 0
    assert o["routerbench"]["bayes"]["share_prompt"]["median"] > 0.9
    for b in m["datasets"].values():  # acceptance: the two family ICCs agree within their intervals
        for r in b["outcomes"].values():
            assert r["family_icc_agreement"]["intervals_overlap"]


def test_impact_figures_match_metrics():
    m = _metrics("impact")
    readme, index = (ROOT / "README.md").read_text(), (ROOT / "results" / "README.md").read_text()
    for line in impact_headlines(m):  # the README's generated block quotes the results index
        assert f"  - {line}\n" in index, line
        assert f"- {line}\n" in readme, line
    assert m["queries_per_day"] == 100_000
    for r in m["routers"].values():
        lo, hi = r["monthly_cost_usd"]["ci95"]
        assert lo <= r["monthly_cost_usd"]["estimate"] <= hi


def test_nuts_cross_check_reading():
    m = _metrics("families_nuts")
    for b in m["datasets"].values():
        for r in b["outcomes"].values():
            for k in ("share_model", "share_prompt", "share_prompt_family", "share_residual"):  # intervals overlap
                a, n = r["bayes"][k]["ci95"], r["nuts"][k]["ci95"]
                assert a[0] <= n[1] and n[0] <= a[1], k
    ah = m["datasets"]["arenahard"]["outcomes"]["log_tokens"]
    assert ah["nuts"]["icc_family"]["median"] < ah["bayes"]["icc_family"]["median"]
    assert ah["nuts"]["icc_family"]["ci95"][0] < ah["bayes"]["icc_family"]["ci95"][0]
