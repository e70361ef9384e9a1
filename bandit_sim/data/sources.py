"""Loaders of the three real development datasets (raw long tables) into the tidy schema.

The raw files (``routerbench_zs.parquet``, ``arena_bench_v1.parquet``, ``arena_hard_v0.1.parquet``) have the columns
``dataset, prompt_id, prompt, model, response, response_chars, token_len, quality, quality_kind, extra``.
Each ``build_*`` function returns ``(table, meta)``: the tidy table (see `bandit_sim.data.schema`) plus ``output_tokens_source``
("given" or "cl100k") and a metadata dict whose ``notes`` say every row that was excluded and why.
`scripts/build_bundled_data.py` runs them to make the compact copies shipped in ``bandit_sim/data``.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from bandit_sim.data.catalog import family_of, price_of
from bandit_sim.data.tokens import TOKENIZER, count_tokens

__all__ = ["RAW_FILES", "build_arenabench", "build_arenahard", "build_routerbench", "hash_split", "price_cost"]

RAW_FILES = {
    "routerbench": "routerbench_zs.parquet",
    "arenabench": "arena_bench_v1.parquet",
    "arenahard": "arena_hard_v0.1.parquet",
}


def _listish_text(value) -> str:
    """RouterBench stores prompts/responses as the text of a Python list of strings; join its turns."""
    if value is None:
        return ""
    text = str(value)
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(parsed, list):
            # 14 RouterBench prompts are listed twice (once per source file) and their list repeats the same
            # turn; the graded calls' costs show one copy was sent, so repeated consecutive turns collapse.
            turns = [str(t) for i, t in enumerate(parsed) if i == 0 or t != parsed[i - 1]]
            return "\n\n".join(turns)
    return text


def hash_split(prompt_ids: pd.Series, fractions: dict[str, float]) -> pd.Series:
    """Deterministic split by prompt: a stable hash of each id mapped onto cumulative fractions.

    Args:
      prompt_ids: (N,) ids.
      fractions: split name -> fraction, summing to 1 (e.g. {"train": .6, "val": .2, "test": .2}).
    Returns:
      (N,) split names; the same id always lands in the same split, on any machine.
    """
    u = prompt_ids.map(lambda s: int(hashlib.sha256(str(s).encode()).hexdigest()[:12], 16) / 16**12)
    edges = np.cumsum(list(fractions.values()))
    names = np.array(list(fractions.keys()))
    return pd.Series(names[np.searchsorted(edges, u.to_numpy(), side="right").clip(0, len(names) - 1)],
                     index=prompt_ids.index)


def price_cost(models: pd.Series, input_tokens: pd.Series, output_tokens: pd.Series) -> pd.Series:
    """Cost in USD of each call from the price table: input_tokens * p_in + output_tokens * p_out."""
    prices = {m: price_of(m) for m in models.unique()}
    p_in = models.map(lambda m: prices[m][0]).astype(float)
    p_out = models.map(lambda m: prices[m][1]).astype(float)
    return input_tokens.astype(float) * p_in + output_tokens.astype(float) * p_out


def _order(prompt_ids: pd.Series) -> pd.Series:
    first = pd.unique(prompt_ids)
    return prompt_ids.map({p: i for i, p in enumerate(first)}).astype("int64")


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["prompt_id", "prompt", "model", "family", "quality", "output_tokens", "input_tokens", "cost_usd",
            "order", "category", "split", "output_tokens_source"]
    return df[cols].sort_values(["order", "model"], kind="stable").reset_index(drop=True)


def build_routerbench(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """RouterBench zero-shot (ARC-challenge, Winogrande, MBPP): quality = correct 0/1, real call cost.

    Split: prompts from the source's test files -> "test"; from its train files -> 80/20 "train"/"val" by hash.
    """
    notes: list[str] = []
    df = raw.copy()
    extra = df["extra"].map(json.loads)
    df["cost_usd"] = extra.map(lambda e: e["total_cost_usd"]).astype(float)
    df["category"] = extra.map(lambda e: e["eval_name"])
    df["source_split"] = np.where(extra.map(lambda e: "test" in e["split"]), "test", "train")
    df["order"] = _order(df["prompt_id"])

    nan_q = df["quality"].isna()
    dup = df.duplicated(["prompt_id", "model"], keep=False)
    resolved = nan_q & dup  # a (prompt, model) row with NaN quality that has a graded twin
    df = df[~resolved]
    if resolved.any():
        notes.append(f"dropped {int(resolved.sum())} rows with no quality whose (prompt_id, model) has a graded "
                     f"duplicate row ({raw.loc[resolved, 'prompt_id'].nunique()} prompt ids listed in both "
                     f"the source's train and test files)")
    left_nan = df["quality"].isna()
    if left_nan.any():
        notes.append(f"dropped {int(left_nan.sum())} rows with no quality and no graded duplicate")
        df = df[~left_nan]
    dup = df.duplicated(["prompt_id", "model"], keep="first")
    if dup.any():
        notes.append(f"dropped {int(dup.sum())} exact duplicate (prompt_id, model) rows (kept the first)")
        df = df[~dup]

    df["prompt"] = df["prompt"].map(_listish_text)
    # one prompt text / source split per prompt id: the first kept row's
    first = df.groupby("prompt_id", sort=False).first()
    df["prompt"] = df["prompt_id"].map(first["prompt"])
    src = df["prompt_id"].map(first["source_split"])
    trainval = hash_split(df["prompt_id"], {"train": 0.8, "val": 0.2})
    df["split"] = np.where(src == "test", "test", trainval)

    df["output_tokens"] = count_tokens(df["response"].map(_listish_text).tolist())
    df["output_tokens_source"] = "cl100k"
    uniq = df.drop_duplicates("prompt_id")
    df["input_tokens"] = df["prompt_id"].map(dict(zip(uniq["prompt_id"], count_tokens(uniq["prompt"].tolist()))))
    df["family"] = df["model"].map(family_of)
    notes.append(f"output tokens: responses counted with {TOKENIZER} (the source gives no token counts)")
    notes.append("cost_usd: RouterBench's real per-call total_cost_usd")
    notes.append("split: source test files -> test; source train files -> train/val 80/20 by a hash of prompt_id")
    meta = {"quality_kind": "correct 0/1", "world_kind": "full-information", "notes": notes}
    return _finish(df), meta


def build_arenabench(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """arena-bench v1 (300 Chatbot Arena prompts): quality = GPT-4 grade 1-10 mapped to (g - 1) / 9."""
    notes: list[str] = []
    df = raw.copy()
    graded = df.groupby("model")["quality"].apply(lambda s: s.notna().any())
    ungraded = sorted(graded.index[~graded])
    if ungraded:
        n = int(df["model"].isin(ungraded).sum())
        notes.append(f"dropped {n} rows of {len(ungraded)} models with no grades at all: {', '.join(ungraded)}")
        df = df[~df["model"].isin(ungraded)]
    nan_q = df["quality"].isna()
    if nan_q.any():
        per_model = df[nan_q].groupby("model").size().to_dict()
        notes.append(f"dropped {int(nan_q.sum())} ungraded rows of graded models ({per_model}); "
                     f"those (prompt, model) cells are missing (the World masks them)")
        df = df[~nan_q]
    bad = (df["quality"] < 1) | (df["quality"] > 10)
    if bad.any():
        raise ValueError(f"arena-bench: grades outside 1..10 at rows {list(df.index[bad][:5])}")
    df["quality"] = (df["quality"] - 1.0) / 9.0
    df["order"] = _order(df["prompt_id"])
    df["category"] = "arena"
    df["split"] = hash_split(df["prompt_id"], {"train": 0.6, "val": 0.2, "test": 0.2})
    df["output_tokens"] = count_tokens(df["response"].tolist())
    df["output_tokens_source"] = "cl100k"
    uniq = df.drop_duplicates("prompt_id")
    df["input_tokens"] = df["prompt_id"].map(dict(zip(uniq["prompt_id"], count_tokens(uniq["prompt"].tolist()))))
    df["family"] = df["model"].map(family_of)
    df["cost_usd"] = price_cost(df["model"], df["input_tokens"], df["output_tokens"])
    notes.append(f"output tokens: responses counted with {TOKENIZER} (the source gives no token counts)")
    notes.append("cost_usd: price table (bandit_sim/data/catalog.py) x tokens")
    notes.append("split: 60/20/20 train/val/test by a hash of prompt_id")
    meta = {"quality_kind": "GPT-4 grade 1-10 -> (g-1)/9", "world_kind": "full-information", "notes": notes}
    return _finish(df), meta


def build_arenahard(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """arena-hard v0.1 (500 prompts, 100+ models): no quality signal; output tokens from ``token_len`` where given.

    Also returns, in ``meta["token_check"]``, how cl100k counts compare with the given ``token_len``.
    """
    notes: list[str] = []
    df = raw.copy()
    extra = df["extra"].map(lambda e: json.loads(e) if isinstance(e, str) else {})
    df["category"] = extra.map(lambda e: e.get("cluster") or "unknown")
    given = pd.to_numeric(df["token_len"], errors="coerce")
    counted = count_tokens(df["response"].tolist())
    has = given.notna().to_numpy()
    g, c = given.to_numpy()[has], counted[has]
    token_check = {
        "rows_compared": int(has.sum()),
        "exact_match_share": float(np.mean(c == g)),
        "median_ratio_counted_over_given": float(np.median(c / np.maximum(g, 1))),
        "mean_abs_rel_error": float(np.mean(np.abs(c - g) / np.maximum(g, 1))),
        "pearson_r": float(np.corrcoef(c, g)[0, 1]),
    }
    df["output_tokens"] = np.where(has, given.fillna(0).to_numpy(), counted).astype("int64")
    df["output_tokens_source"] = np.where(has, "given", "cl100k")
    notes.append(f"output tokens: the source's token_len for {int(has.sum())} rows ({has.mean():.1%}); "
                 f"{TOKENIZER} counts of the response for the other {int((~has).sum())}")
    notes.append("cl100k vs given token_len on the rows that have both: "
                 f"{token_check['exact_match_share']:.1%} exact, median ratio "
                 f"{token_check['median_ratio_counted_over_given']:.3f}, mean |rel. error| "
                 f"{token_check['mean_abs_rel_error']:.1%}")
    df["quality"] = np.nan
    df["order"] = _order(df["prompt_id"])
    df["split"] = hash_split(df["prompt_id"], {"train": 0.6, "val": 0.2, "test": 0.2})
    uniq = df.drop_duplicates("prompt_id")
    df["input_tokens"] = df["prompt_id"].map(dict(zip(uniq["prompt_id"], count_tokens(uniq["prompt"].tolist()))))
    df["family"] = df["model"].map(family_of)
    df["cost_usd"] = price_cost(df["model"], df["input_tokens"], df["output_tokens"])
    per_model = df.groupby("model").size()
    partial = per_model[per_model < df["prompt_id"].nunique()]
    if len(partial):
        notes.append("models that did not answer every prompt (kept; the missing cells are absent): "
                     + ", ".join(f"{m} ({n})" for m, n in partial.sort_values().items()))
    notes.append("no per-prompt quality: use this dataset for the token model, not for routing")
    notes.append("cost_usd: price table (bandit_sim/data/catalog.py) x tokens")
    meta = {"quality_kind": "none", "world_kind": "token-only", "notes": notes, "token_check": token_check}
    return _finish(df), meta


BUILDERS = {"routerbench": build_routerbench, "arenabench": build_arenabench, "arenahard": build_arenahard}


def load_raw(name: str, src_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a raw development file from ``src_dir`` and build its tidy table."""
    path = Path(src_dir) / RAW_FILES[name]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: point --src at the folder holding {RAW_FILES[name]}")
    return BUILDERS[name](pd.read_parquet(path))
