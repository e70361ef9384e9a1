"""Linear Thompson sampling and LinUCB on query features: closed forms, exact draws, the NumPy twin, priors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bandit_sim.data.loaders import load_data
from bandit_sim.data.text_features import TextFeaturizer, transform_table
from bandit_sim.sim import batched_linear, formulas
from bandit_sim.sim.episode import hyper_grid
from bandit_sim.sim.linear import (batch_posterior, flat_linear_prior, linear_posterior, linear_prior,
                                   linear_world_truth, train_rows, with_linear_prior)
from bandit_sim.sim.policies import REGISTRY, Context, default_hyper, linear_thompson
from bandit_sim.sim.reference import run_reference
from bandit_sim.sim.simulate import TRACE_COUNT, simulate
from bandit_sim.sim.world import toy_world

K, D = 5, 6


def _spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * (a @ a.T / d + 0.3 * np.eye(d))


def test_rank_one_updates_equal_batch_posterior():
    rng = np.random.default_rng(0)
    m0, s0, noise = rng.normal(size=D), _spd(rng, D), 0.05
    x = np.concatenate([np.ones((80, 1)), rng.normal(size=(80, D - 1))], 1)
    y = x @ rng.normal(size=D) + rng.normal(0, 0.2, 80)

    def step(c, xy):
        m, s = c
        dm, ds = formulas.linear_update(m, s, xy[0], xy[1], jnp.float32(noise))
        return (m + dm, s + ds), None

    (m, s), _ = jax.lax.scan(step, (jnp.asarray(m0, jnp.float32), jnp.asarray(s0, jnp.float32)),
                             (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    m_b, s_b = batch_posterior(m0, s0, noise, x, y)
    np.testing.assert_allclose(np.asarray(m), m_b, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(np.asarray(s), s_b, rtol=2e-2, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s).T)  # exactly symmetric
    # and the closed form itself: one observation is the Sherman-Morrison / Kalman step
    m1, s1 = batch_posterior(m0, s0, noise, x[:1], y[:1])
    sx = s0 @ x[0]
    np.testing.assert_allclose(s1, s0 - np.outer(sx, sx) / (noise + x[0] @ sx), rtol=1e-8, atol=1e-10)


def test_scalar_draw_matches_its_gaussian():
    """The policy's draws of x'w_k have mean x'm_k and variance x'S_k x (goodness of fit, fixed key)."""
    rng = np.random.default_rng(1)
    mean = rng.normal(0, 0.02, (2, D)) + np.array([0.5] + [0.0] * (D - 1))
    cov = np.stack([_spd(rng, D, 1e-3), _spd(rng, D, 4e-4)])
    x = np.concatenate([[1.0], rng.normal(size=D - 1)])
    w, _ = toy_world(n=4, k=2, seed=0)
    w = w._replace(x=np.tile(x, (4, 1)).astype(np.float32))
    h = default_hyper(2, lin_mean=mean, lin_cov=cov)
    pol = linear_thompson(h, w)
    n = 20000
    nz = pol.noise(jax.random.key(7), n)
    ctx = Context(t=jnp.int32(0), avail=jnp.ones(2, bool), pred_cost=jnp.zeros(2), pred_unc=jnp.zeros(2),
                  features=jnp.zeros(1), category=jnp.int32(0), quality=jnp.zeros(2), cost=jnp.zeros(2),
                  x=jnp.asarray(x, jnp.float32))
    pi = np.asarray(jax.vmap(lambda z: pol.sample(pol.init(), z, jax.random.key(0), ctx).pi)(nz))
    for k in range(2):
        mu, sd = float(x @ mean[k]), float(np.sqrt(x @ cov[k] @ x))
        assert 0.0 < mu - 6 * sd and mu + 6 * sd < 1.0  # clipping never binds here
        assert abs(pi[:, k].mean() - mu) < 4 * sd / np.sqrt(n)
        assert abs(pi[:, k].var() / sd ** 2 - 1.0) < 4 * np.sqrt(2.0 / n)
        assert stats.kstest(pi[:, k], "norm", args=(mu, sd)).pvalue > 0.01
    assert abs(np.corrcoef(pi.T)[0, 1]) < 0.05  # independent across arms


@pytest.fixture(scope="module")
def lin_world():
    # missing entries, a late arrival (arm 3 at step 40, family of arm 1), features that matter
    w, _ = toy_world(n=80, k=K, seed=5, bernoulli=False, missing=0.15, arrival_step=[0, 0, 0, 40, 0])
    tr = linear_world_truth(80, K, D, seed=3)
    return w._replace(x=tr["x"], quality=np.where(w.mask, tr["quality"], 0.0).astype(np.float32))


def _lin_hyper(w, **kw):
    rng = np.random.default_rng(2)
    prior = flat_linear_prior(K, D, var=0.5, noise=0.05)
    prior = prior._replace(mean=rng.normal(0, 0.1, (K, D)).astype(np.float32),
                           noise=rng.uniform(0.02, 0.1, K).astype(np.float32))
    return with_linear_prior(default_hyper(K, d=D, ucb_c=0.7, **kw), prior)


@pytest.mark.parametrize("policy", ["linear_thompson", "linucb"])
def test_kernel_matches_numpy_twin(lin_world, policy):
    h = _lin_hyper(lin_world)
    m, tr = simulate(lin_world, jax.random.key(42), h, policy=policy, episodes=3, steps=160, chunk=16,
                     trajectories=True)
    for e in range(3):
        d = jax.tree.map(lambda a: np.asarray(a)[e], tr.draws)
        ref = run_reference(policy, lin_world, h, np.asarray(tr.query[e]), draws=d)
        np.testing.assert_array_equal(np.asarray(tr.arm[e]), ref["arm"], err_msg=f"{policy} arms, episode {e}")
        np.testing.assert_array_equal(np.asarray(m.choices[e]), ref["choices"])
        for name in ("reward", "quality", "cost", "regret"):
            np.testing.assert_allclose(float(getattr(m, name)[e]), float(ref[name]), rtol=1e-4, atol=1e-4)
        assert int(m.convergence[e]) == ref["convergence"]
    # the arriving arm is never chosen before it arrives
    assert np.all(np.asarray(tr.arm)[:, :40] != 3)


def test_no_recompile_when_numbers_change(lin_world):
    h = _lin_hyper(lin_world)
    g = hyper_grid(h, lam=[0.0, 0.3, 0.6])
    kw = dict(policy="linear_thompson", episodes=4, steps=50, chunk=10)
    m1, _ = simulate(lin_world, jax.random.key(0), g, **kw)
    n0 = TRACE_COUNT["simulate"]
    prior = flat_linear_prior(K, D, var=2.0, noise=0.3)
    g2 = hyper_grid(with_linear_prior(h, prior), lam=[0.1, 0.2, 0.9])
    m2, _ = simulate(lin_world, jax.random.key(0), g2, **kw)
    assert TRACE_COUNT["simulate"] == n0
    assert m1.choices.shape == (3, 4, K)
    assert not np.array_equal(np.asarray(m1.choices), np.asarray(m2.choices))


def test_registry_and_shape_check(lin_world):
    assert REGISTRY["linear_thompson"] is linear_thompson and "linucb" in REGISTRY
    with pytest.raises(ValueError, match="World.x has D = 6"):
        simulate(lin_world, jax.random.key(0), default_hyper(K), policy="linear_thompson", steps=5)


def _fit_from_truth(tr, tau_global=0.15, tau_family=0.03, noise_sd=0.1, family_sd=0.01):
    g = tr["w_family"].shape[0]
    return dict(w_global=tr["w_global"], tau_global=tau_global, w_family=tr["w_family"],
                w_family_sd=np.full(tr["w_family"].shape, family_sd), tau_family=tau_family,
                noise_sd=np.full(len(tr["family"]), noise_sd), family_of_model=tr["family"] % g)


def test_linear_prior_kinds():
    tr = linear_world_truth(400, 4, D, seed=4, clip=False)
    fit = _fit_from_truth(tr)
    fam = tr["family"]
    cold = linear_prior(fit, fam, "cold")
    np.testing.assert_allclose(cold.mean, np.broadcast_to(tr["w_global"], (4, D)), rtol=1e-6)
    np.testing.assert_allclose(cold.cov[0], np.eye(D) * (0.15 ** 2 + 0.03 ** 2), rtol=1e-5)
    famp = linear_prior(fit, fam, "family")
    np.testing.assert_allclose(famp.mean, tr["w_family"][fam], rtol=1e-6)
    # warm: the exact posterior after each arm's training rows; arm 3 has none: family (or cold) prior
    rng = np.random.default_rng(0)
    arm = rng.integers(0, 3, 400)
    q = tr["quality"][np.arange(400), arm]
    warm = linear_prior(fit, fam, "warm", x=tr["x"], quality=q, arm=arm)
    m0, s0 = batch_posterior(famp.mean[1], famp.cov[1], famp.noise[1], tr["x"][arm == 1], q[arm == 1])
    np.testing.assert_allclose(warm.mean[1], m0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(warm.cov[1], s0, rtol=1e-4, atol=1e-9)
    np.testing.assert_array_equal(warm.mean[3], famp.mean[3])
    cold_new = linear_prior(fit, fam, "warm", x=tr["x"], quality=q, arm=arm, newcomer="cold")
    np.testing.assert_array_equal(cold_new.mean[3], cold.mean[3])
    assert np.abs(warm.mean[:3] - tr["w"][:3]).max() < 0.05  # the training rows pin the weights down
    # LinUCB's ridge regression: the flat N(0, I) prior with unit noise, then the rows: A^-1 b and A^-1
    ridge = linear_posterior(flat_linear_prior(4, D, 1.0, 1.0), tr["x"], q, arm)
    xa, qa = tr["x"][arm == 2].astype(np.float64), q[arm == 2]
    a_inv = np.linalg.inv(np.eye(D) + xa.T @ xa)
    np.testing.assert_allclose(ridge.mean[2], a_inv @ xa.T @ qa, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ridge.cov[2], a_inv, rtol=1e-4, atol=1e-8)
    np.testing.assert_array_equal(ridge.mean[3], 0.0)
    with pytest.raises(ValueError, match="kind must be"):
        linear_prior(fit, fam, "hot")
    # the bias weight's own scales (feature 0); the slopes keep theirs
    fit_b = {**fit, "tau_global_bias": 0.3, "tau_family_bias": 0.1}
    cold_b, fam_b = linear_prior(fit_b, fam, "cold"), linear_prior(fit_b, fam, "family")
    slopes = np.full(D - 1, 1.0)
    np.testing.assert_allclose(np.diag(cold_b.cov[0]), np.r_[0.3 ** 2 + 0.1 ** 2, (0.15 ** 2 + 0.03 ** 2) * slopes],
                               rtol=1e-5)
    np.testing.assert_allclose(np.diag(fam_b.cov[1]), np.r_[0.01 ** 2 + 0.1 ** 2, (0.01 ** 2 + 0.03 ** 2) * slopes],
                               rtol=1e-5)
    np.testing.assert_array_equal(fam_b.mean, famp.mean)


def test_family_prior_beats_flat_prior_for_a_newcomer():
    """Families share weights: a model arriving with its family's prior has far less regret than with the global one."""
    k, d, n, t0, steps, e = 6, D, 400, 50, 550, 16
    tr = linear_world_truth(n + 600, k, d, n_families=3, tau_global=0.2, tau_family=0.02, noise_sd=0.1, seed=11)
    fit = _fit_from_truth(tr, tau_global=0.2, tau_family=0.02)
    x_tr, q_tr = tr["x"][n:], tr["quality"][n:]
    # training rows: every arm but the newcomer (arm 5)
    arm_tr = np.repeat(np.arange(k - 1), 120)
    rows = np.tile(np.arange(120), k - 1)
    w, _ = toy_world(n=n, k=k, seed=2, bernoulli=False, arrival_step=[0] * (k - 1) + [t0])
    w = w._replace(x=tr["x"][:n], quality=tr["quality"][:n], family=tr["family"])
    base = default_hyper(k, d=d, lam=0.0, gam=0.0, min_explore=0.0, explore_decay=0.0)
    regret = {}
    for newcomer in ("family", "cold"):
        prior = linear_prior(fit, tr["family"], "warm", x=x_tr[rows], quality=q_tr[rows, arm_tr], arm=arm_tr,
                             newcomer=newcomer)
        _, traj = simulate(w, jax.random.key(5), with_linear_prior(base, prior), policy="linear_thompson",
                           episodes=e, steps=steps, trajectories=True)
        true_mu = np.clip(tr["x"][:n] @ tr["w"].T, 0, 1)  # (n, k) expected quality
        qi, arm = np.asarray(traj.query), np.asarray(traj.arm)
        best = true_mu[qi].max(-1)
        regret[newcomer] = (best - np.take_along_axis(true_mu[qi], arm[..., None], -1)[..., 0])[:, t0:].sum(1)
    diff = regret["cold"] - regret["family"]
    # 0.55x since ties among clipped draws go to the larger unclipped draw (0.49x when they went to the lowest
    # index, i.e. away from the newcomer, the last arm)
    assert regret["family"].mean() < 0.6 * regret["cold"].mean()
    assert stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue < 0.01


