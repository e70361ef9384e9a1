"""Rewrite README.md's generated results block from the files under results/ (run by `make run` and `make bench`).

Usage: python scripts/update_readme.py
"""

from pathlib import Path

from bandit_sim.experiments.pipeline import sync_readme

if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    print("README.md results block " + ("updated" if sync_readme(root) else "already up to date"))
