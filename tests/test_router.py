"""The live router: same decisions as the simulator, no recompilation, models come and go, bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bandit_sim.sim.episode import chunk_length, episode_keys, episode_order
from bandit_sim.sim.simulate import simulate
from bandit_sim.data.loaders import load_data
from bandit_sim.sim.policies import default_hyper
from bandit_sim.router.router import TRACE_COUNT, Decision, Query, Router, RouterInputError
from bandit_sim.router.tokens import StandInTokens
from bandit_sim.sim.world import World, world_from_table


@pytest.fixture(scope="module")
def rd():
    return load_data("routerbench")


@pytest.fixture(scope="module")
def small(rd):
    """RouterBench's training rows plus 60 test prompts: a small world and its tidy rows."""
    t = rd.table
    keep = t[t["split"] == "test"]["prompt_id"].drop_duplicates().iloc[:60]
    table = t[(t["split"] == "train") | t["prompt_id"].isin(keep)]
    n = len(keep)
    world, info = world_from_table(table, "test", features=np.zeros((n, 1), np.float32))
    return table, world, info


def _replay(router, table, info, order, *, batch_every=None):
    """Route the world's queries in `order`, observing each from the table; returns chosen model indices."""
    test = table[table["split"] == "test"]
    by = test.set_index(["prompt_id", "model"])
    prompts = test.drop_duplicates("prompt_id").set_index("prompt_id")
    arms = []
    for r in order:
        pid = info.prompt_ids[int(r)]
        p = prompts.loc[pid]
        d = router.route(Query(p["prompt"], input_tokens=int(p["input_tokens"])))
        row = by.loc[(pid, d.model)]
        router.observe(d, quality=float(row["quality"]), output_tokens=int(row["output_tokens"]),
                       cost=float(row["cost_usd"]))
        arms.append(info.models.index(d.model))
    return np.array(arms)


def _pad_world(w: World, cap: int) -> World:
    """The same world with cap - K extra arms that are never available (mask False)."""
    n, k = w.quality.shape
    pad2 = lambda a, v=0: np.concatenate([a, np.full((n, cap - k), v, a.dtype)], 1)  # noqa: E731
    pad1 = lambda a, v=0: np.concatenate([a, np.full((cap - k,) + a.shape[1:], v, a.dtype)], 0)  # noqa: E731
    return World(quality=pad2(w.quality), out_tokens=pad2(w.out_tokens), cost=pad2(w.cost),
                 pred_cost=pad2(w.pred_cost), pred_unc=pad2(w.pred_unc), features=w.features,
                 category=w.category, family=pad1(w.family, 99), arrival_step=pad1(w.arrival_step),
                 mask=pad2(w.mask, False), prices=pad1(w.prices), x=w.x)


@pytest.mark.parametrize("cap_extra", [pytest.param(0, marks=pytest.mark.slow), 5])
def test_router_replays_simulator_episode(rd, small, cap_extra):
    table, world, info = small
    steps, seed = 150, 3
    k = len(info.models)
    sim_world = world if cap_extra == 0 else _pad_world(world, k + cap_extra)
    m, traj = simulate(sim_world, jax.random.key(seed), default_hyper(k + cap_extra), steps=steps,
                       trajectories=True)
    router = Router.from_data(rd, tokens=StandInTokens.from_table(rd.table), models=list(info.models),
                              cost_scale=info.cost_scale, capacity=k + cap_extra, chunk=chunk_length(steps, 32),
                              seed=seed)
    assert router.models == list(info.models)
    with jax.threefry_partitionable(False):
        order = np.asarray(episode_order(episode_keys(jax.random.key(seed)).order, world.quality.shape[0], steps))
    np.testing.assert_array_equal(order, np.asarray(traj.query[0]))
    arms = _replay(router, table, info, order)
    np.testing.assert_array_equal(arms, np.asarray(traj.arm[0]))
    s = router.summary()
    assert s["total_quality"] == float(m.quality[0])
    np.testing.assert_allclose(s["total_cost_usd"] / router.cost_scale, float(m.cost[0]), rtol=1e-5)
    np.testing.assert_array_equal(np.bincount(arms, minlength=k + cap_extra), np.asarray(m.choices[0]))


