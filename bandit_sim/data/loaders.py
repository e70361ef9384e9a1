"""One entry point for routing data: `load_data(name_or_path)` -> `RoutingData`.

Names:
- ``routerbench``, ``arenabench``, ``arenahard``: the compact copies bundled in ``bandit_sim/data`` (built by
  ``scripts/build_bundled_data.py`` from the development set; licences in ``bandit_sim/data/bundled/DATA_LICENSES``).
- ``synthetic``: a seeded family-structured world (`bandit_sim.data.synthetic`).
- ``arena55k``: LM Arena human-preference 55k from a local file, ``$BANDIT_SIM_ARENA55K`` or the local
  Hugging Face cache (`bandit_sim.data.arena55k`); never downloads unless asked.
- anything else: a path to a user's Parquet/CSV table in the schema (`bandit_sim.data.schema`), validated on load.
"""

from __future__ import annotations

import io
import json
from importlib import resources
from pathlib import Path

import pandas as pd

from bandit_sim.data.arena55k import load_arena55k
from bandit_sim.data.catalog import HOW_TO_PRICE, family_of, missing_prices
from bandit_sim.data.schema import DataValidationError, RoutingData, read_table, validate_table
from bandit_sim.data.sources import hash_split, price_cost
from bandit_sim.data.synthetic import generate_synthetic
from bandit_sim.data.tokens import count_tokens
from hierarchical.storage import atomic_write

__all__ = ["BUNDLED", "RoutingData", "load_data", "save_bundle", "read_bundle", "bundle_manifest"]

BUNDLED = ("routerbench", "arenabench", "arenahard")
NAMED = BUNDLED + ("synthetic", "arena55k")
_PROMPT_COLS = ["prompt_id", "prompt", "input_tokens", "order", "category", "split"]


def _data_dir() -> Path:
    return Path(str(resources.files("bandit_sim.data") / "bundled"))


def bundle_manifest() -> dict:
    """The bundled data's manifest (sources, row counts, notes, token check)."""
    path = _data_dir() / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: the bundled data was not built (make data)")
    return json.loads(path.read_text())


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, compression="zstd")
    atomic_write(path, buf.getvalue())


