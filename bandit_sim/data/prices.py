"""Your own models and prices: a prices file (TOML, CSV or JSON) read into the catalog's overlay.

The format is the serve config's backends (`docs/serve.md`): one entry per model with ``name``,
``input_per_m`` and ``output_per_m`` (USD per 1M input / output tokens) and optionally ``family`` and
``source``; any other key (``base_url``, ``api_key_env``, ...) is ignored here, so a server config is itself a
valid prices file.

- TOML: ``[[backends]]`` (or ``[[models]]``) tables.
- CSV: a header with ``name`` (or ``model``), ``input_per_m``, ``output_per_m`` [, ``family``, ``source``].
- JSON: a list of such objects, or ``{"backends": [...]}`` / ``{"models": [...]}``.

`use_prices_file(path)` registers them for the process (`catalog.register_prices`): every later `price_of`,
`load_data` and `world_from_table` sees them. That is how ``bandit-sim COMMAND --prices FILE`` reaches every
command without threading a mapping through each call.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tomllib
from pathlib import Path

from bandit_sim.data.catalog import Price, register_prices

__all__ = ["PricesFileError", "load_prices", "parse_price_entries", "price_fields", "use_prices_file"]


class PricesFileError(ValueError):
    """A prices file that cannot be read or has a malformed entry (the message names the file and entry)."""


def price_fields(entry: dict, where: str) -> tuple[float, float]:
    """(input_per_m, output_per_m) of one entry: numbers >= 0 and finite; PricesFileError naming `where` and the
    field otherwise."""
    vals = []
    for f in ("input_per_m", "output_per_m"):
        v = entry.get(f)
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise PricesFileError(f"{where}: '{f}' must be a number of USD per 1M tokens, got {entry.get(f)!r}") \
                from None
        if not (math.isfinite(v) and v >= 0):
            raise PricesFileError(f"{where}: '{f}' must be >= 0 and finite, got {v!r}")
        vals.append(v)
    return vals[0], vals[1]


def parse_price_entries(entries, source: str) -> tuple[dict[str, Price], dict[str, str]]:
    """Check entries (dicts with name, input_per_m, output_per_m[, family, source]) -> (prices, families).

    Args:
      entries: a list of mappings.
      source: where they come from, for messages.
    Returns:
      (name -> Price in USD per 1M tokens, name -> family for entries that give one).
    Raises:
      PricesFileError: naming the entry and the field.
    """
    if not isinstance(entries, list) or not entries:
        raise PricesFileError(f"{source}: no entries (expected a list of {{name, input_per_m, output_per_m}})")
    prices, families = {}, {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise PricesFileError(f"{source}: entry {i} is not a table/object")
        name = e.get("name", e.get("model"))
        if not isinstance(name, str) or not name.strip():
            raise PricesFileError(f"{source}: entry {i} has no 'name'")
        vals = price_fields(e, f"{source}: entry {i} ({name!r})")
        if name in prices:
            raise PricesFileError(f"{source}: model {name!r} is listed twice")
        prices[name] = Price(*vals, str(e.get("source") or f"user prices ({source})"))
        if e.get("family"):
            families[name] = str(e["family"])
    return prices, families


def load_prices(path) -> tuple[dict[str, Price], dict[str, str]]:
    """Read a prices file (TOML, CSV or JSON by its suffix; see the module docstring).

    Args:
      path: the file.
    Returns:
      (name -> Price, name -> family).
    Raises:
      PricesFileError: unreadable file or malformed entry.
    """
    path = Path(path)
    if not path.is_file():
        raise PricesFileError(f"{path}: no such prices file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PricesFileError(f"{path}: not UTF-8 text ({exc}); save the prices file as UTF-8") from None
    try:
        if suffix == ".toml":
            doc = tomllib.loads(text)
            entries = doc.get("backends", doc.get("models"))
        elif suffix == ".json":
            doc = json.loads(text)
            entries = doc if isinstance(doc, list) else (doc.get("backends", doc.get("models"))
                                                         if isinstance(doc, dict) else None)
        elif suffix == ".csv":
            entries = [dict(r) for r in csv.DictReader(io.StringIO(text))]
        else:
            raise PricesFileError(f"{path}: unknown prices file type {suffix!r} (use .toml, .csv or .json)")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise PricesFileError(f"{path}: cannot parse: {exc}") from exc
    return parse_price_entries(entries, str(path))


def use_prices_file(path) -> list[str]:
    """Read a prices file and register it for this process (`catalog.register_prices`); returns the model names."""
    prices, families = load_prices(path)
    register_prices(prices, families)
    return sorted(prices)
