"""The data layer: catalog, schema validation, bundled datasets, user tables, the CLI's data commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bandit_sim.data.catalog import FAMILIES, UnknownModelError, family_of, price_of, price_table
from bandit_sim.cli import main
from bandit_sim.data.loaders import bundle_manifest, load_data, read_bundle
from bandit_sim.data.schema import DataValidationError, validate_table
from bandit_sim.data.sources import build_arenabench, build_routerbench, hash_split


# ---------------------------------------------------------------- catalog
@pytest.mark.parametrize("model,family", [
    ("gpt-4-1106-preview", "OpenAI"), ("o1-mini-2024-09-12", "OpenAI"), ("claude-instant-v1", "Anthropic"),
    ("gemini-1.5-pro-api-0514", "Google"), ("gemma-2-9b-it", "Google"), ("meta/llama-2-70b-chat", "Meta"),
    ("mistralai/mixtral-8x7b-chat", "Mistral"), ("llama-3.1-nemotron-70b-instruct", "NVIDIA"),
    ("zero-one-ai/Yi-34B-Chat", "01.AI"), ("some-new-model", "Other"),
])
def test_family_of(model, family):
    assert family_of(model) == family


def test_every_bundled_model_has_a_price_and_family():
    for name in ("routerbench", "arenabench", "arenahard"):
        models = read_bundle(name)["model"].unique()
        for m in models:
            p_in, p_out = price_of(m)
            assert 0 < p_in < 1e-4 and 0 < p_out < 1e-4, m
            assert family_of(m) in FAMILIES
        assert all(r["source"] for r in price_table(models))


def test_unknown_model_price_error_names_model():
    with pytest.raises(UnknownModelError, match="totally-unknown-llm"):
        price_of("totally-unknown-llm")


def test_routerbench_prices_reproduce_its_real_costs():
    t = load_data("routerbench").table
    p = t["model"].map(price_of)
    predicted = t["input_tokens"] * p.str[0] + t["output_tokens"] * p.str[1]
    close = np.isclose(predicted, t["cost_usd"], rtol=0.02, atol=2e-6)
    # 14 calls (one per twice-listed prompt) were really billed for the prompt sent twice: the real cost stays.
    assert (~close).sum() == 14, t.loc[~close, ["prompt_id", "model", "cost_usd"]]


# ---------------------------------------------------------------- bundled data
def test_bundled_counts():
    rb = load_data("routerbench")
    assert rb.table["prompt_id"].nunique() == 3164 and rb.table["model"].nunique() == 11
    assert rb.quality_kind == "correct 0/1" and set(rb.table["quality"].unique()) <= {0.0, 1.0}
    ab = load_data("arenabench")
    assert ab.table["prompt_id"].nunique() == 300 and ab.table["model"].nunique() == 16
    assert ab.table["quality"].between(0, 1).all()
    ah = load_data("arenahard")
    assert ah.table["prompt_id"].nunique() == 500 and ah.table["model"].nunique() > 100
    assert not ah.has_quality and ah.table["quality"].isna().all()
    fams = set(ah.table["family"]) | set(ab.table["family"]) | set(rb.table["family"])
    assert {"OpenAI", "Anthropic", "Google", "Meta", "Mistral"} <= fams


def test_bundle_is_small_and_has_licences():
    from importlib import resources

    d = resources.files("bandit_sim.data") / "bundled"
    total = sum(p.stat().st_size for p in map(lambda x: __import__("pathlib").Path(str(x)), d.iterdir()))
    assert total < 15e6
    text = (d / "DATA_LICENSES").read_text()
    assert "MIT" in text and "Apache" in text
    manifest = bundle_manifest()
    assert manifest["datasets"]["arenahard"]["token_check"]["exact_match_share"] > 0.8


def test_splits_are_by_prompt_and_complete():
    for name in ("routerbench", "arenabench", "arenahard"):
        t = load_data(name).table
        assert t.groupby("prompt_id")["split"].nunique().max() == 1
        assert set(t["split"]) == {"train", "val", "test"}
    rb = load_data("routerbench").table
    assert rb.drop_duplicates("prompt_id")["split"].value_counts()["test"] == 952


def test_hash_split_is_deterministic_and_proportional():
    ids = pd.Series([f"p{i}" for i in range(5000)])
    a = hash_split(ids, {"train": 0.6, "val": 0.2, "test": 0.2})
    b = hash_split(ids, {"train": 0.6, "val": 0.2, "test": 0.2})
    assert (a == b).all()
    share = a.value_counts(normalize=True)
    assert abs(share["train"] - 0.6) < 0.03 and abs(share["test"] - 0.2) < 0.03


def test_raw_builders_reproduce_the_bundle(shared_datasets):
    """The bundled copies are what the build script makes from the raw files (nothing edited by hand)."""
    for name, builder, raw in (("routerbench", build_routerbench, "routerbench_zs.parquet"),
                               ("arenabench", build_arenabench, "arena_bench_v1.parquet")):
        built, meta = builder(pd.read_parquet(shared_datasets / raw))
        bundled = read_bundle(name)[built.columns]
        pd.testing.assert_frame_equal(built.reset_index(drop=True), bundled.reset_index(drop=True),
                                      check_dtype=False, check_categorical=False)
        assert any("dropped" in n for n in meta["notes"])  # every exclusion is reported


def test_routerbench_exclusions_are_reported():
    notes = " ".join(load_data("routerbench").notes)
    assert "dropped 154 rows" in notes


# ---------------------------------------------------------------- validation
def _good() -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": ["a", "a", "b", "b"], "model": ["gpt-4-0613", "claude-2.1"] * 2,
        "quality": [1.0, 0.5, 0.0, 0.25], "output_tokens": [10, 20, 30, 40],
    })


def test_valid_table_passes_and_normalises():
    out = validate_table(_good())
    assert out["output_tokens"].dtype == np.int64 and out["quality"].dtype == np.float64


BAD_CASES = {
    "missing column": (lambda d: d.drop(columns=["quality"]), "quality"),
    "wrong type": (lambda d: d.assign(output_tokens=["x", "1", "2", "3"]), "output_tokens"),
    "nan required": (lambda d: d.assign(quality=[1.0, np.nan, 0.0, 1.0]), "quality"),
    "nan model": (lambda d: d.assign(model=["m", None, "m2", "m"]), "model"),
    "negative tokens": (lambda d: d.assign(output_tokens=[1, -5, 3, 4]), "output_tokens"),
    "negative cost": (lambda d: d.assign(cost_usd=[0.1, 0.2, -0.3, 0.1]), "cost_usd"),
    "negative input tokens": (lambda d: d.assign(input_tokens=[1, 2, 3, -4]), "input_tokens"),
    "quality above 1": (lambda d: d.assign(quality=[1.0, 7.0, 0.0, 1.0]), "quality"),
    "quality below 0": (lambda d: d.assign(quality=[1.0, -0.1, 0.0, 1.0]), "quality"),
    "duplicate pair": (lambda d: pd.concat([d, d.iloc[[0]]]), "prompt_id, model"),
    "empty": (lambda d: d.iloc[0:0], "empty"),
    "bad split": (lambda d: d.assign(split=["train", "train", "holdout", "holdout"]), "split"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_validate_rejects(case, tmp_path, capsys):
    mutate, needle = BAD_CASES[case]
    bad = mutate(_good())
    with pytest.raises(DataValidationError, match="(?i)" + needle.replace(",", ",")):
        validate_table(bad, source="t")
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    assert main(["data", "validate", str(path)]) != 0
    err = capsys.readouterr().err
    assert needle.split(",")[0] in err or "empty" in err


def test_validate_names_first_offending_rows():
    bad = _good().assign(output_tokens=[1, -5, 3, -4])
    with pytest.raises(DataValidationError, match=r"rows 1, 3"):
        validate_table(bad)


def test_validate_cli_accepts_good_parquet(tmp_path, capsys):
    path = tmp_path / "good.parquet"
    _good().to_parquet(path)
    assert main(["data", "validate", str(path)]) == 0
    assert "valid routing table: 4 rows" in capsys.readouterr().out


@pytest.mark.parametrize("mutate,shown", [
    (lambda d: d.assign(quality=[1.0, 1.5, 0.0, 1.0]), "(found 1.5)"),
    (lambda d: d.assign(quality=[1.0, np.inf, 0.0, 1.0]), "(found inf)"),
    (lambda d: d.assign(split=[1, 1, 2, 2]), "(found 1)"),
], ids=["quality 1.5", "quality inf", "numeric split"])
def test_validate_messages_show_plain_numbers(mutate, shown, tmp_path, capsys):
    # numpy scalars used to print as np.float64(1.5) / np.int64(1)
    bad = mutate(_good())
    with pytest.raises(DataValidationError) as ei:
        validate_table(bad, source="t")
    assert shown in str(ei.value) and "np." not in str(ei.value), str(ei.value)
    path = tmp_path / "bad.parquet"
    bad.to_parquet(path)
    assert main(["data", "validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert shown in err and "np." not in err, err


def test_input_tokens_note_of_a_table_without_prompt_text(tmp_path, capsys):
    # no prompt column and no input_tokens: nothing is counted; every row gets 0 input tokens, and the note says
    # so (it said "counted from prompt text with cl100k" next to "no prompt column")
    path = tmp_path / "t.csv"
    _good().to_csv(path, index=False)
    rd = load_data(str(path))
    assert (rd.table["input_tokens"] == 0).all()
    assert not any("counted from prompt text" in n for n in rd.notes), rd.notes
    assert any(n.startswith("input_tokens: 0 on every row (no input_tokens column and no prompt text") for n in rd.notes)
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "input_tokens: 0 on every row" in out and "counted from prompt text" not in out
    # a prompt column with some blank prompts: counted where there is text, 0 where not, and said so
    _good().assign(prompt=["hello there", "hello there", "", ""]).to_csv(path, index=False)
    rd = load_data(str(path))
    t = rd.table
    assert (t.loc[t.prompt_id == "a", "input_tokens"] > 0).all() and (t.loc[t.prompt_id == "b", "input_tokens"] == 0).all()
    assert "input_tokens: counted from prompt text with cl100k; 0 for the 1 prompts without text" in rd.notes
    _good().assign(prompt=["hello there", "hello there", "bye", "bye"]).to_csv(path, index=False)
    assert "input_tokens: counted from prompt text with cl100k" in load_data(str(path)).notes


def test_user_table_gets_optional_columns_filled(tmp_path):
    path = tmp_path / "t.csv"
    _good().assign(prompt=["hello there", "hello there", "bye", "bye"]).to_csv(path, index=False)
    rd = load_data(str(path))
    t = rd.table
    assert {"family", "cost_usd", "input_tokens", "order", "category", "split"} <= set(t.columns)
    assert (t["cost_usd"] > 0).all() and t.loc[t.model == "gpt-4-0613", "family"].iloc[0] == "OpenAI"
    assert any("cost_usd" in n for n in rd.notes)


def test_user_table_with_unknown_model_and_no_cost_is_a_clear_error(tmp_path):
    path = tmp_path / "t.csv"
    _good().assign(model=["mystery-1", "mystery-2"] * 2).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match="mystery"):
        load_data(str(path))


def test_unknown_dataset_name():
    with pytest.raises(FileNotFoundError, match="unknown dataset"):
        load_data("no-such-dataset")


# ---------------------------------------------------------------- describe
def test_describe_json(capsys):
    assert main(["data", "describe", "--data", "routerbench", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["n_prompts"] == 3164 and d["n_models"] == 11
    for key in ("models", "families", "quality_mean", "output_tokens_median", "cost_usd_total"):
        assert set(d[key]) == set(d["models"]) if key != "models" else len(d[key]) == 11
    assert abs(d["quality_mean"]["gpt-4-1106-preview"] - 0.88) < 0.01


def test_blank_input_tokens_are_filled_or_named_never_nan(tmp_path, capsys):
    path = tmp_path / "t.csv"
    t = _good().assign(prompt=["hello there", "hello there", "bye", "bye"], input_tokens=[5, None, None, None])
    t.to_csv(path, index=False)
    rd = load_data(str(path))
    got = rd.table
    assert got["input_tokens"].notna().all() and got["cost_usd"].notna().all()
    assert got["input_tokens"].tolist()[:2] == [5, 5]  # the same prompt's count from its other row
    assert got["input_tokens"].iloc[2] == got["input_tokens"].iloc[3] > 0  # "bye" counted from its text
    assert any("input_tokens: 3 blank cells filled" in n for n in rd.notes)
    # no prompt text and no other row of that prompt: an error naming the column and the rows, validate fails too
    t.assign(prompt=["hello there", "hello there", "", ""]).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"'input_tokens': blank cells .* rows 2, 3"):
        load_data(str(path))
    assert main(["data", "validate", str(path)]) != 0
    assert "input_tokens" in capsys.readouterr().err
