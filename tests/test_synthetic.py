"""Synthetic world generator: schema, determinism, sizes, recovery of the true parameters, argument checks."""

import numpy as np
import pandas as pd
import pytest

from bandit_sim.data.synthetic import INPUT_CENTRE, SPLIT_NAMES, generate_synthetic, split_by_order

COLUMNS = ["prompt_id", "prompt", "model", "family", "quality", "output_tokens", "input_tokens",
           "cost_usd", "order", "category", "split"]


def test_schema_sizes_and_ranges():
    df = generate_synthetic(n_prompts=500, n_families=3, models_per_family=2, n_categories=4, seed=1)
    assert list(df.columns) == COLUMNS
    assert len(df) == 500 * 6
    assert df["prompt_id"].nunique() == 500 and df["model"].nunique() == 6
    assert df["family"].nunique() == 3 and set(df["category"].unique()) <= {f"cat{c}" for c in range(4)}
    assert not df.duplicated(["prompt_id", "model"]).any()
    assert df["quality"].between(0, 1).all() and df["quality"].dtype == np.float32
    assert df["output_tokens"].dtype == np.int64 and (df["output_tokens"] >= 1).all()
    assert df["input_tokens"].dtype == np.int64 and (df["input_tokens"] >= 1).all()
    assert (df["cost_usd"] > 0).all() and df["order"].dtype == np.int64
    assert not df.isna().any().any()
    # each model belongs to exactly one family, each prompt to one category/split/order
    assert (df.groupby("model", observed=True)["family"].nunique() == 1).all()
    per_prompt = df.groupby("prompt_id", observed=True)[["category", "split", "order", "input_tokens"]].nunique()
    assert (per_prompt == 1).all().all()