def test_cost_scale_matches_world(rd):
    r = Router.from_data(rd)
    full_world_scale = world_from_table(rd.table, "test", features=np.zeros(
        (rd.table[rd.table["split"] == "test"]["prompt_id"].nunique(), 1), np.float32))[1].cost_scale
    assert r.cost_scale == full_world_scale


def test_no_recompile_across_calls_and_model_changes(rd):
    r = Router.from_data(rd, seed=1)
    d = r.route("warm up")
    r.observe(d, 1.0, 3)
    r.route_batch(["a", "b", "c"])  # bucket 4
    before = dict(TRACE_COUNT)
    for i in range(5):
        d = r.route(Query(f"query {i} " * (i + 1), input_tokens=10 * i))
        r.observe(d, float(i % 2), 7 * i)
    r.add_model("gpt-4o-mini", "OpenAI", (1.5e-7, 6e-7))
    r.remove_model("claude-v1")
    for q in ("x", "y"):
        r.observe(r.route(q), 0.5, 2)
    r.route_batch(["p", "q", "r", "s"])  # same bucket 4
    assert TRACE_COUNT == before


def test_route_batch_is_vectorised_steps(rd):
    """A batch gives steps t..t+B-1 from one posterior: equal to routing them one by one without feedback."""
    qs = [Query(f"prompt number {i}", input_tokens=20 + i) for i in range(7)]
    a = Router.from_data(rd, seed=5)
    b = Router.from_data(rd, seed=5)
    batch = a.route_batch(qs)
    single = [b.route(q) for q in qs]
    assert [d.model for d in batch] == [d.model for d in single]
    assert [d.step for d in batch] == list(range(7))
    for x, y in zip(batch, single):
        assert x.pi.keys() == y.pi.keys()
        np.testing.assert_allclose(list(x.pi.values()), list(y.pi.values()), rtol=1e-6)
        np.testing.assert_allclose(list(x.utilities.values()), list(y.utilities.values()), rtol=1e-6, atol=1e-7)


def test_decision_contents(rd):
    r = Router.from_data(rd, seed=0)
    d = r.route(Query("Explain quicksort.", input_tokens=5, query_id="q-1"))
    assert isinstance(d, Decision) and d.model in r.models and d.query_id == "q-1"
    assert set(d.utilities) == set(r.models) == set(d.pi)
    assert all(0.0 <= p <= 1.0 for p in d.pi.values())
    lo, hi = d.tokens_interval
    assert 0 <= lo <= d.tokens_mean <= hi
    p_in, p_out = r.prices(d.model)
    assert d.cost_usd == pytest.approx(5 * p_in + d.tokens_mean * p_out)
    lam, gam = float(r.hyper.lam), float(r.hyper.gam)
    u = d.pi[d.model] - lam * d.cost_usd / r.cost_scale - gam * d.tokens_sd * p_out / r.cost_scale
    assert d.utilities[d.model] == pytest.approx(u, rel=1e-5, abs=1e-6)
    if not d.explored:
        assert d.model == max(d.utilities, key=d.utilities.get)
    r.observe("q-1", 1.0, 12)  # by query id
    assert r.summary()["observed"] == 1


def test_learning_moves_posterior_and_choices(rd):
    """A model that always answers well and a bad one: the router ends up preferring the good one."""
    r = Router.from_data(rd, seed=0, lam=0.0, gam=0.0, models=["claude-v2", "mistralai/mistral-7b-chat"])
    good = "mistralai/mistral-7b-chat"
    picks = []
    for i in range(300):
        d = r.route(Query(f"q{i}", input_tokens=10))
        r.observe(d, 1.0 if d.model == good else 0.0, 5)
        picks.append(d.model == good)
    assert np.mean(picks[-100:]) > 0.9
    a, b = r.posterior()[good]
    assert a / (a + b) > 0.95


