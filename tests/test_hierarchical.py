"""Tests of the hierarchical token model: recovery, variance split, save/load, bad input, new-model update."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from scipy import stats

from hierarchical import (FEATURE_NAMES, FitConfig, PosteriorFileError, TokenPosterior, add_new_model, fit_svi,
                          load_posterior, predict, query_features, save_posterior)
from hierarchical.features import Standardizer
from hierarchical import fit as fit_module
from hierarchical.fit import fit_nuts, validate_inputs
from hierarchical.predictive import crps_from_samples, student_t

# ---------------------------------------------------------------- synthetic world with known parameters
K, G, F = 12, 3, 3
FAM = np.repeat(np.arange(G), K // G).astype(np.int32)
MU0 = np.array([6.0, 0.5, -0.3, 0.0])
TAU0 = np.array([0.6, 0.2, 0.2, 0.05])
TAUW = np.array([0.3, 0.1, 0.1, 0.05])
NU = 6.0


def _world(seed=0, rows_per_model=500):
    rng = np.random.default_rng(seed)
    mu_fam = MU0 + TAU0 * rng.standard_normal((G, F + 1))
    theta = mu_fam[FAM] + TAUW * rng.standard_normal((K, F + 1))
    log_sigma = np.log(0.4) + 0.2 * rng.standard_normal(G)[FAM] + 0.1 * rng.standard_normal(K)
    m = np.repeat(np.arange(K), rows_per_model)
    x = rng.standard_normal((m.size, F)) * np.array([1.0, 2.0, 0.5]) + np.array([0.0, 1.0, -1.0])
    loc = theta[m, 0] + np.sum(x * theta[m, 1:], axis=1)
    y = loc + np.exp(log_sigma[m]) * rng.standard_t(NU, m.size)
    tokens = np.round(np.expm1(y)).clip(0)
    return dict(x=x.astype(np.float32), m=m, tokens=tokens, theta=theta, log_sigma=log_sigma, mu_fam=mu_fam)


def _to_standardised(beta: np.ndarray, std: Standardizer) -> np.ndarray:
    """Coefficients on raw features -> coefficients on the fit's standardised features (intercept first)."""
    mean, scale = std.mean.astype(np.float64), std.scale.astype(np.float64)
    out = beta.copy()
    out[..., 0] = beta[..., 0] + np.sum(beta[..., 1:] * mean, axis=-1)
    out[..., 1:] = beta[..., 1:] * scale
    return out


@pytest.fixture(scope="module")
def world():
    return _world()


@pytest.fixture(scope="module")
def fitted(world):
    cfg = FitConfig(num_steps=1500, chunk=250, num_samples=300, min_steps=1000)
    return fit_svi(world["x"], world["m"], FAM, world["tokens"], config=cfg, seed=0, progress=False)


# ---------------------------------------------------------------- recovery
def test_recovers_model_coefficients_noise_and_tails(world, fitted):
    theta_true = _to_standardised(world["theta"], fitted.standardizer)
    theta_hat = fitted.draws["theta"].mean(0)
    assert np.max(np.abs(theta_hat - theta_true)) < 0.08
    sig_hat = np.exp(fitted.draws["log_sigma"]).mean(0)
    np.testing.assert_allclose(sig_hat, np.exp(world["log_sigma"]), rtol=0.12)
    assert 3.5 < fitted.draws["nu"].mean() < 12.0
    # family means are pooled estimates: close to the mean of the family's true model coefficients
    fam_true = np.stack([theta_true[FAM == g].mean(0) for g in range(G)])
    assert np.max(np.abs(fitted.draws["mu_fam"].mean(0) - fam_true)) < 0.2
    for v in fitted.draws.values():
        assert np.all(np.isfinite(v))
    assert fitted.draws["theta"].shape == (300, K, F + 1)
    # 1500 steps cannot hold the constant-rate check (two 2000-step windows): the fit says it is not converged
    assert fitted.meta["svi_converged"] is False and fitted.meta["converged"] is False


def test_recovery_is_not_trivially_true(world, fitted):
    # the same check against a wrong truth must fail: the test above can fail
    wrong = _to_standardised(world["theta"][::-1], fitted.standardizer)
    assert np.max(np.abs(fitted.draws["theta"].mean(0) - wrong)) > 0.08


