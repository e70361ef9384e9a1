"""Your own models and prices (issue #14, item 4): prices files, aliases, `data validate` on unpriced models,
`--prices` on every command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bandit_sim.cli as cli
from bandit_sim.cli import main
from bandit_sim.data.catalog import (ALIASES, PRICES, UnknownModelError, clear_user_prices, family_of,
                                     missing_prices, price_of, register_prices)
from bandit_sim.data.loaders import load_data
from bandit_sim.data.prices import PricesFileError, load_prices
from bandit_sim.data.schema import DataValidationError
from bandit_sim.sim.world import world_from_table

FOUR = """prompt_id,model,quality,output_tokens,prompt
p1,gpt-4,1,10,What is 2+2?
p1,mixtral,0,12,What is 2+2?
p2,gpt-4,1,20,Name a prime.
p2,mixtral,1,15,Name a prime.
"""


@pytest.fixture(autouse=True)
def _clean_overlay():
    clear_user_prices()
    yield
    clear_user_prices()


def _table(tmp_path, n=40):
    rng = np.random.default_rng(0)
    rows = [dict(prompt_id=f"p{i}", model=m, quality=float(rng.random() < 0.7), output_tokens=int(rng.integers(5, 99)),
                 prompt=f"question {i}", split=("train", "val", "test")[i % 3])
            for i in range(n) for m in ("gpt-4", "mixtral")]
    path = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_aliases_resolve_to_catalog_entries():
    for alias, target in ALIASES.items():
        assert target in PRICES, (alias, target)
        assert price_of(alias) == price_of(target)
    assert price_of("GPT-4o") == price_of("gpt-4o-2024-08-06")
    assert price_of("claude-3-5-sonnet") == (3e-6, 1.5e-5)
    assert missing_prices(["gpt-4", "mixtral", "claude-3-5-sonnet"]) == ["mixtral"]


@pytest.mark.parametrize("suffix,text", [
    (".toml", '[[backends]]\nname = "mixtral"\nfamily = "Mistral"\ninput_per_m = 0.6\noutput_per_m = 0.7\n'
              'base_url = "http://x/v1"\n'),
    (".csv", "name,input_per_m,output_per_m,family\nmixtral,0.6,0.7,Mistral\n"),
    (".json", '{"models": [{"name": "mixtral", "input_per_m": 0.6, "output_per_m": 0.7, "family": "Mistral"}]}'),
])
def test_prices_file_formats(tmp_path, suffix, text):
    path = tmp_path / f"prices{suffix}"
    path.write_text(text)
    prices, families = load_prices(path)
    assert prices["mixtral"][:2] == (0.6, 0.7) and families == {"mixtral": "Mistral"}
    with pytest.raises(UnknownModelError, match="--prices FILE"):
        price_of("mixtral")
    register_prices(prices, families)
    assert price_of("mixtral") == pytest.approx((6e-7, 7e-7))
    assert family_of("mixtral") == "Mistral"


def test_bad_prices_file_names_the_entry(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("name,input_per_m,output_per_m\nmixtral,cheap,0.7\n")
    with pytest.raises(PricesFileError, match="'mixtral'.*input_per_m"):
        load_prices(path)
    assert main(["data", "describe", "--data", "routerbench", "--prices", str(path)]) == 2


def test_non_utf8_prices_file_is_named(tmp_path, capsys):
    path = tmp_path / "p.csv"
    path.write_bytes("name,input_per_m,output_per_m\nmodèle,1,2\n".encode("latin-1"))
    with pytest.raises(PricesFileError, match=r"p\.csv: not UTF-8 text"):
        load_prices(path)
    assert main(["data", "describe", "--data", "routerbench", "--prices", str(path)]) == 2
    assert f"{path}: not UTF-8 text" in capsys.readouterr().err


def test_validate_passes_unpriced_models_with_a_warning(tmp_path, capsys):
    path = tmp_path / "four.csv"
    path.write_text(FOUR)
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr()
    assert "valid routing table: 4 rows" in out.out
    assert "warning: no price for models ['mixtral']" in out.err and "--prices FILE" in out.err
    assert "catalog.py" not in out.err  # no longer asks the user to edit the package
    # a command that needs costs stops, naming the model and both ways to give prices
    with pytest.raises(DataValidationError, match=r"\['mixtral'\].*--prices FILE.*cost_usd column"):
        load_data(path)


def test_prices_reach_every_command(tmp_path, monkeypatch, capsys):
    """`compare --data TABLE --prices FILE` (before or after the command name) loads and builds the World."""
    table = _table(tmp_path)
    prices = tmp_path / "prices.csv"
    prices.write_text("name,input_per_m,output_per_m\nmixtral,0.6,0.6\n")
    seen = {}

    def fake_compare(data, out, **kw):  # the real compare's first steps: load the table, build the World
        rd = load_data(data)
        world, info = world_from_table(rd.table, "test")
        seen["cost"] = rd.table.groupby("model")["cost_usd"].sum().to_dict()
        seen["prices"] = np.asarray(world.prices).tolist()
        ci = {"mean": 1.0, "ci95": [1.0, 1.0]}
        return {"headline": {"router": "thompson", "test": {"quality_retention": ci, "cost_reduction": ci, "aiq": ci}}}

    monkeypatch.setattr(cli, "run_compare", fake_compare)
    assert main(["compare", "--data", str(table), "--out", str(tmp_path / "o"), "--quick"]) == 1
    assert "['mixtral']" in capsys.readouterr().err
    for argv in (["compare", "--data", str(table), "--prices", str(prices), "--out", str(tmp_path / "o")],
                 ["--prices", str(prices), "compare", "--data", str(table), "--out", str(tmp_path / "o")]):
        clear_user_prices()
        seen.clear()
        assert main(argv) == 0
        assert seen["cost"]["mixtral"] > 0 and np.isfinite(seen["prices"]).all()
    assert main(["data", "describe", "--data", str(table), "--prices", str(prices)]) == 0


@pytest.mark.slow
def test_compare_runs_on_a_user_table_with_a_prices_file(tmp_path):
    table = _table(tmp_path, n=60)
    prices = tmp_path / "prices.toml"
    prices.write_text('[[backends]]\nname = "mixtral"\ninput_per_m = 0.6\noutput_per_m = 0.6\n')
    assert main(["compare", "--data", str(table), "--prices", str(prices), "--out", str(tmp_path / "o"), "--quick",
                 "--tokens", "standin", "--episodes", "4"]) == 0
    assert (tmp_path / "o" / "report.md").exists()