def test_add_model_family_prior_and_remove(rd):
    r = Router.from_data(rd, seed=0, models=["gpt-3.5-turbo-1106", "gpt-4-1106-preview", "claude-v2"])
    for i in range(60):  # OpenAI models answer well, claude badly
        d = r.route(Query(f"q{i}", input_tokens=10))
        r.observe(d, 1.0 if d.model.startswith("gpt") else 0.0, 5)
    post = r.posterior()
    r.add_model("gpt-4o", "OpenAI", (2.5e-6, 1e-5))
    a, b = r.posterior()["gpt-4o"]
    ev = [post[m][0] + post[m][1] - 2 for m in ("gpt-3.5-turbo-1106", "gpt-4-1106-preview")]
    assert a + b - 2 == pytest.approx(min(20.0, sum(ev)), rel=1e-6)
    assert a / (a + b) > 0.8  # the family did well
    a2, b2 = r.family_prior("NewLab")
    assert (a2, b2) == (1.0, 1.0)  # no relatives: flat
    # token prior from the family: the stand-in's family mean
    fam_stats = np.mean([r.tokens.stats[m] for m in ("gpt-3.5-turbo-1106", "gpt-4-1106-preview")], 0)
    np.testing.assert_allclose(r.tokens.stats["gpt-4o"], fam_stats)
    assert r.prices("gpt-4o") == (2.5e-6, 1e-5)
    seen = {r.route(f"z{i}").model for i in range(80)}
    assert "gpt-4o" in seen
    pend = r.route("to be orphaned")
    r.remove_model(pend.model)
    assert pend.model not in r.models
    with pytest.raises(RouterInputError, match="already observed|removed"):
        r.observe(pend, 1.0, 3)
    assert all(r.route(f"after {i}").model != pend.model for i in range(30))


def _snapshot(r: Router):
    return (r.step, dict(r.pending), r.stats.copy(), r.totals.copy(),
            [np.asarray(x).copy() for x in r.pstate], list(r.slots))


def _same(s1, s2):
    assert s1[0] == s2[0] and s1[1] == s2[1] and s1[5] == s2[5]
    np.testing.assert_array_equal(s1[2], s2[2])
    np.testing.assert_array_equal(s1[3], s2[3])
    for x, y in zip(s1[4], s2[4]):
        np.testing.assert_array_equal(x, y)


def test_bad_input_raises_and_keeps_state(rd):
    r = Router.from_data(rd, seed=0)
    d = r.route(Query("hello", input_tokens=3, query_id="abc"))
    snap = _snapshot(r)
    bad = [
        (lambda: r.observe(d, 1.5, 3), "quality must lie in"),
        (lambda: r.observe(d, -0.1, 3), "quality must lie in"),
        (lambda: r.observe(d, float("nan"), 3), "finite"),
        (lambda: r.observe(d, 1.0, -1), "output_tokens"),
        (lambda: r.observe(d, 1.0, 2.5), "output_tokens"),
        (lambda: r.observe(d, 1.0, 3, cost=-1.0), "cost"),
        (lambda: r.observe("d999", 1.0, 3), "no decision"),
        (lambda: r.observe("nope", 1.0, 3), "no decision"),
        (lambda: r.route(""), "no text"),
        (lambda: r.route("   "), "no text"),
        (lambda: r.route_batch(["fine", ""]), "query 1: no text"),
        (lambda: r.route(Query("x", input_tokens=-3)), "input_tokens"),
        (lambda: r.route(Query("x", query_id="abc")), "already has a pending"),
        (lambda: r.remove_model("no-such-model"), "unknown model"),
        (lambda: r.add_model("claude-v2"), "already routed"),
        (lambda: r.add_model("new-x", "Lab", (-1.0, 2.0)), "prices"),
    ]
    for fn, msg in bad:
        with pytest.raises(RouterInputError, match=msg):
            fn()
        _same(snap, _snapshot(r))
    r.observe(d, 1.0, 3)
    snap = _snapshot(r)
    with pytest.raises(RouterInputError, match="already observed"):
        r.observe(d, 1.0, 3)
    _same(snap, _snapshot(r))