def save_bundle(name: str, table: pd.DataFrame, out_dir: Path) -> dict:
    """Write a tidy table as two compact parquet files: per-row values and per-prompt text/metadata."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = table.drop_duplicates("prompt_id")[_PROMPT_COLS].reset_index(drop=True)
    rows = table.drop(columns=[c for c in _PROMPT_COLS if c != "prompt_id"] + ["family"])
    for col in ("model", "output_tokens_source"):
        rows[col] = rows[col].astype("category")
    _write_parquet(rows, out_dir / f"{name}.parquet")
    _write_parquet(prompts, out_dir / f"{name}_prompts.parquet")
    return {"rows": len(rows), "prompts": len(prompts), "models": int(table["model"].nunique())}


def read_bundle(name: str, data_dir: Path | None = None) -> pd.DataFrame:
    """Read a bundled dataset back into one tidy table (families re-derived from `catalog.family_of`)."""
    d = Path(data_dir) if data_dir is not None else _data_dir()
    rows_path, prompts_path = d / f"{name}.parquet", d / f"{name}_prompts.parquet"
    for p in (rows_path, prompts_path):
        if not p.exists():
            raise FileNotFoundError(f"bundled file {p} is missing: reinstall the package or run `make data`")
    rows = pd.read_parquet(rows_path)
    prompts = pd.read_parquet(prompts_path)
    for col in ("model", "output_tokens_source"):
        rows[col] = rows[col].astype(str)
    table = rows.merge(prompts, on="prompt_id", how="left", validate="many_to_one")
    table["family"] = table["model"].map(family_of)
    return table


def _complete_user_table(df: pd.DataFrame, source: str, notes: list[str], require_costs: bool = True) -> pd.DataFrame:
    """Fill the optional columns of a validated user table, saying what was derived.

    Rows whose cost is absent and whose model nothing prices: an error naming the models when `require_costs`,
    else their cost_usd stays NaN and a note starting with "warning:" names them.
    """
    df = df.copy()
    if "prompt" not in df.columns:
        df["prompt"] = ""
        notes.append("no prompt column: the token model's query features come from input token counts only, and "
                     "the text routers read a features column if the table has one, else the bias only")
    df["prompt"] = df["prompt"].fillna("")
    if "family" not in df.columns:
        df["family"] = df["model"].map(family_of)
        notes.append("family: derived from model names (bandit_sim/data/catalog.py)")
    else:
        missing = df["family"].isna()
        if missing.any():
            df.loc[missing, "family"] = df.loc[missing, "model"].map(family_of)
            notes.append(f"family: {int(missing.sum())} missing values derived from model names")
    if "input_tokens" not in df.columns:
        uniq = df.drop_duplicates("prompt_id")
        df["input_tokens"] = df["prompt_id"].map(dict(zip(uniq["prompt_id"], count_tokens(uniq["prompt"].tolist()))))
        blank = int((uniq["prompt"] == "").sum())  # nothing to count: 0 tokens
        if blank == len(uniq):
            notes.append("input_tokens: 0 on every row (no input_tokens column and no prompt text to count them "
                         "from), so costs computed from prices cover output tokens only")
        else:
            notes.append("input_tokens: counted from prompt text with cl100k"
                         + (f"; 0 for the {blank} prompts without text" if blank else ""))
    elif df["input_tokens"].isna().any():
        _fill_input_tokens(df, source, notes)
    if "cost_usd" not in df.columns or df["cost_usd"].isna().any():
        need = df["model"] if "cost_usd" not in df.columns else df.loc[df["cost_usd"].isna(), "model"]
        unpriced = missing_prices(need.unique())
        if unpriced and require_costs:
            raise DataValidationError(f"{source}: column 'cost_usd' is absent or incomplete and no price is known "
                                      f"for models {unpriced}: {HOW_TO_PRICE}")
        ok = ~df["model"].isin(unpriced)
        priced = pd.Series(float("nan"), index=df.index)
        priced[ok] = price_cost(df.loc[ok, "model"], df.loc[ok, "input_tokens"].astype(float),
                                df.loc[ok, "output_tokens"])
        if unpriced:
            notes.append(f"warning: no price for models {unpriced}; their cost_usd stays empty, so commands that "
                         f"need costs will stop: {HOW_TO_PRICE}")
        if "cost_usd" in df.columns:
            n = int(df["cost_usd"].isna().sum())
            df["cost_usd"] = df["cost_usd"].fillna(priced)
            notes.append(f"cost_usd: {n} missing values computed from the price table")
        else:
            df["cost_usd"] = priced
            notes.append("cost_usd: computed from the price table x tokens"
                         + (" (priced models only)" if unpriced else ""))
    if "order" not in df.columns:
        first = pd.unique(df["prompt_id"])
        df["order"] = df["prompt_id"].map({p: i for i, p in enumerate(first)})
        notes.append("order: first appearance of each prompt_id in the file")
    if "category" not in df.columns:
        df["category"] = "all"
    df["category"] = df["category"].fillna("unknown")
    if "split" not in df.columns:
        df["split"] = hash_split(df["prompt_id"], {"train": 0.6, "val": 0.2, "test": 0.2})
        notes.append("split: 60/20/20 train/val/test by a hash of prompt_id")
    return df


def _fill_input_tokens(df: pd.DataFrame, source: str, notes: list[str]) -> None:
    """Blank input_tokens cells: the count another row of the same prompt gives, else the prompt text counted with
    cl100k; DataValidationError naming the rows when neither exists (a NaN count would make cost_usd NaN)."""
    blank = df["input_tokens"].isna()
    known = df.loc[~blank].groupby("prompt_id")["input_tokens"].max()
    fill = df.loc[blank, "prompt_id"].map(known)
    text = df.loc[blank, "prompt"].astype(str)
    need = fill.isna() & (text.str.strip() != "")
    if need.any():
        uniq = text[need].drop_duplicates()
        counts = dict(zip(uniq.tolist(), count_tokens(uniq.tolist())))
        fill[need] = text[need].map(counts)
    left = list(fill.index[fill.isna()])
    if left:
        rows = ", ".join(map(str, left[:5])) + (f" (and {len(left) - 5} more)" if len(left) > 5 else "")
        raise DataValidationError(f"{source}: column 'input_tokens': blank cells with no prompt text to count them "
                                  f"from and no other row of the same prompt_id giving the count, at rows {rows}: "
                                  f"fill them in, or add the prompt text")
    df["input_tokens"] = df["input_tokens"].astype("Float64").fillna(fill.astype("float64")).astype("int64")
    n_text = int(need.sum())
    notes.append(f"input_tokens: {int(blank.sum())} blank cells filled ({int(blank.sum()) - n_text} from another row "
                 f"of the same prompt, {n_text} counted from the prompt text with cl100k)")


def load_data(name_or_path: str | os.PathLike, *, seed: int = 0, require_costs: bool = True,
              **kwargs) -> RoutingData:
    """Load routing data by name or path.

    Args:
      name_or_path: "routerbench", "arenabench", "arenahard", "synthetic", "arena55k", or a Parquet/CSV path.
      seed: seed of the synthetic generator (ignored by real data).
      require_costs: a user's table whose rows lack cost_usd must have prices for their models (the catalog,
        its aliases, or the user's `register_prices` / `--prices FILE`); False keeps such costs NaN with a
        "warning:" note (schema-only checks: `bandit-sim data validate`).
      **kwargs: passed to the synthetic generator (`n_prompts`, ...) or the 55k loader (`path`, ...).
    Returns:
      A `RoutingData`.
    Raises:
      DataValidationError: a user's table breaks the schema (names the column and rows).
      FileNotFoundError: neither a known name nor an existing file.
    """
    key = str(name_or_path)
    if key in BUNDLED:
        manifest = bundle_manifest()["datasets"][key]
        table = read_bundle(key)
        validate_table(table, source=f"bundled {key}", require_quality=manifest["quality_kind"] != "none")
        return RoutingData(key, table, manifest["quality_kind"], manifest["world_kind"], list(manifest["notes"]),
                           extra={k: v for k, v in manifest.items() if k not in ("notes",)})
    if key == "synthetic":
        table = generate_synthetic(seed=seed, **kwargs)
        table = validate_table(table, source="synthetic")
        return RoutingData("synthetic", table, "synthetic", "full-information",
                           [f"synthetic family-structured world, seed {seed}"])
    if key == "arena55k":
        return load_arena55k(seed=seed, **kwargs)
    path = Path(key)
    if not path.exists():
        raise FileNotFoundError(
            f"unknown dataset {key!r}: not one of {', '.join(NAMED)} and no file at {path.resolve()}"
        )
    raw = read_table(path)
    notes: list[str] = []
    table = validate_table(raw, source=str(path))
    table = _complete_user_table(table, str(path), notes, require_costs=require_costs)
    table = validate_table(table, source=str(path))
    return RoutingData(str(path), table, "user", "full-information", notes)

