"""`bandit-sim` argument checks: a bad value exits 2 with a message naming the option, before any work runs."""

from __future__ import annotations

import pytest

from bandit_sim import cli


class Reached(Exception):
    """Raised by the stubs: the command got through its checks to the heavy function."""


@pytest.fixture
def no_work(monkeypatch):
    """Every heavy command replaced by a stub recording that it was reached (and stopping there)."""
    reached = []

    def stub(name):
        def f(*a, **kw):
            reached.append(name)
            raise Reached(name)
        return f

    for name in ("run_coldstart", "run_impact", "run_token_eval"):
        monkeypatch.setattr(cli, name, stub(name))
    return reached


BAD = [
    (["tokens", "--batch-size", "-5"], "--batch-size must be >= 0"),
    (["tokens", "--steps", "0"], "--steps must be >= 1"),
    (["tokens", "--n-seeds", "0"], "--n-seeds must be >= 1"),
    (["coldstart", "--lam", "nan"], "--lam must be a finite number"),
    (["coldstart", "--gamma", "inf"], "--gamma must be a finite number"),
    (["coldstart", "--lam", "-1"], "--lam must be a finite number >= 0"),
    (["impact", "--queries-per-day", "100", "--days", "inf"], "--days must be a finite number > 0"),
    (["impact", "--queries-per-day", "nan"], "--queries-per-day must be a finite number > 0"),
    (["impact", "--queries-per-day", "100", "--latency-ms", "-5"], "--latency-ms must be a finite number >= 0"),
    (["impact", "--queries-per-day", "100", "--compute-usd-per-hour", "nan"], "--compute-usd-per-hour must be"),
    (["impact", "--queries-per-day", "100", "--mix", "code=nan"], "--mix: the share of 'code' must be finite"),
    (["impact", "--queries-per-day", "100", "--mix", "code=x"], "--mix: the share of 'code' must be a number"),
    (["impact", "--queries-per-day", "100", "--routers", "bogus"], "--routers: unknown routers ['bogus']"),
]


@pytest.mark.parametrize("argv,words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_option_values_exit_2_naming_the_option(argv, words, tmp_path, capsys, no_work):
    assert cli.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert no_work == []  # refused before the command ran


def test_good_values_still_reach_the_command(tmp_path, no_work):
    out = ["--out", str(tmp_path / "o")]
    for argv in (["tokens", "--batch-size", "0", "--steps", "1"],
                 ["coldstart", "--lam", "0", "--gamma", "0.5"],
                 ["impact", "--queries-per-day", "100", "--days", "30", "--latency-ms", "0", "--mix", "code=1,math=2",
                  "--routers", "cheapest"]):
        with pytest.raises(Reached):
            cli.main(argv + out)
    assert no_work == ["run_token_eval", "run_coldstart", "run_impact"]


def test_out_under_a_file_exits_2_naming_the_path(tmp_path, capsys, no_work):
    f = tmp_path / "afile"
    f.write_text("x")
    for out in (f, f / "sub"):
        assert cli.main(["coldstart", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{f} is a file, not a folder" in err and "--out" in err and "Traceback" not in err
    assert no_work == []


def test_an_os_error_while_writing_exits_2_naming_the_path(tmp_path, capsys, monkeypatch):
    def fails(*a, **kw):
        raise NotADirectoryError(20, "Not a directory", str(tmp_path / "x" / "report.md"))

    monkeypatch.setattr(cli, "run_coldstart", fails)
    assert cli.main(["coldstart", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Not a directory" in err and str(tmp_path / "x" / "report.md") in err


def test_unknown_premium_model_exits_2_before_any_fold_work(tmp_path, capsys, monkeypatch):
    from bandit_sim.experiments import compare

    reached = []

    def stub(*a, **kw):
        reached.append("fold work")
        raise Reached("fold work")

    monkeypatch.setattr(compare, "make_folds", stub)
    monkeypatch.setattr(compare, "prepare_fold", stub)
    assert cli.main(["compare", "--data", "synthetic", "--premium", "no-such-model", "--quick",
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown premium model 'no-such-model'" in err and "Traceback" not in err
    assert "known models: fam0-m0, fam0-m1" in err  # the dataset's models are listed
    assert reached == []
    with pytest.raises(Reached):  # a model of the dataset gets through to the folds
        cli.main(["compare", "--data", "synthetic", "--premium", "fam0-m1", "--quick", "--out", str(tmp_path / "o")])