def test_heldout_rows_are_calibrated(fitted):
    w = _world(seed=0, rows_per_model=120)  # same models, new rows (the x and noise differ: same seed, fewer rows)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((K * 120, F)) * np.array([1.0, 2.0, 0.5]) + np.array([0.0, 1.0, -1.0]))
    m = np.repeat(np.arange(K), 120)
    loc = w["theta"][m, 0] + np.sum(x * w["theta"][m, 1:], axis=1)
    y = np.expm1(loc + np.exp(w["log_sigma"][m]) * rng.standard_t(NU, m.size)).clip(0)
    pr = predict(fitted, x.astype(np.float32), m, key=jax.random.key(1))
    inside95 = np.mean((y >= pr.quantiles[:, 0]) & (y <= pr.quantiles[:, 6]))
    inside50 = np.mean((y >= pr.quantiles[:, 2]) & (y <= pr.quantiles[:, 4]))
    assert 0.92 < inside95 < 0.98
    assert 0.44 < inside50 < 0.56


# ---------------------------------------------------------------- predictive and the variance split
def _toy_posterior(s=200, nu=12.0, seed=0) -> TokenPosterior:
    rng = np.random.default_rng(seed)
    d = 3
    k, g = 2, 2
    draws = dict(
        mu_0=(np.array([5.0, 0.2, -0.1]) + 0.05 * rng.standard_normal((s, d))).astype(np.float32),
        tau_0=np.full((s, d), 0.3, np.float32),
        mu_fam=(np.array([5.0, 0.2, -0.1]) + 0.1 * rng.standard_normal((s, g, d))).astype(np.float32),
        tau_w=np.full((s, d), 0.2, np.float32),
        theta=(np.array([5.0, 0.3, 0.0]) + 0.15 * rng.standard_normal((s, k, d))).astype(np.float32),
        mu_sig0=np.full(s, np.log(0.5), np.float32),
        s_sig0=np.full(s, 0.1, np.float32),
        mu_sig_fam=np.full((s, g), np.log(0.5), np.float32),
        s_sig_w=np.full(s, 0.1, np.float32),
        log_sigma=(np.log(0.5) + 0.05 * rng.standard_normal((s, k))).astype(np.float32),
        nu=np.full(s, nu, np.float32),
    )
    std = Standardizer(np.zeros(2, np.float32), np.ones(2, np.float32))
    return TokenPosterior(draws, std, np.array([0, 1], np.int32), ("a", "b"))


def test_variance_decomposition_adds_up():
    post = _toy_posterior()
    x = np.array([[0.0, 0.0], [1.0, -1.0], [2.0, 0.5], [0.5, 0.5], [-1.0, 1.0]], np.float32)
    m = np.array([0, 1, 0, -1, -1])
    fam = np.array([0, 1, 0, 1, -1])
    pr = predict(post, x, m, fam, key=jax.random.key(3), per_draw=64, return_samples=True, max_tokens=1e6)
    # token space: aleatoric + epistemic is the variance of all predictive samples (law of total variance)
    np.testing.assert_allclose(pr.var_tokens_total, pr.samples.var(axis=1), rtol=2e-3)
    np.testing.assert_allclose(pr.var_tokens_total, pr.var_tokens_samples, rtol=2e-3)
    # log space: closed-form aleatoric sigma^2 nu/(nu-2) + epistemic Var(loc) matches the samples' variance
    logs = np.log1p(pr.samples)
    np.testing.assert_allclose(pr.var_log_total, logs.var(axis=1), rtol=0.06)
    np.testing.assert_allclose(pr.mean_log, logs.mean(axis=1), atol=0.02)
    # epistemic of a trained model is the variance of its location over draws
    loc0 = post.draws["theta"][:, 0, 0]
    np.testing.assert_allclose(pr.var_log_epistemic[0], loc0.var(), rtol=1e-3)
    # unknown models carry more epistemic uncertainty than trained ones; global prior more than family prior
    assert pr.var_log_epistemic[3] > pr.var_log_epistemic[0]
    assert pr.var_log_epistemic[4] > pr.var_log_epistemic[3]
    assert np.all(np.diff(pr.quantiles, axis=1) >= 0)


