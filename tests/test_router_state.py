"""Router persistence: save -> load -> continue equals an uninterrupted run; corrupt files rejected; v0 migrates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bandit_sim.data.loaders import load_data
from bandit_sim.router.router import Query, Router
from bandit_sim.router.state import RouterStateError, read_state, write_state
from bandit_sim.router.tokens import StandInTokens


@pytest.fixture(scope="module")
def rd():
    return load_data("routerbench")


def _quality(model: str, i: int) -> float:
    """A deterministic feedback rule (depends on model and step)."""
    return float((len(model) * 7 + i * 3) % 5 < 2)


def _run(router: Router, start: int, n: int, *, leave_pending: bool = False) -> list[str]:
    out = []
    for i in range(start, start + n):
        d = router.route(Query(f"query {i}: " + "word " * (i % 13), input_tokens=5 + i % 40))
        out.append(d.model)
        if not (leave_pending and i == start + n - 1):
            router.observe(d, _quality(d.model, i), 10 + i % 50)
    return out


def test_save_load_continue_equals_uninterrupted(rd, tmp_path):
    full = Router.from_data(rd, seed=7)
    ref = _run(full, 0, 80)
    a = Router.from_data(rd, seed=7)
    first = _run(a, 0, 40, leave_pending=True)
    path = a.save(tmp_path / "router.npz")
    b = Router.load(path)
    assert b.step == 40 and list(b.pending) == ["d39"]
    b.observe("d39", _quality(first[-1], 39), 10 + 39 % 50)
    rest = _run(b, 40, 40)
    assert first + rest == ref
    assert b.summary() == full.summary()
    np.testing.assert_array_equal(np.asarray(b.pstate.s), np.asarray(full.pstate.s))


def test_save_kill_load_in_new_process(rd, tmp_path):
    """The state file is all a fresh process needs."""
    full = Router.from_data(rd, seed=11)
    ref = _run(full, 0, 30)
    a = Router.from_data(rd, seed=11)
    _run(a, 0, 15)
    path = a.save(tmp_path / "r.npz")
    del a
    code = (
        "import json, sys\n"
        "from bandit_sim.router.router import Router\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_router_state import _run\n"
        f"r = Router.load({str(path)!r})\n"
        "print(json.dumps(_run(r, 15, 15)))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ref[15:]


def test_add_remove_survive_save(rd, tmp_path):
    r = Router.from_data(rd, seed=2)
    _run(r, 0, 20)
    r.add_model("gpt-4o", "OpenAI", (2.5e-6, 1e-5))
    r.remove_model("claude-v1")
    _run(r, 20, 10)
    r2 = Router.load(r.save(tmp_path / "s"))  # ".npz" appended
    assert r2.models == r.models and r2.prices("gpt-4o") == (2.5e-6, 1e-5)
    assert r2.posterior() == r.posterior()
    assert _run(r2, 30, 20) == _run(r, 30, 20)


def test_truncated_or_corrupt_file_rejected_old_still_loads(rd, tmp_path):
    r = Router.from_data(rd, seed=0)
    _run(r, 0, 10)
    good = r.save(tmp_path / "router.npz")
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RouterStateError, match="truncated or corrupt|not a readable"):
        Router.load(trunc)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(RouterStateError):
        Router.load(empty)
    with pytest.raises(RouterStateError, match="no such"):
        Router.load(tmp_path / "missing.npz")
    # a flipped byte inside an array: caught by the checksum (or by the zip CRC)
    arrays, meta = read_state(good)
    arrays["stats"] = arrays["stats"].copy()
    arrays["stats"][0, 0] += 1
    bad = tmp_path / "bad.npz"
    import zipfile

    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "stats.npy":
                buf = __import__("io").BytesIO()
                np.save(buf, arrays["stats"])
                data = buf.getvalue()
            zout.writestr(item, data)
    with pytest.raises(RouterStateError, match="checksum mismatch for array 'stats'"):
        Router.load(bad)
    # the good file still loads and continues
    assert Router.load(good).step == 10


def test_failed_save_keeps_previous_file(rd, tmp_path, monkeypatch):
    r = Router.from_data(rd, seed=0)
    _run(r, 0, 5)
    path = r.save(tmp_path / "router.npz")
    before = path.read_bytes()
    _run(r, 5, 5)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        r.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert Router.load(path).step == 5
    assert [p.name for p in tmp_path.iterdir()] == ["router.npz"]  # no temp file left


def _v0_file(path: Path, rd) -> tuple[Path, dict]:
    models = ["claude-v2", "gpt-4-1106-preview", "mistralai/mistral-7b-chat"]
    prior_a = np.array([1.0, 2.0, 1.0])
    prior_b = np.array([1.0, 1.0, 3.0])
    n = np.array([10, 4, 0])
    s = np.array([7.0, 3.5, 0.0])
    arrays = dict(alpha=prior_a + s, beta=prior_b + n - s, prior_alpha=prior_a, prior_beta=prior_b,
                  prices=np.array([[8e-6, 2.4e-5], [1e-5, 3e-5], [2e-7, 2e-7]]))
    meta = dict(format="bandit-sim-router", version=0, models=models, families=["Anthropic", "OpenAI", "Mistral"],
                cost_scale=0.004, lam=0.3, gam=0.25, seed=4, step=14)
    out = dict(arrays)
    out["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **out)
    return path, dict(n=n, s=s, prior_a=prior_a, prior_b=prior_b, models=models)


def test_v0_file_migrates(rd, tmp_path):
    path, truth = _v0_file(tmp_path / "v0.npz", rd)
    with pytest.raises(RouterStateError, match="version 0 state has no token model"):
        Router.load(path)
    r = Router.load(path, tokens=StandInTokens.from_table(rd.table))
    assert r.models == truth["models"] and r.step == 14 and r.capacity == 64
    post = r.posterior()
    for i, m in enumerate(truth["models"]):
        assert post[m] == pytest.approx((truth["prior_a"][i] + truth["s"][i],
                                         truth["prior_b"][i] + truth["n"][i] - truth["s"][i]))
    assert r.summary()["observed"] == 14
    d = r.route("continues after migration")
    assert d.step == 14 and d.model in truth["models"]
    # once saved again it is a current-version file
    again = Router.load(r.save(tmp_path / "v1.npz"))
    assert again.posterior() == r.posterior()
    assert read_state(tmp_path / "v1.npz")[1]["version"] == 1


def test_unknown_versions_refused(rd, tmp_path):
    r = Router.from_data(rd, seed=0)
    arrays, meta = read_state(r.save(tmp_path / "ok.npz"))
    meta.pop("sha256")
    write_state(tmp_path / "future.npz", arrays, dict(meta, version=99))
    with pytest.raises(RouterStateError, match="newer bandit-sim.*v99"):
        Router.load(tmp_path / "future.npz")
    write_state(tmp_path / "weird.npz", arrays, dict(meta, version="one"))
    with pytest.raises(RouterStateError, match="version 'one'"):
        Router.load(tmp_path / "weird.npz")
    write_state(tmp_path / "other.npz", arrays, dict(meta, format="something-else"))
    with pytest.raises(RouterStateError, match="format 'something-else'"):
        Router.load(tmp_path / "other.npz")


def test_a_path_without_npz_is_read_where_it_was_written(tmp_path):
    stats = {"gpt-4o-2024-05-13": [300, 100, 100, 500], "claude-3-haiku-20240307": [200, 80, 80, 400]}
    r = Router(StandInTokens(stats, {m: m.split("-")[0] for m in stats}), list(stats), cost_scale=0.01)
    r.observe(r.route("hello"), 1.0, 5)
    written = r.save(tmp_path / "x")
    assert written == tmp_path / "x.npz"
    r2 = Router.load(tmp_path / "x")  # the same name as given to save
    assert r2.posterior() == r.posterior() and r2.step == r.step
    assert Router.load(str(tmp_path / "x")).step == r.step
    (tmp_path / "y.bin").write_bytes(b"not read")
    with pytest.raises(RouterStateError, match=r"y\.bin\.npz: no such router state file.*end in \.npz"):
        Router.load(tmp_path / "y.bin")


def test_bad_metadata_fields_and_npy_files_are_named(tmp_path):
    stats = {"gpt-4o-2024-05-13": [300, 100, 100, 500], "claude-3-haiku-20240307": [200, 80, 80, 400]}
    r = Router(StandInTokens(stats, {m: m.split("-")[0] for m in stats}), list(stats), cost_scale=0.01)
    r.route(Query("hello", input_tokens=3, query_id="q1"))
    arrays, meta = read_state(r.save(tmp_path / "ok.npz"))
    meta.pop("sha256")
    cases = [("capacity", "abc"), ("capacity", 0), ("chunk", 0), ("step", "x"), ("step", -1), ("cost_scale", -5),
             ("cost_scale", "1"), ("family_strength", None), ("policy", "ucb1"), ("slots", None),
             ("pending", [1]), ("pending", {"d0": {"slot": 0}}), ("options", "x"), ("model_family", {}),
             ("family_names", [1])]
    for key, value in cases:
        path = write_state(tmp_path / f"m_{key}.npz", arrays, dict(meta, **{key: value}))
        with pytest.raises(RouterStateError, match=rf"m_{key}\.npz: metadata field '{key}' must be"):
            Router.load(path)
    slot = next(iter(meta["pending"].values()))["slot"]
    moved = {k: dict(v, slot=slot + 1) for k, v in meta["pending"].items()}  # a pending decision on another slot
    with pytest.raises(RouterStateError, match="'pending': decision 'd0' names slot"):
        Router.load(write_state(tmp_path / "moved.npz", arrays, dict(meta, pending=moved)))
    with pytest.raises(RouterStateError, match="version True"):
        Router.load(write_state(tmp_path / "v.npz", arrays, dict(meta, version=True)))
    np.save(tmp_path / "a.npy", np.arange(3))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")  # an .npy file under an .npz name
    with pytest.raises(RouterStateError, match=r"a\.npz: not a router state file: it holds a single array"):
        Router.load(tmp_path / "a.npz")
    assert Router.load(tmp_path / "ok.npz").pending == r.pending  # the untouched file still loads


def test_metadata_that_is_not_json_is_refused_naming_its_key(tmp_path):
    from hierarchical.storage import read_checked_npz, write_checked_npz
    with pytest.raises(TypeError, match=r"metadata key 'a\.b\[1\]' cannot be saved as JSON"):
        write_checked_npz(tmp_path / "m.npz", {"x": np.zeros(2)}, {"a": {"b": [1, object()]}})
    assert not (tmp_path / "m.npz").exists()  # nothing written
    path = write_checked_npz(tmp_path / "ok.npz", {"x": np.zeros(2)},
                             {"flag": np.bool_(True), "n": np.int64(3), "v": np.arange(2)})
    assert read_checked_npz(path)[1] | {"sha256": None} == {"flag": True, "n": 3, "v": [0, 1], "sha256": None}
    stats = {"gpt-4o-2024-05-13": [300, 100, 100, 500], "claude-3-haiku-20240307": [200, 80, 80, 400]}
    r = Router(StandInTokens(stats, {m: m.split("-")[0] for m in stats}), list(stats), cost_scale=0.01)
    with pytest.raises(TypeError, match="metadata key 'extra.when'"):
        r.save(tmp_path / "r.npz", extra={"when": object()})  # it used to be saved as "<object object at 0x...>"


def test_stand_in_tokens_name_a_model_without_family_or_with_bad_statistics(tmp_path):
    stats = {"gpt-4o-2024-05-13": [300, 100, 100, 500], "claude-3-haiku-20240307": [200, 80, 80, 400]}
    with pytest.raises(ValueError, match=r"no family given for models \['claude-3-haiku-20240307'\]"):
        StandInTokens(stats, {"gpt-4o-2024-05-13": "gpt"})  # used to fail only at save, with a bare KeyError
    for bad in ([300, float("nan"), 100, 500], [300, 100, 100], [-1, 100, 100, 500]):
        with pytest.raises(ValueError, match="'gpt-4o-2024-05-13': token statistics must be 4 finite"):
            StandInTokens({"gpt-4o-2024-05-13": bad}, {"gpt-4o-2024-05-13": "gpt"})
    tok = StandInTokens(stats, {m: m.split("-")[0] for m in stats})
    arrays, meta = tok.to_state()
    back = StandInTokens.from_state(arrays, meta)
    assert back.families == tok.families and all(np.array_equal(back.stats[m], tok.stats[m]) for m in stats)
    with pytest.raises(ValueError, match="1 families for 2 models"):
        StandInTokens.from_state(arrays, dict(meta, families=meta["families"][:1]))