def test_capacity_full(rd):
    r = Router.from_data(rd, models=["claude-v2", "claude-v1"], capacity=2)
    with pytest.raises(RouterInputError, match="capacity 2"):
        r.add_model("claude-3-haiku", "Anthropic", (2.5e-7, 1.25e-6))
    r.remove_model("claude-v1")
    r.add_model("claude-3-haiku", "Anthropic", (2.5e-7, 1.25e-6))
    assert r.models == ["claude-v2", "claude-3-haiku"] or set(r.models) == {"claude-v2", "claude-3-haiku"}


def test_constructor_errors(rd):
    tok = StandInTokens.from_table(rd.table)
    with pytest.raises(ValueError, match="cost_scale"):
        Router(tok, ["claude-v2"], cost_scale=0.0)
    with pytest.raises(ValueError, match="policy"):
        Router(tok, ["claude-v2"], cost_scale=1.0, policy="ucb1")
    with pytest.raises(ValueError, match="duplicate"):
        Router(tok, ["claude-v2", "claude-v2"], cost_scale=1.0)
    with pytest.raises(KeyError, match="no token forecast"):
        Router(tok, ["not-in-data"], families={"not-in-data": "X"}, prices={"not-in-data": (1e-6, 1e-6)},
               cost_scale=1.0).route("hi")


def test_router_arguments_are_checked_naming_them(rd):
    tok = StandInTokens.from_table(rd.table)
    for kw, name in [(dict(lam=float("nan")), "lam"), (dict(lam=-0.1), "lam"), (dict(gam=float("inf")), "gam"),
                     (dict(gam="0.2"), "gam"), (dict(explore_decay=5.0), "explore_decay"),
                     (dict(min_explore=-1.0), "min_explore"), (dict(min_explore=1.5), "min_explore"),
                     (dict(family_strength=float("nan")), "family_strength"),
                     (dict(family_strength=-1.0), "family_strength"), (dict(capacity=2.7), "capacity")]:
        with pytest.raises(RouterInputError, match=f"Router: {name} must"):
            Router(tok, ["claude-v2"], cost_scale=1.0, **kw)
    with pytest.raises(RouterInputError, match=r"models \['nope-model'\] have no rows"):
        Router.from_data(rd, models=["claude-v2", "nope-model"])
    with pytest.raises(RouterInputError, match="split must be one of .* got 'tset'"):
        Router.from_data(rd, split="tset")
    r = Router.from_data(rd, seed=0)
    snap = _snapshot(r)
    with pytest.raises(RouterInputError, match="route_batch: queries must be a list .* got one str"):
        r.route_batch("abc")  # not three one-letter queries
    _same(snap, _snapshot(r))
    # bad prices or family are refused before anything changes: the token model does not learn the model either
    for args in [("new-x", "Lab", (-1.0, 2.0)), ("new-x", "Lab", "cheap"), ("new-x", 3, (1e-7, 1e-7))]:
        with pytest.raises(RouterInputError, match="new-x"):
            r.add_model(*args)
        assert "new-x" not in r.tokens.stats and "new-x" not in r.models
    _same(snap, _snapshot(r))


@pytest.mark.slow
def test_hierarchical_tokens_router(rd):
    """Routing with the fitted token posterior: forecasts per (query, model), a new model from its family prior."""
    from bandit_sim.router.tokens import PosteriorTokens
    from bandit_sim.sim.token_model import fit_token_model

    fit = fit_token_model(rd, quick=True)
    tok = PosteriorTokens.from_fit(fit)
    r = Router.from_data(rd, tokens=tok, seed=0)
    d = r.route(Query("Write a Python function that reverses a linked list.", input_tokens=12))
    assert d.tokens_interval[0] <= d.tokens_mean <= d.tokens_interval[1] * 1.5
    assert d.tokens_sd > 0
    r.observe(d, 1.0, 150)
    r.add_model("gpt-4o", "OpenAI", (2.5e-6, 1e-5))
    assert tok.models[-1] == "gpt-4o" and tok.post.n_models == len(fit.models) + 1
    fc = tok.predict(np.zeros((1, tok.post.standardizer.mean.shape[0]), np.float32), ["gpt-4o"])
    assert np.isfinite(fc.mean).all() and (fc.sd > 0).all()