def test_epistemic_share_does_not_depend_on_per_draw():
    # a trained model's epistemic share in token space is small (its location varies little over draws); the plain
    # Var_s(mean of R samples) added aleatoric / R of Monte Carlo noise (share 0.32 at R = 4, 0.10 at R = 64)
    post = _toy_posterior(s=400)
    x = np.tile(np.array([[0.0, 0.0], [1.0, -1.0], [0.5, 0.5], [-1.0, 0.2]], np.float32), (50, 1))
    m = np.tile(np.array([0, 1, 0, 1]), 50)
    share = {}
    for r in (4, 64):
        pr = predict(post, x, m, key=jax.random.key(r), per_draw=r, max_tokens=1e6)
        share[r] = float(np.mean(pr.var_tokens_epistemic / pr.var_tokens_total))
        np.testing.assert_allclose(pr.var_tokens_aleatoric + pr.var_tokens_epistemic, pr.var_tokens_samples,
                                   rtol=1e-5)
        assert np.all(pr.var_tokens_epistemic >= 0)
    # the truth: the log-space share (closed form, no Monte Carlo) is 0.12 here; the token share is of that order
    assert 0.04 < share[64] < 0.2
    assert abs(share[4] - share[64]) < 0.03
    one = predict(post, x[:4], m[:4], per_draw=1)
    assert np.all(np.isnan(one.var_tokens_epistemic)) and np.all(np.isfinite(one.var_tokens_total))


def test_student_t_sampler_matches_scipy():
    for nu in (2.5, 5.0, 30.0):
        draws = np.asarray(student_t(jax.random.key(0), nu, (20000,)))
        assert stats.kstest(draws, stats.t(nu).cdf).pvalue > 0.01
    # and the test has power: the wrong df is rejected
    draws = np.asarray(student_t(jax.random.key(0), 2.5, (20000,)))
    assert stats.kstest(draws, stats.norm.cdf).pvalue < 1e-6


def test_crps_matches_closed_form_for_a_normal():
    rng = np.random.default_rng(0)
    samples = rng.standard_normal((3, 20000)).astype(np.float32)
    y = np.array([0.0, 1.0, -2.0])
    closed = y * (2 * stats.norm.cdf(y) - 1) + 2 * stats.norm.pdf(y) - 1 / np.sqrt(np.pi)
    np.testing.assert_allclose(np.asarray(crps_from_samples(samples, y)), closed, atol=0.01)


# ---------------------------------------------------------------- save / load
def test_save_load_round_trip_exact(tmp_path, fitted, world):
    path = save_posterior(fitted, tmp_path / "post")
    assert path.suffix == ".npz" and not list(tmp_path.glob("*.tmp"))
    back = load_posterior(path)
    assert set(back.draws) == set(fitted.draws) and set(back.guide_params) == set(fitted.guide_params)
    for a, b in [(back.draws, fitted.draws), (back.guide_params, fitted.guide_params)]:
        for k in a:
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(back.standardizer.mean, fitted.standardizer.mean)
    np.testing.assert_array_equal(back.elbo, fitted.elbo)
    assert back.meta == fitted.meta and back.feature_names == fitted.feature_names
    p1 = predict(fitted, world["x"][:50], world["m"][:50], key=jax.random.key(2))
    p2 = predict(back, world["x"][:50], world["m"][:50], key=jax.random.key(2))
    np.testing.assert_array_equal(p1.quantiles, p2.quantiles)


