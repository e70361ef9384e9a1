"""The live router with linear Thompson sampling: same decisions as the simulator, family priors, save/load."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bandit_sim.data.loaders import load_data
from bandit_sim.data.text_features import GivenFeatures, TextFeaturizer, transform_table
from bandit_sim.router.router import TRACE_COUNT, Query, Router, RouterInputError
from bandit_sim.router.tokens import StandInTokens
from bandit_sim.sim.episode import chunk_length, episode_keys, episode_order
from bandit_sim.sim.simulate import simulate
from bandit_sim.sim.world import World, world_from_table

D = 9


@pytest.fixture(scope="module")
def rd():
    return load_data("routerbench")


@pytest.fixture(scope="module")
def feat(rd):
    train = rd.split("train").drop_duplicates("prompt_id")
    return TextFeaturizer.fit(train["prompt"].astype(str).tolist()[:400], d=D - 1, seed=0, n_hash=2 ** 12)


@pytest.fixture(scope="module")
def small(rd, feat):
    t = rd.table
    keep = t[t["split"] == "test"]["prompt_id"].drop_duplicates().iloc[:60]
    table = t[(t["split"] == "train") | t["prompt_id"].isin(keep)]
    n = len(keep)
    world, info = world_from_table(table, "test", features=np.zeros((n, 1), np.float32))
    world = world._replace(x=transform_table(feat, table, list(info.prompt_ids)))
    return table, world, info


def _pad(w: World, cap: int) -> World:
    n, k = w.quality.shape
    pad2 = lambda a, v=0: np.concatenate([a, np.full((n, cap - k), v, a.dtype)], 1)  # noqa: E731
    pad1 = lambda a, v=0: np.concatenate([a, np.full((cap - k,) + a.shape[1:], v, a.dtype)], 0)  # noqa: E731
    return w._replace(quality=pad2(w.quality), out_tokens=pad2(w.out_tokens), cost=pad2(w.cost),
                      pred_cost=pad2(w.pred_cost), pred_unc=pad2(w.pred_unc), family=pad1(w.family, 99),
                      arrival_step=pad1(w.arrival_step), mask=pad2(w.mask, False), prices=pad1(w.prices))


def _priors(k, seed=0):
    rng = np.random.default_rng(seed)
    return [(np.r_[0.6, rng.normal(0, 0.05, D - 1)], np.eye(D) * 0.05, 0.2) for _ in range(k)]


def _router(rd, info, feat, steps, seed, cap, **kw):
    models = list(info.models)
    return Router.from_data(rd, tokens=StandInTokens.from_table(rd.table), models=models, policy="linear_thompson",
                            cost_scale=info.cost_scale, capacity=cap, chunk=chunk_length(steps, 32), seed=seed,
                            featurizer=feat, linear_fit="flat",
                            linear_priors=dict(zip(models, _priors(len(models)))), **kw)


def _replay(router, table, info, order):
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


def test_router_replays_simulator_episode(rd, small, feat):
    table, world, info = small
    steps, seed, k = 120, 3, len(info.models)
    cap = k + 5
    router = _router(rd, info, feat, steps, seed, cap)
    assert router.featurizer.dim == D and router.pstate.cov.shape == (cap, D, D)
    m, traj = simulate(_pad(world, cap), jax.random.key(seed), router.hyper, policy="linear_thompson", steps=steps,
                       trajectories=True)
    with jax.threefry_partitionable(False):
        order = np.asarray(episode_order(episode_keys(jax.random.key(seed)).order, world.quality.shape[0], steps))
    np.testing.assert_array_equal(order, np.asarray(traj.query[0]))
    arms = _replay(router, table, info, order)
    np.testing.assert_array_equal(arms, np.asarray(traj.arm[0]))
    assert router.summary()["total_quality"] == pytest.approx(float(m.quality[0]), rel=1e-5)
    assert len(set(arms.tolist())) > 1


def test_add_model_family_prior_save_load_and_no_recompile(rd, small, feat, tmp_path):
    table, world, info = small
    fam_prior = (np.r_[0.9, np.zeros(D - 1)], np.eye(D) * 0.01, 0.1)
    router = _router(rd, info, feat, 100, 1, len(info.models) + 3,
                     family_linear_priors={"newfam": fam_prior})
    test = table[table["split"] == "test"].drop_duplicates("prompt_id")
    texts = test["prompt"].astype(str).tolist()
    for q in texts[:10]:
        d = router.route(q)
        router.observe(d, quality=0.5, output_tokens=20)
    n_route, n_obs = TRACE_COUNT["route"], TRACE_COUNT["observe"]
    router.add_model("brand-new", family="newfam", prices=(1e-6, 2e-6))
    router.add_model("other-new", family="unknown-family", prices=(1e-6, 2e-6))
    post = router.posterior()
    np.testing.assert_allclose(post["brand-new"][0], fam_prior[0], rtol=1e-6)
    np.testing.assert_allclose(post["other-new"][1], np.eye(D), rtol=1e-6)  # the global prior
    router.remove_model("other-new")
    d = router.route(texts[10])
    router.observe(d, quality=1.0, output_tokens=5)
    assert (TRACE_COUNT["route"], TRACE_COUNT["observe"]) == (n_route, n_obs)
    # save / load: the same next decisions and posteriors
    path = router.save(tmp_path / "r.npz")
    again = Router.load(path)
    assert again.featurizer.kind == "text"
    np.testing.assert_array_equal(again.featurizer.transform(texts[:3]), feat.transform(texts[:3]))
    for q in texts[11:20]:
        a, b = router.route(q), again.route(q)
        assert a.model == b.model and a.pi == pytest.approx(b.pi)
        router.observe(a, quality=0.3, output_tokens=7)
        again.observe(b, quality=0.3, output_tokens=7)
    np.testing.assert_array_equal(np.asarray(router.pstate.cov), np.asarray(again.pstate.cov))
    assert again.linear_family_prior("newfam")[0] == pytest.approx(fam_prior[0])
    assert again.family_prior("newfam")[2] == pytest.approx(fam_prior[2])


def test_user_features_through_query(rd, small):
    table, world, info = small
    rng = np.random.default_rng(0)
    gf = GivenFeatures.fit(rng.normal(size=(50, 4)))
    router = Router.from_data(rd, tokens=StandInTokens.from_table(rd.table), models=list(info.models),
                              policy="linear_thompson", cost_scale=info.cost_scale, featurizer=gf, linear_fit="flat")
    d = router.route(Query("hello there", features=[0.1, 0.2, -0.3, 1.0]))
    router.observe(d, quality=1.0, output_tokens=3)
    with pytest.raises(RouterInputError, match="user-supplied features"):
        router.route("no features here")
    with pytest.raises(RouterInputError, match="non-finite"):
        router.route(Query("bad", features=[0.1, float("nan"), 0.0, 1.0]))
    with pytest.raises(RouterInputError, match="expected 4|ragged"):
        router.route(Query("short", features=[0.1, 0.2]))


@pytest.mark.slow
def test_from_data_fits_the_hierarchical_priors(rd):
    router = Router.from_data(rd, policy="linear_thompson", warm=True)
    assert router.featurizer.kind == "text" and router.featurizer.dim == 33
    d = router.route("What is 2 + 2?")
    router.observe(d, quality=1.0, output_tokens=3)
    assert set(router.family_linear_priors) == set(rd.split("train")["family"].unique())
