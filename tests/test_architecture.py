"""The package's shape: layers point down, no import cycles, project imports at the top of each file.

`lint-imports` (contracts in pyproject.toml) runs in `make test`; these tests check the same graph from the
test suite, including what import-linter's contracts do not cover (cycles between any two modules).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bandit_sim", "hierarchical", "benchmarks")
# one entry per level, bottom up; a tuple is a level of independent siblings (neither may import the other)
LAYERS = ("bandit_sim.data", "bandit_sim.sim", "bandit_sim.router", ("bandit_sim.experiments", "bandit_sim.serve"),
          "bandit_sim.cli")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES, include_external_packages=False)


def _sccs(nodes, edges):
    """Tarjan's strongly connected components (iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(comp)
            elif nxt not in index:
                index[nxt] = low[nxt] = counter[0]
                counter[0] += 1
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(edges[nxt])))
            elif nxt in on:
                low[v] = min(low[v], index[nxt])
    return out


def test_no_import_cycle_between_any_modules(graph):
    nodes = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in nodes}
    cycles = [sorted(c) for c in _sccs(nodes, edges) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def _in(module: str, pkg: str) -> bool:
    return module == pkg or module.startswith(pkg + ".")


def _layer(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if any(_in(module, p) for p in (layer if isinstance(layer, tuple) else (layer,))):
            return i
    return None


def _sibling(module: str) -> str | None:
    for layer in LAYERS:
        if isinstance(layer, tuple):
            for p in layer:
                if _in(module, p):
                    return p
    return None


def test_arrows_point_down(graph):
    bad = []
    for m in graph.modules:
        lm = _layer(m)
        for dep in graph.find_modules_directly_imported_by(m):
            if m.startswith("hierarchical") and not dep.startswith("hierarchical"):
                bad.append((m, dep))
            if m.startswith("bandit_sim") and dep.startswith("benchmarks"):
                bad.append((m, dep))
            ld = _layer(dep)
            if lm is not None and ld is not None and ld > lm:
                bad.append((m, dep))
            sm, sd = _sibling(m), _sibling(dep)
            if sm is not None and sd is not None and sm != sd:  # siblings of one level are independent
                bad.append((m, dep))
    assert not bad, f"imports against the layers: {bad}"


def test_kernels_and_twin_do_not_import_each_other(graph):
    mods = ("bandit_sim.sim.kernel", "bandit_sim.sim.batched", "bandit_sim.sim.reference")
    for a in mods:
        for b in mods:
            if a != b:
                assert not graph.chain_exists(importer=a, imported=b), f"{a} imports {b}"


def _function_level_project_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import):
                    names = [a.name for a in sub.names]
                elif isinstance(sub, ast.ImportFrom):
                    names = ["." * sub.level + (sub.module or "")]
                else:
                    continue
                for n in names:
                    if n.startswith(".") or n.split(".")[0] in PACKAGES:
                        found.append(f"{path.relative_to(ROOT)}:{sub.lineno} {n}")
    return found


def test_project_imports_at_the_top_of_each_file():
    files = [f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))]
    found = sorted({x for f in files for x in _function_level_project_imports(f)})
    assert not found, "project modules imported inside functions (move them to the top): " + ", ".join(found)


def test_lint_imports_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("lint-imports is not installed in this environment (dev extra)")
    r = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
