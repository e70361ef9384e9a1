#!/usr/bin/env python
"""Build the compact bundled datasets in bandit_sim/data/bundled from the development set (../shared/datasets).

Usage: python scripts/build_bundled_data.py --src ../shared/datasets --out bandit_sim/data/bundled
Writes <name>.parquet (per-row values, no response texts), <name>_prompts.parquet (prompt text and metadata once
per prompt) and manifest.json (source file hashes, counts, notes, the tokenizer check). Deterministic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bandit_sim.data.sources import RAW_FILES, load_raw  # noqa: E402
from bandit_sim.data.loaders import save_bundle  # noqa: E402
from bandit_sim.data.tokens import TOKENIZER  # noqa: E402

ORIGINS = {
    "routerbench": "RouterBench zero-shot subsets (ARC-challenge, Winogrande, MBPP) as redistributed by the RouterDC "
                   "repository; licence MIT",
    "arenabench": "lmarena arena-hard-auto, data/arena-bench-v1 (Chatbot Arena prompts, GPT-4 grades); Apache-2.0",
    "arenahard": "lmarena arena-hard-auto v0.1 answers and two public mirrors; Apache-2.0",
}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="../shared/datasets", help="folder with the raw development parquet files")
    ap.add_argument("--out", default="bandit_sim/data/bundled", help="package data folder to write")
    ap.add_argument("--only", choices=sorted(RAW_FILES), action="append", help="rebuild only these datasets")
    args = ap.parse_args(argv)
    out = Path(args.out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"datasets": {}}
    manifest["tokenizer"] = TOKENIZER
    manifest["built_by"] = "python scripts/build_bundled_data.py --src ../shared/datasets --out bandit_sim/data/bundled"
    for name in args.only or sorted(RAW_FILES):
        print(f"building {name} ...", flush=True)
        table, meta = load_raw(name, args.src)
        counts = save_bundle(name, table, out)
        manifest["datasets"][name] = {
            **meta, **counts, "source_file": RAW_FILES[name], "source_sha256": sha256(Path(args.src) / RAW_FILES[name]),
            "origin": ORIGINS[name],
        }
        print(f"  {counts}", flush=True)
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, manifest_path)
    total = sum(p.stat().st_size for p in out.glob("*.parquet"))
    print(f"bundled data: {total / 1e6:.2f} MB in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
