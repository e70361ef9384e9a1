"""Economic impact (bandit_sim/experiments/impact.py): the monthly projection against closed forms, and the
`impact` command end to end on a synthetic table where every call to model k costs exactly c_k."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bandit_sim.cli import main
from bandit_sim.data.catalog import clear_user_prices, user_prices
from bandit_sim.data.loaders import load_data
from bandit_sim.experiments.impact import parse_mix, project_monthly, read_prices, run_impact

COSTS = {"m-cheap": 0.001, "m-mid": 0.004, "m-premium": 0.02}  # USD per call, whatever the query


def test_projection_closed_form_with_shares():
    rng = np.random.default_rng(0)
    c = np.array(list(COSTS.values()))
    n, r = 300, 16
    arms = rng.integers(0, 3, (r, n))
    outcomes = {"always_premium": {"cost_usd": np.full((1, n), c[2]), "quality": np.ones((1, n))},
                "mixed": {"cost_usd": c[arms], "quality": (arms > 0).astype(float)}}
    p = project_monthly(outcomes, queries_per_day=100_000, days=30, n_boot=500, seed=1)
    share = np.bincount(arms.ravel(), minlength=3) / arms.size
    prem = p["routers"]["always_premium"]
    assert prem["monthly_cost_usd"]["estimate"] == pytest.approx(30 * 100_000 * c[2], rel=1e-12)
    assert prem["monthly_cost_usd"]["ci95"] == pytest.approx([30 * 100_000 * c[2]] * 2, rel=1e-12)
    m = p["routers"]["mixed"]
    assert m["monthly_cost_usd"]["estimate"] == pytest.approx(30 * 100_000 * (share * c).sum(), rel=1e-12)
    lo, hi = m["monthly_cost_usd"]["ci95"]
    assert lo < m["monthly_cost_usd"]["estimate"] < hi
    sv = m["vs_always_premium"]
    assert sv["savings_usd_per_month"]["estimate"] == pytest.approx(30 * 100_000 * (c[2] - (share * c).sum()))
    assert sv["savings_fraction"]["estimate"] == pytest.approx(1 - (share * c).sum() / c[2])
    assert m["quality"]["estimate"] == pytest.approx(share[1:].sum())


def test_projection_user_mix_and_break_even():
    n = 200
    cat = np.array(["a"] * 150 + ["b"] * 50)
    cost = np.where(cat == "a", 0.001, 0.01)[None, :]  # the router pays 0.001 on a, 0.01 on b
    outcomes = {"always_premium": {"cost_usd": np.full((1, n), 0.02), "quality": np.ones((1, n))},
                "router": {"cost_usd": cost, "quality": np.ones((1, n))}}
    p = project_monthly(outcomes, queries_per_day=1000, days=30, category=cat, mix=parse_mix("a=1,b=3"),
                        latency_s=0.002, compute_usd_per_hour=3.6, n_boot=200)
    per_q = 0.25 * 0.001 + 0.75 * 0.01
    r = p["routers"]["router"]
    assert r["monthly_cost_usd"]["estimate"] == pytest.approx(30_000 * per_q)
    s = r["vs_always_premium"]
    # break-even price: saving per query / latency, per hour
    assert s["break_even_compute_usd_per_hour"]["estimate"] == pytest.approx((0.02 - per_q) / 0.002 * 3600)
    over = 0.002 * 3.6 / 3600  # overhead per query at 3.6 USD/hour
    assert s["net_savings_usd_per_month"]["estimate"] == pytest.approx(30_000 * (0.02 - per_q - over))
    assert s["routing_pays"]
    with pytest.raises(ValueError, match="absent"):
        project_monthly(outcomes, queries_per_day=1, category=cat, mix={"zzz": 1.0})


def test_read_prices(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("model,input,output\nm-a,1.0,2.0\n")
    assert read_prices(f)["m-a"] == pytest.approx((1e-6, 2e-6))
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"m-b": [3, 4]}))
    assert read_prices(j)["m-b"] == pytest.approx((3e-6, 4e-6))
    # the prices file every command takes (a serve config's backends) works here too
    t = tmp_path / "p.toml"
    t.write_text('[[backends]]\nname = "m-c"\ninput_per_m = 5\noutput_per_m = 6\nbase_url = "http://x"\n')
    got = read_prices(t)
    assert list(got) == ["m-c"] and got["m-c"] == pytest.approx((5e-6, 6e-6))
    c = tmp_path / "q.csv"
    c.write_text("name,input_per_m,output_per_m\nm-d,0.5,1.5\n")
    assert read_prices(c)["m-d"] == pytest.approx((5e-7, 1.5e-6))
    js = tmp_path / "q.json"
    js.write_text(json.dumps({"backends": [{"name": "m-e", "input_per_m": 1, "output_per_m": 1}]}))
    assert read_prices(js)["m-e"] == pytest.approx((1e-6, 1e-6))
    bad = tmp_path / "bad.csv"
    bad.write_text("name,input_per_m,output_per_m\nm-f,-1,2\n")
    with pytest.raises(ValueError, match=r"entry 0 \('m-f'\): 'input_per_m' must be >= 0"):
        read_prices(bad)
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"m-g": [1]}))
    with pytest.raises(ValueError, match="two prices per model"):
        read_prices(short)
    with pytest.raises(ValueError, match="no such prices file"):
        read_prices(tmp_path / "absent.toml")


@pytest.fixture
def no_user_prices():
    """`--prices` registers prices for the process: forget them before and after the test."""
    clear_user_prices()
    yield
    clear_user_prices()


def test_impact_takes_prices_before_or_after_the_command(tmp_path, monkeypatch, no_user_prices):
    from bandit_sim import cli
    prices = tmp_path / "p.toml"
    prices.write_text('[[backends]]\nname = "m"\ninput_per_m = 1\noutput_per_m = 2\n')
    seen = []
    monkeypatch.setattr(cli, "run_impact", lambda data, out, **kw: seen.append(kw["prices"]) or {"routers": {}})
    base = ["impact", "--queries-per-day", "100", "--out", str(tmp_path / "o")]
    for argv in (base + ["--prices", str(prices)], ["--prices", str(prices)] + base, base):
        assert cli.main(argv) == 0
    assert seen == [str(prices), str(prices), None]


def test_impact_prices_file_prices_the_users_models_too(tmp_path, monkeypatch, no_user_prices):
    # a table of models the catalog does not know, without cost_usd: --prices must price them for impact as for
    # every other command (it used to fail with "no price is known ... give --prices" although --prices was given)
    from bandit_sim import cli
    table = tmp_path / "t.csv"
    pd.DataFrame({"prompt_id": ["a", "a", "b", "b"], "model": ["my-small", "my-large"] * 2,
                  "quality": [0.5, 1.0, 0.0, 1.0], "output_tokens": [10, 20, 30, 40],
                  "input_tokens": [5, 5, 7, 7]}).to_csv(table, index=False)
    prices = tmp_path / "p.csv"
    prices.write_text("name,input_per_m,output_per_m\nmy-small,0.1,0.2\nmy-large,3,6\n")
    costs = []
    monkeypatch.setattr(cli, "run_impact", lambda data, out, **kw: costs.append(load_data(data).table["cost_usd"])
                        or {"routers": {}})
    base = ["impact", "--data", str(table), "--queries-per-day", "100", "--out", str(tmp_path / "o")]
    assert cli.main(base + ["--prices", str(prices)]) == 0
    assert costs[0].tolist() == pytest.approx([5 * 0.1e-6 + 10 * 0.2e-6, 5 * 3e-6 + 20 * 6e-6,
                                               7 * 0.1e-6 + 30 * 0.2e-6, 7 * 3e-6 + 40 * 6e-6])
    # the short form (model,input,output) is impact's own: not registered, read by run_impact as before
    clear_user_prices()
    short = tmp_path / "short.csv"
    short.write_text("model,input,output\nmy-small,0.1,0.2\n")
    seen = []
    monkeypatch.setattr(cli, "run_impact", lambda data, out, **kw: seen.append(kw["prices"]) or {"routers": {}})
    assert cli.main(base + ["--prices", str(short)]) == 0
    assert seen == [str(short)] and user_prices() == {}


def test_run_impact_checks_routers_before_preparing(tmp_path):
    # an unknown router is named at once, not after loading the data and fitting (no such dataset here either)
    with pytest.raises(ValueError, match=r"unknown routers \['bogus'\]"):
        run_impact("no-such-dataset", tmp_path / "o", queries_per_day=10, routers=["cheapest", "bogus"])
    assert not (tmp_path / "o").exists()


def _constant_cost_table(n_prompts: int = 150, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_prompts):
        cat = "x" if i % 3 else "y"
        for j, (m, c) in enumerate(COSTS.items()):
            rows.append({"prompt_id": f"q{i}", "model": m, "family": f"F{j}", "category": cat,
                         "quality": float(rng.uniform() < 0.4 + 0.2 * j), "output_tokens": 10 * (j + 1),
                         "input_tokens": 20, "cost_usd": c, "prompt": f"question {i}", "order": i})
    return pd.DataFrame(rows)


def test_impact_command_on_a_world_with_known_costs(tmp_path):
    path = tmp_path / "world.csv"
    _constant_cost_table().to_csv(path, index=False)
    out = tmp_path / "impact"
    rc = main(["impact", "--data", str(path), "--queries-per-day", "1000", "--out", str(out), "--tokens", "standin",
               "--latency-ms", "0.5", "--quick", "--routers", "always_premium,cheapest,random"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "Made by `bandit-sim " in (out / "report.md").read_text()
    assert (out / "monthly_cost.png").exists()
    r = m["routers"]
    models = m["models"]
    c = np.array([COSTS[x] for x in models])
    assert m["premium_model"] == "m-premium"
    assert r["always_premium"]["monthly_cost_usd"]["estimate"] == pytest.approx(30 * 1000 * 0.02, rel=1e-5)
    assert r["cheapest"]["monthly_cost_usd"]["estimate"] == pytest.approx(30 * 1000 * 0.001, rel=1e-5)
    for k in ("always_premium", "cheapest", "random"):  # monthly = 30 x volume x sum_k share_k c_k
        share = np.array([r[k]["utilization"][x] for x in models])
        assert r[k]["monthly_cost_usd"]["estimate"] == pytest.approx(30 * 1000 * (share * c).sum(), rel=1e-5)
    assert r["cheapest"]["vs_always_premium"]["savings_fraction"]["estimate"] == pytest.approx(1 - 0.001 / 0.02,
                                                                                             rel=1e-5)
    assert r["random"]["vs_always_premium"]["break_even_compute_usd_per_hour"]["estimate"] > 0


def test_impact_with_a_registered_prices_file_says_so(tmp_path, no_user_prices):
    path = tmp_path / "world.csv"
    _constant_cost_table().to_csv(path, index=False)
    prices = tmp_path / "p.toml"
    prices.write_text("".join(f'[[backends]]\nname = "{m}"\ninput_per_m = 1\noutput_per_m = {1000 * c}\n'
                              for m, c in COSTS.items()))
    out = tmp_path / "impact"
    assert main(["impact", "--data", str(path), "--queries-per-day", "1000", "--out", str(out), "--tokens", "standin",
                 "--latency-ms", "0.5", "--quick", "--routers", "always_premium,cheapest", "--prices", str(prices)]) == 0
    notes = json.loads((out / "metrics.json").read_text())["notes"]
    assert any(f"routers chose with the registered user prices" in n and str(prices) in n for n in notes)


def test_families_command_quick(tmp_path):
    out = tmp_path / "families"
    assert main(["families", "--data", "arenabench", "--out", str(out), "--quick"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    block = m["datasets"]["arenabench"]["outcomes"]
    assert set(block) == {"log_tokens", "quality"}
    for r in block.values():
        for est in ("bayes", "anova"):
            for k in ("icc_family", "share_prompt", "share_residual", "family_beyond_prompt"):
                lo, hi = r[est][k]["ci95"]
                assert 0.0 <= lo <= hi <= 1.0
        shares = sum(r["anova"][f"share_{c}"]["estimate"] for c in ("family", "model", "prompt", "prompt_family",
                                                                    "residual"))
        assert shares == pytest.approx(1.0)
        assert isinstance(r["family_icc_agreement"]["intervals_overlap"], bool)
    assert (out / "arenabench.png").exists() and "Made by `bandit-sim " in (out / "report.md").read_text()


def test_premium_reference_is_the_metrics_modules_not_the_most_expensive_model(tmp_path):
    """The most expensive model is not the best: always-premium (the reference of retention, cost reduction and the
    savings) is the metrics module's premium model (best training quality) in prepare, select_lambda and impact, not
    the kernel policy's argmax of predicted cost; best single is metrics.best_fixed_model."""
    from bandit_sim.experiments import metrics as M
    from bandit_sim.experiments.protocol import prepare, select_lambda

    costs = {"m-cheap": 0.001, "m-best": 0.004, "m-pricey": 0.02}
    p_good = {"m-cheap": 0.6, "m-best": 0.9, "m-pricey": 0.5}
    rng = np.random.default_rng(0)
    rows = [{"prompt_id": f"q{i}", "model": m, "family": f"F{j}", "category": "x" if i % 3 else "y",
             "quality": float(rng.uniform() < p_good[m]), "output_tokens": 10 * (j + 1), "input_tokens": 20,
             "cost_usd": c, "prompt": f"question {i}", "order": i}
            for i in range(150) for j, (m, c) in enumerate(costs.items())]
    path = tmp_path / "world.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    rd = load_data(str(path))
    setup = prepare(rd, tokens="standin")
    models = list(setup.models)
    g = rd.split("train").groupby("model")
    truth = M.premium_model(g["quality"].mean().reindex(models).to_numpy(), g["cost_usd"].mean().reindex(models).to_numpy())
    kernel_premium = int(np.argmax(np.asarray(setup.worlds["val"].pred_cost).mean(0)))
    assert models[truth] == "m-best" and models[kernel_premium] == "m-pricey"  # the two definitions disagree here
    assert setup.premium == truth and (setup.premium_arms("val") == truth).all()
    # select_lambda's reference: the cheapest router saves 1 - 0.001 / 0.004 against m-best (not 1 - 0.001 / 0.02)
    sel = select_lambda(setup.worlds["val"], setup.infos["val"], "cheapest", episodes=2, seed=0, gam=0.0,
                        target_retention=0.0, premium_arms=setup.premium_arms("val"), lambdas=np.array([0.0, 1.0]))
    assert sel["cost_reduction"] == pytest.approx(1 - 0.001 / 0.004, rel=1e-5)
    q_val = np.asarray(setup.worlds["val"].quality, np.float64)
    assert sel["retention"] == pytest.approx(q_val[:, models.index("m-cheap")].mean() / q_val[:, truth].mean(), rel=1e-5)
    # impact: the premium model, its cost, and best single from the metrics module
    m = run_impact(str(path), tmp_path / "impact", queries_per_day=1000, tokens="standin", quick=True, latency_ms=0.5,
                   routers=["always_premium", "best_single", "cheapest"])
    assert m["premium_model"] == "m-best"
    assert m["routers"]["always_premium"]["monthly_cost_usd"]["estimate"] == pytest.approx(30 * 1000 * 0.004, rel=1e-5)
    wt = setup.worlds["test"]
    best = M.best_fixed_model(np.asarray(wt.quality), np.asarray(wt.cost), 0.3)  # no tuned router: lambda 0.3
    assert m["best_single_model"] == models[best]


def test_a_prices_file_missing_a_model_is_refused_before_the_preparation(tmp_path, monkeypatch):
    # the prices file must price every model of the test split; that is checked right after the data loads, not
    # after the token-model fit and the draws (minutes on a real dataset)
    from bandit_sim.experiments import impact

    def no_prepare(*a, **kw):
        raise AssertionError("prepare reached")

    monkeypatch.setattr(impact, "prepare", no_prepare)
    prices = tmp_path / "p.csv"
    prices.write_text("model,input,output\nfam0-m0,1,2\n")
    with pytest.raises(ValueError, match=r"has no price for \['fam0-m1'.*it prices \['fam0-m0'\]"):
        run_impact("synthetic", tmp_path / "o", queries_per_day=100, prices=prices, quick=True)