def test_load_rejects_corrupt_files(tmp_path, fitted):
    path = save_posterior(fitted, tmp_path / "post.npz")
    raw = path.read_bytes()
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(PosteriorFileError, match="not a readable"):
        load_posterior(bad)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(PosteriorFileError):
        load_posterior(trunc)
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(PosteriorFileError):
        load_posterior(tmp_path / "flip.npz")
    with pytest.raises(PosteriorFileError, match="no such"):
        load_posterior(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(PosteriorFileError, match="__meta__"):
        load_posterior(other)


# ---------------------------------------------------------------- bad input
def test_clear_errors_on_bad_input(world):
    x, m, t = world["x"], world["m"], world["tokens"]
    with pytest.raises(ValueError, match="empty table"):
        validate_inputs(x[:0], m[:0], FAM, t[:0])
    keep = m != 5
    with pytest.raises(ValueError, match="model index 5 has no rows"):
        validate_inputs(x[keep], m[keep], FAM, t[keep])
    xn = x.copy()
    xn[7, 2] = np.nan
    with pytest.raises(ValueError, match="NaN/inf feature at row 7"):
        validate_inputs(xn, m, FAM, t)
    with pytest.raises(ValueError, match="tokens"):
        validate_inputs(x, m, FAM, -t - 1)
    with pytest.raises(ValueError, match="model_idx must lie"):
        validate_inputs(x, m + 1, FAM, t)
    with pytest.raises(ValueError, match="NaN/inf"):
        fit_svi(xn, m, FAM, t, progress=False)
    post = _toy_posterior()
    with pytest.raises(ValueError, match="model_idx"):
        predict(post, np.zeros((2, 2), np.float32), np.array([0, 7]))
    with pytest.raises(ValueError, match="non-empty"):
        predict(post, np.zeros((0, 2), np.float32), np.zeros(0, int))


# ---------------------------------------------------------------- new-model update
def test_new_model_update_error_falls_with_n(fitted):
    rng = np.random.default_rng(11)
    truth = fitted.draws["mu_fam"].mean(0)[1] + np.array([0.4, 0.15, -0.1, 0.05])  # a new model in family 1
    x = rng.standard_normal((400, F)).astype(np.float32)
    z = np.concatenate([np.ones((400, 1)), fitted.standardizer.transform(x)], axis=1)
    y = np.expm1(z @ truth + 0.35 * rng.standard_t(NU, 400)).clip(0)
    obs, ev = np.arange(100), np.arange(100, 400)
    errs, coef_err = [], []
    for n in (0, 10, 50, 100):
        upd = add_new_model(fitted, x[obs[:n]], y[obs[:n]], family=1, seed=0)
        assert upd.n_models == K + 1 and upd.family_of_model[-1] == 1
        coef_err.append(np.abs(upd.draws["theta"][:, -1].mean(0) - truth).max())
        pr = predict(upd, x[ev], np.full(ev.size, K), key=jax.random.key(0))
        errs.append(np.mean(np.abs(pr.median - y[ev])))
    assert coef_err[0] > coef_err[1] > coef_err[3]
    assert errs[0] > errs[1] > errs[3]
    # n = 0 is exactly the family prior used by predict for an unknown model of that family
    upd0 = add_new_model(fitted, x[:0], y[:0], family=1, seed=0)
    np.testing.assert_allclose(upd0.draws["theta"][:, -1].mean(0), fitted.draws["mu_fam"][:, 1].mean(0), atol=0.05)


def test_new_model_forecast_does_not_widen_after_data_from_its_family(fitted):
    # the truth: for data drawn from the prior, the expected posterior predictive variance is at most the prior
    # predictive variance (law of total variance). A noise prior with nu0 = 4 pseudo-observations (a much heavier
    # tail than the fitted log-normal of sigma) made the forecast wider after n = 1 and 5 than at n = 0
    d = fitted.draws
    rng = np.random.default_rng(3)
    x_eval = rng.standard_normal((32, F)).astype(np.float32)

    def var_log(upd):
        pr = predict(upd, x_eval, np.full(32, K), key=jax.random.key(0), per_draw=2)
        return float(pr.var_log_total.mean())

    v0 = var_log(add_new_model(fitted, np.zeros((0, F)), np.zeros(0), family=1, seed=0))
    out = {1: [], 5: []}
    for seed in range(12):
        s = rng.integers(fitted.n_draws)  # a model of family 1 drawn from the fitted family prior
        theta = d["mu_fam"][s, 1] + d["tau_w"][s] * rng.standard_normal(F + 1)
        sigma = np.exp(d["mu_sig_fam"][s, 1] + d["s_sig_w"][s] * rng.standard_normal())
        x = rng.standard_normal((5, F)).astype(np.float32)
        z = np.concatenate([np.ones((5, 1)), fitted.standardizer.transform(x)], axis=1)
        y = np.expm1(z @ theta + sigma * rng.standard_t(d["nu"][s], 5))
        for n in out:
            out[n].append(var_log(add_new_model(fitted, x[:n], y[:n], family=1, seed=seed)))
    assert np.mean(out[1]) <= v0 * 1.02 and np.mean(out[5]) <= v0 * 1.02
    assert np.mean(out[5]) < np.mean(out[1])


def test_noise_prior_matches_the_fitted_prior_of_log_sigma(fitted):
    from hierarchical.update import noise_prior

    d = fitted.draws
    rng = np.random.default_rng(0)
    for fam, centre, spread in ((1, d["mu_sig_fam"][:, 1], [d["s_sig_w"]]),
                                (None, d["mu_sig0"], [d["s_sig0"], d["s_sig_w"]])):
        nu0, s0sq = noise_prior(fitted, fam)
        log_sig = centre.astype(np.float64)[:, None] + sum(s[:, None] * rng.standard_normal((s.size, 2000))
                                                           for s in spread)
        log_sig2 = np.log(nu0 * s0sq / rng.chisquare(nu0, 400000))
        np.testing.assert_allclose(log_sig2.mean(), 2 * log_sig.mean(), atol=0.01)
        np.testing.assert_allclose(log_sig2.var(), 4 * log_sig.var(), rtol=0.05)


# ---------------------------------------------------------------- features
def test_standardizer_floor_and_clip():
    rng = np.random.default_rng(0)
    x = np.zeros((2000, 3))
    x[:, 0] = rng.normal(5.0, 2.0, 2000)
    x[:10, 1] = rng.uniform(0.0, 0.002, 10)  # a share almost always 0: sd ~ 4e-5
    std = Standardizer.fit(x)
    assert std.scale[0] == pytest.approx(x[:, 0].std(), rel=1e-5)
    assert std.scale[1] == pytest.approx(1e-3)  # the floor: a thousandth of the share's unit
    assert std.scale[2] == 1.0  # constant column
    z = std.transform(np.array([[5.0 + 100.0, 1.0, 1.0], [5.0, 0.0, 0.0]]))
    np.testing.assert_allclose(z[0], [6.0, 6.0, 1.0], rtol=1e-6)  # clipped at Z_MAX = 6
    assert np.all(np.abs(std.transform(x)) <= 6.0)


def test_out_of_distribution_query_is_not_priced_at_the_cap():
    # feature 1 is a share that is 0 in all but 1% of the rows (and tiny there) and has no effect on the length:
    # a query with share 1 is far outside the training rows (z ~ 1 / sd ~ 1e3 before the floor and the clip)
    rng = np.random.default_rng(4)
    k, n = 4, 3000
    m = np.arange(n) % k
    x = np.zeros((n, 3), np.float32)
    x[:, 0] = rng.standard_normal(n)
    x[:, 2] = rng.standard_normal(n)
    x[rng.choice(n, 30, replace=False), 1] = rng.uniform(0.001, 0.01, 30)
    y = 5.0 + 0.3 * x[:, 0] - 0.2 * x[:, 2] + 0.1 * m + 0.4 * rng.standard_t(6, n)
    cfg = FitConfig(num_steps=1000, min_steps=1000, num_samples=200)
    post = fit_svi(x, m, np.array([0, 0, 1, 1]), np.expm1(y), config=cfg, seed=0, progress=False)
    q = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)  # the same query in English, then all non-ASCII
    pr = predict(post, q, np.array([1, 1]), key=jax.random.key(0), per_draw=16)
    truth = np.expm1(5.1)  # median of the true length distribution for both rows
    assert pr.median[0] == pytest.approx(truth, rel=0.15)
    assert 0.5 < pr.median[1] / pr.median[0] < 2.0  # was the cap (8192) with z ~ 1e3
    assert pr.var_log_total[1] < 2.0 * pr.var_log_total[0]
    assert pr.mean[1] < 2.0 * pr.mean[0]


