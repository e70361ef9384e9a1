"""Small helpers shared by the experiment reports: JSON/markdown writing and plot styling."""

from __future__ import annotations

import io
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from hierarchical.storage import atomic_write

__all__ = ["command_line", "fmt", "md_table", "write_json", "savefig", "short_name"]


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a user would type it (`bandit-sim ...`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return "bandit-sim " + " ".join(shlex.quote(a) for a in argv)


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        # 15 significant digits (not decimals): a p-value of 1e-40 is stored as such, never as 0.0
        return None if math.isnan(v) or math.isinf(v) else float(f"{v:.15g}")
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically; NaN/inf become null, floats keep 15 significant digits (full precision p-values)."""
    atomic_write(Path(path), json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n")


def interval(ci, digits: int = 3) -> str:
    """"[lo, hi]" of a 95% interval from a result ("[n/a]" where it is undefined: None / NaN ends)."""
    lo, hi = ci if ci is not None else (None, None)
    return "[n/a]" if "–" in (fmt(lo, digits), fmt(hi, digits)) else f"[{fmt(lo, digits)}, {fmt(hi, digits)}]"


def pval(x: Any, digits: int = 3) -> str:
    """A p-value at `digits` significant digits; "n/a" where it is undefined (None / NaN)."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def fmt(x: Any, digits: int = 3) -> str:
    """Format a number for a markdown table (None/NaN -> "–")."""
    if x is None:
        return "–"
    if isinstance(x, (float, np.floating)):
        if math.isnan(x):
            return "–"
        return f"{x:.{digits}f}"
    return str(x)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(v) if not isinstance(v, str) else v for v in r) + " |")
    return "\n".join(lines)


def short_name(model: str) -> str:
    """Model name without its org prefix, for plot labels."""
    return model.split("/", 1)[-1]


def savefig(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG (atomic rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    atomic_write(path, buf.getvalue())
    plt.close(fig)
