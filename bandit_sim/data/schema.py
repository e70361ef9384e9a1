"""The tidy routing-table schema and its validation.

One row per (prompt, model). Required columns:

==================  =========  ==============================================================
column              type       meaning
==================  =========  ==============================================================
``prompt_id``       str        identifier of the query
``model``           str        the LLM that answered it
``quality``         float      quality of the answer in [0, 1] (1 = best)
``output_tokens``   int >= 0   tokens the model wrote
==================  =========  ==============================================================

Optional columns: ``prompt`` (str), ``input_tokens`` (int >= 0), ``cost_usd`` (float >= 0, real cost of the call),
``family`` (str), ``order`` (sortable: arrival order for temporal splits), ``category`` (str), ``split``
("train" / "val" / "test", by prompt), ``features`` (a list of finite floats per row, one length for all rows: the
query's own embedding for the contextual routers, see `bandit_sim.data.text_features`).

`validate_table` checks a table and raises `DataValidationError` naming the column and the first offending rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "DataValidationError", "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "SPLITS", "plain", "read_table",
    "validate_table",
]

REQUIRED_COLUMNS: dict[str, str] = {
    "prompt_id": "str", "model": "str", "quality": "float in [0, 1]", "output_tokens": "int >= 0",
}
OPTIONAL_COLUMNS: dict[str, str] = {
    "prompt": "str", "input_tokens": "int >= 0", "cost_usd": "float >= 0", "family": "str",
    "order": "sortable", "category": "str", "split": "one of train/val/test",
    "features": "list of floats, one length for every row (user-supplied query features)",
}
SPLITS = ("train", "val", "test")
_SHOW = 5  # offending rows named in a message


class DataValidationError(ValueError):
    """A routing table that does not follow the schema; the message names the column and the rows."""


def _rows(index, limit: int = _SHOW) -> str:
    idx = list(index)
    shown = ", ".join(str(i) for i in idx[:limit])
    more = f" (and {len(idx) - limit} more)" if len(idx) > limit else ""
    return f"rows {shown}{more}"


def plain(v) -> str:
    """A cell value for a message: numpy scalars as the plain number or text (1.5, inf, 3), not np.float64(1.5)."""
    return repr(v.item() if isinstance(v, np.generic) else v)


def _fail(source: str, column: str, problem: str, rows=None) -> DataValidationError:
    where = f" at {_rows(rows)}" if rows is not None else ""
    return DataValidationError(f"{source}: column {column!r}: {problem}{where}")


def _as_numeric(df: pd.DataFrame, col: str, source: str) -> pd.Series:
    s = df[col]
    if pd.api.types.is_bool_dtype(s):
        return s.astype(float)
    if pd.api.types.is_numeric_dtype(s):
        return s.astype(float)
    conv = pd.to_numeric(s, errors="coerce")
    bad = conv.isna() & s.notna()
    if bad.any():
        examples = ", ".join(plain(v) for v in s[bad].head(3))
        raise _fail(source, col, f"expected numbers, found non-numeric values ({examples})", s.index[bad])
    return conv.astype(float)


def _check_str(df: pd.DataFrame, col: str, source: str, required: bool) -> None:
    s = df[col]
    missing = s.isna()
    if required and missing.any():
        raise _fail(source, col, "missing values (NaN/None) in a required column", s.index[missing])
    present = s[~missing]
    not_str = ~present.map(lambda v: isinstance(v, str))
    if not_str.any():
        examples = ", ".join(plain(v) for v in present[not_str].head(3))
        raise _fail(source, col, f"expected text, found {examples}", present.index[not_str])
    if required:
        empty = present.str.strip() == ""
        if empty.any():
            raise _fail(source, col, "empty strings in a required column", present.index[empty])


def _check_count(df: pd.DataFrame, col: str, source: str, required: bool) -> None:
    v = _as_numeric(df, col, source)
    nan = v.isna()
    if required and nan.any():
        raise _fail(source, col, "missing values (NaN) in a required column", v.index[nan])
    ok = v[~nan]
    inf = ~np.isfinite(ok)
    if inf.any():
        raise _fail(source, col, "infinite values", ok.index[inf])
    neg = ok < 0
    if neg.any():
        raise _fail(source, col, f"negative values (min {ok.min():g}); token counts must be >= 0", ok.index[neg])
    frac = ok != np.round(ok)
    if frac.any():
        raise _fail(source, col, "non-integer token counts", ok.index[frac])


def _check_features(df: pd.DataFrame, source: str) -> None:
    """Ragged, empty or non-finite ``features`` vectors are rejected, naming the row (and its prompt_id)."""
    col = df["features"]
    lengths = []
    for i, v in col.items():
        try:
            a = np.asarray(v, np.float64).reshape(-1) if v is not None else np.zeros(0)
        except (TypeError, ValueError):
            raise _fail(source, "features", f"not a list of numbers (prompt_id {df.at[i, 'prompt_id']!r})", [i])
        if a.size == 0:
            raise _fail(source, "features", f"empty feature vector (prompt_id {df.at[i, 'prompt_id']!r})", [i])
        if not np.all(np.isfinite(a)):
            raise _fail(source, "features", f"non-finite value (NaN or inf) (prompt_id {df.at[i, 'prompt_id']!r})",
                        [i])
        lengths.append(a.size)
    lengths = np.asarray(lengths)
    bad = np.flatnonzero(lengths != lengths[0])
    if bad.size:
        i = col.index[bad[0]]
        raise _fail(source, "features", f"ragged feature vectors: {lengths[bad[0]]} values where row "
                    f"{col.index[0]} has {lengths[0]} (prompt_id {df.at[i, 'prompt_id']!r})", col.index[bad])


def validate_table(df: pd.DataFrame, source: str = "table", *, require_quality: bool = True) -> pd.DataFrame:
    """Check a routing table against the schema and return it with normalised dtypes.

    Args:
      df: the table, one row per (prompt, model).
      source: a name for messages (e.g. the file path).
      require_quality: when False, ``quality`` may be entirely missing (NaN) -- only for token-only data
        such as arena-hard; present values must still lie in [0, 1].
    Returns:
      A copy with ``prompt_id``/``model`` as str, ``quality``/``cost_usd`` as float64 and token columns as int64.
    Raises:
      DataValidationError: naming the column and the first offending rows.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataValidationError(f"{source}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{source}: missing required column(s) {missing}; required: "
            + ", ".join(f"{c} ({t})" for c, t in REQUIRED_COLUMNS.items())
        )
    if len(df) == 0:
        raise DataValidationError(f"{source}: the table is empty (no rows)")
    df = df.reset_index(drop=True)

    for col in ("prompt_id", "model"):
        if pd.api.types.is_numeric_dtype(df[col]) and df[col].notna().all():
            df[col] = df[col].astype(str)  # numeric ids read from CSV are fine
        _check_str(df, col, source, required=True)

    q = _as_numeric(df, "quality", source)
    nan = q.isna()
    if require_quality and nan.any():
        raise _fail(source, "quality", "missing values (NaN) in a required column", q.index[nan])
    out = (q < 0) | (q > 1) | ~np.isfinite(q.fillna(0.5))
    if out.any():
        raise _fail(source, "quality", f"values outside [0, 1] (found {plain(q[out].iloc[0])})", q.index[out])

    _check_count(df, "output_tokens", source, required=True)
    if "input_tokens" in df.columns:
        _check_count(df, "input_tokens", source, required=False)
    if "cost_usd" in df.columns:
        c = _as_numeric(df, "cost_usd", source)
        bad = c.notna() & ((c < 0) | ~np.isfinite(c.fillna(0.0)))
        if bad.any():
            raise _fail(source, "cost_usd", "negative or infinite cost", c.index[bad])
    for col in ("prompt", "family", "category"):
        if col in df.columns:
            _check_str(df, col, source, required=False)
    if "order" in df.columns:
        o = df["order"]
        if o.isna().any():
            raise _fail(source, "order", "missing values", o.index[o.isna()])
        per_prompt = df.groupby("prompt_id")["order"].nunique()
        if (per_prompt > 1).any():
            bad_ids = per_prompt.index[per_prompt > 1]
            raise _fail(source, "order", "one prompt has several orders",
                        df.index[df["prompt_id"].isin(bad_ids)])
    if "split" in df.columns:
        bad = ~df["split"].isin(SPLITS)
        if bad.any():
            raise _fail(source, "split", f"values must be one of {SPLITS} (found {plain(df['split'][bad].iloc[0])})",
                        df.index[bad])
        per_prompt = df.groupby("prompt_id")["split"].nunique()
        if (per_prompt > 1).any():
            bad_ids = per_prompt.index[per_prompt > 1]
            raise _fail(source, "split", "one prompt is in several splits",
                        df.index[df["prompt_id"].isin(bad_ids)])

    if "features" in df.columns:
        _check_features(df, source)

    dup = df.duplicated(["prompt_id", "model"], keep="first")
    if dup.any():
        first = df[dup].iloc[0]
        raise _fail(source, "prompt_id, model",
                    f"duplicate (prompt_id, model) pairs, e.g. ({first['prompt_id']!r}, {first['model']!r})",
                    df.index[dup])

    out_df = df.copy()
    out_df["quality"] = q.astype("float64")
    out_df["output_tokens"] = _as_numeric(df, "output_tokens", source).astype("int64")
    if "input_tokens" in out_df.columns:
        it = _as_numeric(df, "input_tokens", source)
        out_df["input_tokens"] = it.astype("Int64") if it.isna().any() else it.astype("int64")
    if "cost_usd" in out_df.columns:
        out_df["cost_usd"] = _as_numeric(df, "cost_usd", source).astype("float64")
    return out_df


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a routing table from Parquet or CSV (chosen by extension) without validating it.

    Raises:
      FileNotFoundError / DataValidationError: the file is missing, or not a readable Parquet/CSV table.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such table: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype={"prompt_id": str, "model": str})
    except Exception as exc:  # pyarrow / pandas parser errors: say which file
        raise DataValidationError(f"{path}: cannot read as a {suffix[1:]} table: {exc}") from exc
    raise DataValidationError(f"{path}: unknown table format {suffix!r}; use .parquet or .csv")


@dataclass(frozen=True)
class RoutingData:
    """A tidy routing table and what is known about where it came from.

    Attributes:
      name: dataset name or path.
      table: one row per (prompt, model); columns per `bandit_sim.data.schema`, always with family, input_tokens,
        cost_usd, order, category and split filled in.
      quality_kind: how quality was measured ("correct 0/1", "GPT-4 grade 1-10 -> (g-1)/9", "bradley-terry",
        "synthetic", "user", or "none" for token-only data).
      world_kind: "full-information" (every model answered every prompt: observed quality is used),
        "pairwise-model" (quality of unobserved pairs comes from a model) or "token-only".
      notes: exclusions, tokenizer and other facts a report must carry.
    """

    name: str
    table: pd.DataFrame
    quality_kind: str
    world_kind: str
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return sorted(self.table["model"].unique())

    @property
    def has_quality(self) -> bool:
        return self.quality_kind != "none"

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split ("train", "val" or "test")."""
        return self.table[self.table["split"] == name]