def test_query_features_shape_names_and_indicators():
    assert FEATURE_NAMES[0] == "log_prompt_tokens"
    prompts = ["How do I sort a list in Python?\n```python\nx = [3, 1]\n```",
               "Prove that the integral of x^2 from 0 to 1 is 1/3.",
               "请用中文写一首关于春天的诗",
               '["Hi there", "Write a detailed essay about Rome"]']
    f = query_features(prompts)
    assert f.shape == (4, len(FEATURE_NAMES)) and f.dtype == np.float32
    col = {n: i for i, n in enumerate(FEATURE_NAMES)}
    assert f[0, col["has_code_block"]] == 1 and f[0, col["q_how"]] == 1 and f[1, col["has_code_block"]] == 0
    assert f[1, col["math_terms"]] == 1 and f[2, col["cjk_share"]] > 0.8 and f[0, col["cjk_share"]] == 0
    assert f[3, col["log_turns"]] == pytest.approx(np.log(2)) and f[0, col["log_turns"]] == 0
    assert f[3, col["asks_long"]] == 1 and f[3, col["q_write"]] == 1
    g = query_features(prompts[:2], input_tokens=np.array([10, 100]))
    np.testing.assert_allclose(g[:, 0], np.log1p([10, 100]))
    with pytest.raises(ValueError, match="input_tokens"):
        query_features(prompts[:2], input_tokens=np.array([1]))
    with pytest.raises(ValueError, match="prompt 1"):
        query_features(["ok", None])


