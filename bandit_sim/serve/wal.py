"""The decision log: JSONL, one line per event, appended and flushed; also the feedback write-ahead log.

Durability: every line is written and flushed to the operating system before the server goes on (so it
survives a killed server process, SIGKILL included). ``feedback`` and ``admin`` lines are also fsync'ed before
the client gets its answer (so they survive a machine crash too, and the fsync carries every earlier line with
it); decision and usage lines are fsync'ed too when the config says ``fsync_every_line = true`` (about 1-3 ms
per routed call on an ordinary disk; off by default).

Every line is a JSON object with ``seq`` (1, 2, ... over the file's life), ``type`` and ``ts`` (UNIX seconds):

- ``decision``: id, step, model, slot, input_tokens, forecast (tokens mean/sd/interval, cost), explored,
  lam, gam, preset, utilities and sampled pi of every candidate, and ``prompt`` only when the config says
  ``log_prompts = true``;
- ``usage``: the upstream's token counts of a routed call (prompt_tokens, completion_tokens);
- ``reroute``: the chosen backend failed and the call went to the next-best (from, to, error);
- ``failed``: no backend answered (the decision is dropped);
- ``feedback``: id, model, step, input_tokens, quality, output_tokens, cost_usd -- written and fsync'ed
  *before* the router applies it and before the client gets its 200 (write-ahead);
- ``admin``: a backend added (its public fields: never a key) or removed.

Recovery: the state file records the ``seq`` of the last line it reflects; on start the server replays every
line after it, in order (`replay`), so an acknowledged feedback is applied exactly once after a SIGKILL.
A torn last line (a crash mid-append: no newline at its end) is ignored and cut: its event was never
acknowledged. Any other line that is not a JSON event is damage: reading stops with `DecisionLogError` naming the
file and the line (skipping it would drop every later event, acknowledged feedback included).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

__all__ = ["DecisionLog", "DecisionLogError", "read_log"]


class DecisionLogError(ValueError):
    """A damaged decision log: a line other than a torn last one is not a JSON event (names the file and line)."""


def read_log(path) -> Iterator[dict[str, Any]]:
    """The log's events in order; a torn last line (no newline: a crash mid-append) ends the read.

    Raises:
      DecisionLogError: a complete line that is not a JSON object with an integer ``seq``.
    """
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                return  # torn last line: never acknowledged
            try:
                ev = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                ev, why = None, f"not JSON ({exc})"
            else:
                why = "not a JSON object with an integer 'seq'"
            if not (isinstance(ev, dict) and isinstance(ev.get("seq"), int) and not isinstance(ev["seq"], bool)):
                raise DecisionLogError(
                    f"{path}: line {n} is damaged: {why}; only a torn last line is skipped, and skipping this one "
                    f"would drop every later event (acknowledged feedback among them): repair or delete line {n}, "
                    f"then start again")
            yield ev


class DecisionLog:
    """Append-only JSONL file; `append` returns once the line is flushed (and fsync'ed when asked)."""

    def __init__(self, path, *, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        last = 0
        size = 0
        good = 0
        for ev in read_log(self.path):
            last = max(last, ev["seq"])
        if self.path.exists():
            # cut a torn last line so the next append starts on a fresh line
            data = self.path.read_bytes()
            size = len(data)
            good = data.rfind(b"\n") + 1
        self._f = open(self.path, "ab")
        if good < size:
            self._f.truncate(good)
        self.seq = last
        self.fsync = fsync

    def append(self, event: dict[str, Any], *, sync: bool = False) -> int:
        """Write one event (seq and ts added) and flush it; fsync too when `sync` (or the log's `fsync`).

        Returns:
          its seq.
        """
        self.seq += 1
        line = json.dumps(dict(seq=self.seq, ts=round(time.time(), 6), **event), separators=(",", ":"))
        self._f.write(line.encode() + b"\n")
        self._f.flush()
        if sync or self.fsync:
            os.fsync(self._f.fileno())
        return self.seq

    def close(self) -> None:
        self._f.close()