def _both(world, hyper, **kw):
    key = jax.random.key(kw.pop("seed", 0))
    fast, _ = simulate(world, key, hyper, policy="linear_thompson", impl="batched", **kw)
    slow, _ = simulate(world, key, hyper, policy="linear_thompson", impl="generic", **kw)
    np.testing.assert_array_equal(np.asarray(fast.choices), np.asarray(slow.choices))
    for name in ("reward", "quality", "cost", "regret"):
        np.testing.assert_allclose(np.asarray(getattr(fast, name)), np.asarray(getattr(slow, name)), rtol=1e-5,
                                   atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(np.asarray(fast.convergence), np.asarray(slow.convergence))
    return fast


@pytest.mark.parametrize("impl", ["generic", "batched"])
def test_clipped_draws_keep_probability_matching(impl):
    """Three arms with one posterior centred on the top of the quality range: half of each arm's draws clip to 1, so
    at lam = 0 the utilities tie often; the tie goes to the larger unclipped draw, and each arm is chosen a third of
    the time (it went to the lowest index: 0.44 / 0.29 / 0.27 in a reviewer's run)."""
    k, e = 3, 6000
    w, _ = toy_world(n=8, k=k, seed=0, bernoulli=False)
    h = default_hyper(k, d=1, lam=0.0, gam=0.0, min_explore=0.0, explore_decay=0.0)
    h = h._replace(lin_mean=jnp.ones((k, 1), jnp.float32), lin_cov=jnp.ones((k, 1, 1), jnp.float32))
    m, _ = simulate(w._replace(x=np.ones((8, 1), np.float32)), jax.random.key(3), h, policy="linear_thompson",
                    episodes=e, steps=1, impl=impl)
    counts = np.asarray(m.choices).sum(0)
    assert counts.sum() == e
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_batched_path_same_episodes_as_generic(lin_world):
    h = _lin_hyper(lin_world)
    # a remainder chunk, Bernoulli rewards; 40 episodes run as 2 blocks of 20 (batched_linear.block_size)
    assert batched_linear.block_size(40) == 20
    fast = _both(lin_world, h, episodes=40, steps=37, chunk=8, reward="bernoulli", seed=3)
    assert np.asarray(fast.choices).sum() == 40 * 37


@pytest.mark.slow
def test_batched_path_grid_same_as_generic(lin_world):
    g = hyper_grid(_lin_hyper(lin_world), lam=[0.0, 0.5], gam=[0.0, 0.3])
    assert _both(lin_world, g, episodes=6, steps=40, chunk=10).choices.shape == (4, 6, K)


def test_batched_dispatch(lin_world):
    assert batched_linear.serves(linear_thompson, {}, False)
    assert not batched_linear.serves(linear_thompson, {}, True)
    assert not batched_linear.serves(REGISTRY["linucb"], {}, False)
    with pytest.raises(ValueError, match="impl='batched' runs the Thompson"):
        simulate(lin_world, jax.random.key(0), _lin_hyper(lin_world), policy="linucb", impl="batched")


def test_train_rows_from_a_table():
    rd = load_data("routerbench")
    train = rd.split("train")
    train = train[train["prompt_id"].isin(train["prompt_id"].drop_duplicates().iloc[:80])]
    feat = TextFeaturizer.fit(train.drop_duplicates("prompt_id")["prompt"].astype(str), d=4, n_hash=2 ** 10)
    models = sorted(train["model"].unique())[:4] + ["a-newcomer"]
    rows = train_rows(train, models, feat, {"a-newcomer": "newfam"})
    assert rows.x.shape == (len(rows.quality), 5) and np.all(rows.x[:, 0] == 1.0)
    assert set(rows.arm.tolist()) == {0, 1, 2, 3} and len(rows.quality) == 4 * 80
    assert rows.families[rows.family_of_arm[4]] == "newfam"
    pid = train[train["model"] == models[2]]["prompt_id"].iloc[5]
    np.testing.assert_array_equal(rows.x[rows.arm == 2][5], transform_table(feat, train, [pid])[0])


def test_long_run_float32_stays_near_the_batch_posterior():
    """20 000 rank-one steps in float32 (D = 33): the covariance form keeps its accuracy and symmetry."""
    rng = np.random.default_rng(3)
    d, n = 33, 20000
    x = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, d - 1))], 1)
    y = x @ rng.normal(0, 0.1, d) + rng.normal(0, 0.4, n)
    m0, s0, noise = np.zeros(d), np.eye(d), 0.16

    def step(c, xy):
        dm, ds = formulas.linear_update(c[0], c[1], xy[0], xy[1], jnp.float32(noise))
        return (c[0] + dm, c[1] + ds), None

    (m, s), _ = jax.jit(lambda c, xs: jax.lax.scan(step, c, xs))(
        (jnp.zeros(d, jnp.float32), jnp.eye(d, dtype=jnp.float32)), (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    m_b, s_b = batch_posterior(m0, s0, noise, x, y)
    sd_b = np.sqrt(np.diag(s_b))
    assert np.abs(np.asarray(m) - m_b).max() < 0.05 * sd_b.min()  # far inside the posterior spread
    np.testing.assert_allclose(np.sqrt(np.diag(np.asarray(s))), sd_b, rtol=0.02)
    xs = x[:200] @ np.asarray(s, np.float64) @ x[:200].T
    assert np.all(np.diag(xs) > 0)


def test_flat_prior_with_a_centred_bias():
    """The bias weight (feature 0) can be centred at the middle of the quality range with its own variance; the
    posterior mean then starts there, and bad numbers are refused by name."""
    p = flat_linear_prior(3, 4, var=0.01, noise=0.25, bias_mean=0.5, bias_var=0.3)
    np.testing.assert_allclose(p.mean[:, 0], 0.5)
    np.testing.assert_allclose(p.mean[:, 1:], 0.0)
    np.testing.assert_allclose(p.cov[:, 0, 0], 0.3, rtol=1e-6)
    np.testing.assert_allclose(p.cov[:, 1:, 1:], np.broadcast_to(np.eye(3) * 0.01, (3, 3, 3)), rtol=1e-6)
    # with no rows an arm keeps the prior; with rows of quality 0.9 its bias moves from 0.5 towards 0.9
    x = np.array([[1.0, 0.0, 0.0, 0.0]] * 20, np.float32)
    post = linear_posterior(p, x, np.full(20, 0.9), np.zeros(20, int))
    assert 0.5 < post.mean[0, 0] < 0.9 and post.mean[1, 0] == pytest.approx(0.5)
    for kw, name in (({"var": 0.0}, "var"), ({"noise": -1.0}, "noise"), ({"bias_var": float("nan")}, "bias_var"),
                     ({"bias_mean": float("inf")}, "bias_mean")):
        with pytest.raises(ValueError, match=name):
            flat_linear_prior(2, 3, **kw)