def test_update_rejects_bad_input(fitted):
    with pytest.raises(ValueError, match="family"):
        add_new_model(fitted, np.zeros((1, F)), np.ones(1), family=G)
    with pytest.raises(ValueError, match="rows"):
        add_new_model(fitted, np.zeros((2, F)), np.ones(3), family=0)
    # features of the wrong width are named, not reshaped: (3, 2) holds 6 = 2 * F numbers, once read as 2 rows
    with pytest.raises(ValueError, match=r"features must be \(n, 3\)"):
        add_new_model(fitted, np.zeros((3, F - 1)), np.ones(2), family=0)
    with pytest.raises(ValueError, match=r"features must be \(n, 3\)"):
        add_new_model(fitted, np.zeros(2 * F), np.ones(2), family=0)
    with pytest.raises(ValueError, match=r"features must be \(n, 3\)"):
        add_new_model(fitted, np.zeros((1, 2, F)), np.ones(2), family=0)
    with pytest.raises(ValueError, match="family must be an int"):
        add_new_model(fitted, np.zeros((1, F)), np.ones(1), family=True)
    # one query as a flat (F,) vector is one row
    assert add_new_model(fitted, np.zeros(F), np.ones(1), family=0).meta["new_model"]["n_obs"] == 1


def test_predict_rejects_bad_y_true():
    post = _toy_posterior()
    x = np.zeros((50, 2), np.float32)
    m = np.zeros(50, int)
    for y, msg in ((np.full(50, np.nan), r"y_true\[0\] = nan"), (np.arange(70.0), r"y_true must be \(50,\)"),
                   (np.arange(10.0), r"y_true must be \(50,\)"), (-np.ones(50), r"y_true\[0\] = -1"),
                   (np.ones((50, 1)), r"y_true must be \(50,\)")):
        with pytest.raises(ValueError, match=msg):
            predict(post, x, m, y_true=y)
    assert np.all(np.isfinite(predict(post, x, m, y_true=np.full(50, 100.0)).crps))


def test_posterior_is_a_frozen_record(fitted):
    with pytest.raises(dataclasses.FrozenInstanceError):
        fitted.meta = {}


def test_nuts_sees_the_table_unpadded(world, monkeypatch):
    # padding (PAD_ROWS, for SVI's compiled-step reuse) would make NUTS evaluate 4096 rows for a 360-row table
    # (the spy records what NUTS is given and stops there: sampling is not what this test is about)
    seen = []

    class Seen(Exception):
        pass

    def spy(self, key, *args, **kwargs):
        seen.append([np.shape(a) for a in args])
        raise Seen

    monkeypatch.setattr(fit_module.MCMC, "run", spy)
    keep = (world["m"] < 6) & (np.arange(world["m"].size) % 500 < 60)  # 6 models x 60 rows
    with pytest.raises(Seen):
        fit_nuts(world["x"][keep], world["m"][keep], FAM[:6], world["tokens"][keep], num_warmup=20, num_samples=20)
    n = int(keep.sum())
    assert n == 360
    x_shape, m_shape, y_shape, w_shape = seen[0][:4]
    assert x_shape == (n, F + 1) and m_shape == y_shape == w_shape == (n,)