def test_split_is_60_20_20_in_arrival_order():
    df = generate_synthetic(n_prompts=1000, seed=2)
    prompts = df.drop_duplicates("prompt_id").sort_values("order")
    counts = prompts["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (600, 200, 200)
    code = prompts["split"].map({s: i for i, s in enumerate(SPLIT_NAMES)}).to_numpy(dtype=int)
    assert np.all(np.diff(code) >= 0)
    assert prompts["order"].tolist() == list(range(1000))
    np.testing.assert_array_equal(split_by_order(5), [0, 0, 0, 1, 2])
    assert split_by_order(0).shape == (0,)


def test_deterministic_given_seed():
    a = generate_synthetic(n_prompts=300, seed=7)
    b = generate_synthetic(n_prompts=300, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = generate_synthetic(n_prompts=300, seed=8)
    assert not np.array_equal(a["output_tokens"].to_numpy(), c["output_tokens"].to_numpy())
    assert not np.array_equal(a["quality"].to_numpy(), c["quality"].to_numpy())
    # the world (true parameters) does not depend on how many prompts are drawn
    _, t1 = generate_synthetic(n_prompts=10, seed=7, return_truth=True)
    _, t2 = generate_synthetic(n_prompts=400, seed=7, return_truth=True)
    np.testing.assert_array_equal(t1["theta"], t2["theta"])
    np.testing.assert_array_equal(t1["price_out"], t2["price_out"])


def test_truth_recovery():
    n = 30_000
    df, truth = generate_synthetic(n_prompts=n, seed=3, return_truth=True)
    k, c = truth["theta"].shape
    model_idx = df["model"].cat.codes.to_numpy()
    cat_idx = df["category"].cat.codes.to_numpy()
    # quality: empirical mean per (model, category) vs the expected success probability
    q = df["quality"].to_numpy(dtype=np.float64)
    cell = model_idx * c + cat_idx
    n_cell = np.bincount(cell, minlength=k * c)
    mean = np.bincount(cell, q, minlength=k * c) / n_cell
    sd = np.sqrt(np.bincount(cell, q ** 2, minlength=k * c) / n_cell - mean ** 2)
    z = (mean - truth["quality_prob"].reshape(-1)) / (sd / np.sqrt(n_cell))
    assert np.max(np.abs(z)) < 5, np.max(np.abs(z))
    # output lengths: per model, OLS of log(tokens) on category one-hot + centred log input length
    y = np.log(df["output_tokens"].to_numpy(dtype=np.float64))
    zin = np.log1p(df["input_tokens"].to_numpy(dtype=np.float64)) - INPUT_CENTRE
    fam = truth["family_of_model"]
    for m in range(k):
        rows = model_idx == m
        x = np.column_stack([np.eye(c)[cat_idx[rows]], zin[rows]])
        coef, *_ = np.linalg.lstsq(x, y[rows], rcond=None)
        expected = truth["length_log_mean"][m] + truth["length_family_category"][fam[m]]
        assert np.max(np.abs(coef[:c] - expected)) < 0.1, (m, coef[:c], expected)
        assert abs(coef[c] - truth["length_slope"][fam[m]]) < 0.05
        resid = y[rows] - x @ coef
        kurt = np.mean(resid ** 4) / np.mean(resid ** 2) ** 2 - 3.0
        assert kurt > 1.0  # Student-t(4) noise: heavy tails on the log scale
    # cost is exactly price x tokens
    cost = (truth["price_in"][model_idx] * df["input_tokens"].to_numpy()
            + truth["price_out"][model_idx] * df["output_tokens"].to_numpy())
    np.testing.assert_allclose(df["cost_usd"].to_numpy(), cost, rtol=1e-5)
    # premium tiers cost more and (on average) answer better within each family
    assert np.all(np.diff(truth["price_out"].reshape(-1, 3), axis=1) > 0)
    assert truth["quality_prob"].mean(axis=1).reshape(-1, 3)[:, 2].mean() > \
        truth["quality_prob"].mean(axis=1).reshape(-1, 3)[:, 0].mean()


def test_bernoulli_quality():
    df, truth = generate_synthetic(n_prompts=20_000, n_families=2, models_per_family=2, seed=4,
                                   quality="bernoulli", return_truth=True)
    assert set(np.unique(df["quality"])) <= {0.0, 1.0}
    means = df.groupby("model", observed=True)["quality"].mean().to_numpy()
    cat_p = np.bincount(truth["category_of_prompt"], minlength=5) / 20_000
    expected = truth["quality_prob"] @ cat_p
    np.testing.assert_allclose(means, expected, atol=0.02)


@pytest.mark.parametrize("kwargs, err, msg", [
    ({"n_prompts": 0}, ValueError, "n_prompts must be >= 1"),
    ({"n_prompts": -5}, ValueError, "n_prompts"),
    ({"n_prompts": 10.5}, TypeError, "n_prompts must be an int"),
    ({"n_families": True}, TypeError, "n_families must be an int"),
    ({"models_per_family": 0}, ValueError, "models_per_family"),
    ({"n_categories": 0}, ValueError, "n_categories"),
    ({"seed": -1}, ValueError, "seed"),
    ({"quality": "graded"}, ValueError, "quality must be"),
    ({"student_t_df": 0.0}, ValueError, "student_t_df"),
    ({"n_prompts": 10**8, "n_families": 10}, ValueError, "exceeds the limit"),
])
def test_argument_validation(kwargs, err, msg):
    with pytest.raises(err, match=msg):
        generate_synthetic(**kwargs)


def test_passes_the_project_validator():
    schema = pytest.importorskip("bandit_sim.data.schema")
    df = generate_synthetic(n_prompts=200, seed=5)
    schema.validate_table(df, source="synthetic")


@pytest.mark.slow
def test_million_prompts_fast_and_compact():
    import time
    t0 = time.perf_counter()
    df = generate_synthetic(n_prompts=1_000_000, seed=0)
    elapsed = time.perf_counter() - t0
    assert len(df) == 12_000_000
    assert elapsed < 60, elapsed
    assert df.memory_usage(deep=True).sum() < 1.5e9
