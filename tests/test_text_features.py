"""The local text featurizer and user-supplied feature vectors (validation names the row)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bandit_sim.data.loaders import load_data
from bandit_sim.data.schema import DataValidationError, validate_table
from bandit_sim.data import text_features as TF
from bandit_sim.data.text_features import (BiasOnly, GivenFeatures, TextFeaturizer, featurizer_for_table,
                                           featurizer_from_arrays, transform_table)
from bandit_sim.sim.world import world_from_table
from hierarchical.storage import read_checked_npz, write_checked_npz

PROMPTS = ["What is the capital of France?", "Write a python function to sort a list",
           "Solve 2x + 3 = 7 for x", "Translate 'good morning' into German", "def f(x): return x ** 2",
           "Prove that the square root of 2 is irrational", "Summarise the plot of Hamlet in two lines",
           "What is 17 times 23?", "Explain recursion to a child", "Write SQL that counts rows per user"] * 3


def test_text_featurizer_shapes_standardised_and_deterministic(tmp_path):
    f = TextFeaturizer.fit(PROMPTS, d=8, seed=0, n_hash=2 ** 10)
    x = f.transform(PROMPTS)
    assert x.shape == (len(PROMPTS), 9) and x.dtype == np.float32 and f.dim == 9
    np.testing.assert_array_equal(x[:, 0], 1.0)
    np.testing.assert_allclose(x[:, 1:].mean(0), 0.0, atol=1e-5)
    assert np.all(np.abs(x[:, 1:].std(0) - 1.0) < 1e-3) or np.all(x[:, 1:].std(0) <= 1.0 + 1e-3)
    # refit: same numbers; saved as arrays (no pickle) and restored: same features
    np.testing.assert_array_equal(TextFeaturizer.fit(PROMPTS, d=8, seed=0, n_hash=2 ** 10).transform(PROMPTS), x)
    path = write_checked_npz(tmp_path / "f.npz", f.to_arrays(), {"format": "x"})
    arrays, _ = read_checked_npz(path, error=ValueError, what="f", fmt="x")
    np.testing.assert_array_equal(featurizer_from_arrays(arrays).transform(["a new query"]), f.transform(["a new query"]))
    # a tiny training set still gives D = d + 1 (zero-padded basis)
    assert TextFeaturizer.fit(PROMPTS[:3], d=8, n_hash=2 ** 10).transform(PROMPTS).shape == (len(PROMPTS), 9)


def _table(features=None, prompt=True):
    rows = []
    for i in range(6):
        for m in ("a", "b"):
            r = dict(prompt_id=f"p{i}", model=m, quality=0.5, output_tokens=10, split="train" if i < 4 else "test")
            if prompt:
                r["prompt"] = PROMPTS[i]
            if features is not None:
                r["features"] = features[i]
            rows.append(r)
    return pd.DataFrame(rows)


def test_projection_equals_the_sparse_product_and_its_cache_follows_the_basis():
    f = TextFeaturizer.fit(PROMPTS, d=8, seed=0, n_hash=2 ** 10)
    x = TF.tfidf(TF._tf(PROMPTS, 2 ** 10), f.idf)
    basis = f.svd.copy()
    want = np.asarray(x @ basis.T, np.float32)
    np.testing.assert_array_equal(TF.project(x, basis), want)  # bit for bit, first call (fills the cache)
    np.testing.assert_array_equal(TF.project(x[:1], basis), want[:1])  # cached transpose, one row
    key = id(basis)
    assert key in TF._BASIS_T
    with pytest.raises(ValueError):  # cached: frozen, so an in-place change cannot leave a stale transpose
        basis[0] += 1.0
    del basis
    assert key not in TF._BASIS_T  # dropped with its basis: no stale transpose, no leak


def test_user_features_validated_naming_the_row():
    ok = [[float(i), 1.0, -2.0] for i in range(6)]
    validate_table(_table(ok))
    ragged = [list(v) for v in ok]
    ragged[3] = [1.0, 2.0]
    with pytest.raises(DataValidationError, match=r"ragged.*rows 6, 7.*'p3'|ragged.*'p3'"):
        validate_table(_table(ragged))
    bad = [list(v) for v in ok]
    bad[2] = [1.0, float("nan"), 0.0]
    with pytest.raises(DataValidationError, match=r"non-finite.*'p2'"):
        validate_table(_table(bad))
    f, note = featurizer_for_table(_table(ok).query("split == 'train'"))
    assert isinstance(f, GivenFeatures) and f.dim == 4 and "user-supplied" in note
    x = transform_table(f, _table(ok), ["p4", "p5"])
    assert x.shape == (2, 4) and np.all(x[:, 0] == 1.0)


def test_features_from_a_side_table():
    side = pd.DataFrame({"prompt_id": [f"p{i}" for i in range(6)], "features": [[float(i), 2.0 * i] for i in range(6)]})
    t = _table()
    f, note = featurizer_for_table(t[t["split"] == "train"], side=side)
    assert f.dim == 3 and "user-supplied" in note
    x = transform_table(f, t, ["p5", "p0"], side=side)
    assert x[0, 1] > x[1, 1]
    bad = side.copy()
    bad.at[4, "features"] = [1.0]
    with pytest.raises(DataValidationError, match=r"ragged.*prompt_id 'p4'"):
        transform_table(f, t, ["p4"], side=bad)


def test_no_text_no_features_is_bias_only():
    t = _table(prompt=False)
    t["prompt"] = ""
    f, note = featurizer_for_table(t[t["split"] == "train"])
    assert isinstance(f, BiasOnly) and "bias only" in note
    np.testing.assert_array_equal(transform_table(f, t, ["p0", "p4"]), np.ones((2, 1), np.float32))


def test_world_carries_x():
    rd = load_data("routerbench")
    table = rd.table
    f, _ = featurizer_for_table(table[table["split"] == "train"].head(3000), d=8)
    w0, info = world_from_table(table, "val")
    assert w0.x.shape == (w0.quality.shape[0], 1)
    x = transform_table(f, table, list(info.prompt_ids))
    w, _ = world_from_table(table, "val", x=x)
    assert w.x.shape == (w.quality.shape[0], 9)
