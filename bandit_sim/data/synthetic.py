"""A synthetic, family-structured routing world in the tidy schema, with its true parameters.

Generative model (f = family of model k, c = category of prompt j, r = model's tier in its family):

    quality     theta[k, c] = mu[f] + tier_step[f] * (r - (M-1)/2) + model_noise[k]
                              + fam_cat[f, c] + model_cat[k, c]                      (logit scale)
                p[j, k]     = sigmoid(theta[k, c_j] - difficulty[j]),  difficulty[j] ~ N(0, sd_d^2)
                quality     = p[j, k] ("fractional") or Bernoulli(p[j, k]) ("bernoulli")
    input       log input_tokens[j] ~ N(in_mu[c_j], in_sd^2)
    output      log y[j, k] = len_mu[k] + len_cat[f, c_j] + len_slope[f] * z[j] + len_sigma[k] * t_nu
                with z[j] = log1p(input_tokens[j]) - INPUT_CENTRE and t_nu a Student-t draw (heavy tails),
                output_tokens = clip(round(y), 1, max_output_tokens)
    prices      output $/token = family base (log-uniform 0.2..30 $/1M) * 4 ** (r - (M-1)/2);
                input $/token = output / 3;  cost = in_price * input_tokens + out_price * output_tokens

The true parameters come from their own random stream (spawned from `seed`), so the same seed gives
the same world whatever `n_prompts` is; prompt-level draws come from a second stream.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import expit

__all__ = ["INPUT_CENTRE", "SPLIT_NAMES", "generate_synthetic", "split_by_order"]

SPLIT_NAMES = ("train", "val", "test")
#: log1p(input tokens) is centred at this value before the length slope applies (about 90 tokens).
INPUT_CENTRE = 4.5
_MAX_ROWS = 200_000_000


def split_by_order(n: int, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> np.ndarray:
    """Split codes for n prompts taken in arrival order: the first 60% train, next 20% val, rest test.

    Args:
        n: number of prompts, in order.
        fractions: (train, val, test) fractions summing to 1.

    Returns:
        (n,) int8 codes into SPLIT_NAMES (0 train, 1 val, 2 test), non-decreasing.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    n_train = int(round(fractions[0] * n))
    n_val = int(round((fractions[0] + fractions[1]) * n)) - n_train
    codes = np.full(n, 2, dtype=np.int8)
    codes[:n_train] = 0
    codes[n_train:n_train + n_val] = 1
    return codes


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _draw_truth(rng: np.random.Generator, n_families: int, models_per_family: int,
                n_categories: int, student_t_df: float) -> dict:
    f_, m_, c_ = n_families, models_per_family, n_categories
    k_ = f_ * m_
    family_of_model = np.repeat(np.arange(f_), m_)                     # (K,)
    tier = np.tile(np.arange(m_), f_) - (m_ - 1) / 2.0                 # (K,) centred tier
    # quality (logit scale)
    fam_mu = rng.normal(0.3, 0.6, f_)
    tier_step = rng.uniform(0.3, 0.9, f_)
    model_noise = rng.normal(0.0, 0.2, k_)
    fam_cat = rng.normal(0.0, 0.5, (f_, c_))
    model_cat = rng.normal(0.0, 0.25, (k_, c_))
    theta = (fam_mu[family_of_model] + tier_step[family_of_model] * tier + model_noise)[:, None] \
        + fam_cat[family_of_model] + model_cat                            # (K, C)
    difficulty_sd = 0.8
    # lengths
    in_mu = rng.uniform(np.log(20.0), np.log(400.0), c_)
    in_sd = 0.9
    fam_len = rng.uniform(np.log(120.0), np.log(600.0), f_)
    len_mu = fam_len[family_of_model] + 0.15 * tier + rng.normal(0.0, 0.2, k_)
    len_cat = rng.normal(0.0, 0.4, (f_, c_))
    len_slope = rng.normal(0.25, 0.1, f_)
    len_sigma = rng.uniform(0.35, 0.75, k_)
    # prices ($ per token)
    fam_price = np.exp(rng.uniform(np.log(0.2), np.log(30.0), f_)) * 1e-6
    price_out = fam_price[family_of_model] * 4.0 ** tier
    price_in = price_out / 3.0
    cat_probs = rng.dirichlet(np.full(c_, 5.0))
    # expected success probability over the prompt difficulty (Gauss-Hermite, probabilists')
    x, w = hermegauss(60)
    quality_prob = (expit(theta[..., None] - difficulty_sd * x) * w).sum(-1) / np.sqrt(2 * np.pi)
    return dict(
        family_of_model=family_of_model, tier=tier, family_quality_mean=fam_mu, tier_step=tier_step,
        theta=theta, difficulty_sd=difficulty_sd, quality_prob=quality_prob,
        input_log_mean=in_mu, input_log_sd=in_sd,
        length_log_mean=len_mu, length_family_category=len_cat, length_slope=len_slope,
        length_sigma=len_sigma, student_t_df=float(student_t_df), input_centre=INPUT_CENTRE,
        price_in=price_in, price_out=price_out, category_probs=cat_probs,
    )


def generate_synthetic(n_prompts: int = 2000, n_families: int = 4, models_per_family: int = 3,
                       n_categories: int = 5, seed: int = 0, *, quality: str = "fractional",
                       student_t_df: float = 4.0, max_output_tokens: int = 8192,
                       return_truth: bool = False):
    """Generate a synthetic full-information routing table (see the module docstring for the model).

    Args:
        n_prompts: N prompts (arrival order = row order of prompts).
        n_families: F families; models are named "fam{f}-m{r}".
        models_per_family: M models per family (tier r = 0 cheapest/weakest .. M-1 premium).
        n_categories: C categories "cat{c}".
        seed: non-negative int; the same seed gives an identical table.
        quality: "fractional" (quality = success probability) or "bernoulli" (0/1 draws).
        student_t_df: degrees of freedom of the log-length noise (smaller = heavier tails), > 0.
        max_output_tokens: upper clip of output lengths (a model's max_tokens).
        return_truth: also return the true parameters.

    Returns:
        A DataFrame with N*K rows (prompt-major: row j*K + k), columns prompt_id, prompt, model,
        family, quality (float32), output_tokens (int64), input_tokens (int64), cost_usd (float32),
        order (int64), category, split; string columns are pandas Categoricals to keep 10^6 x 12
        rows compact. With `return_truth`, (df, truth) where truth holds the parameters as arrays:
        model/family/category names, theta (K, C), quality_prob (K, C) = E_d[p], difficulty (N,),
        prices (K,), length parameters, category_of_prompt (N,), ...
    """
    n_prompts = _check_int("n_prompts", n_prompts, 1)
    n_families = _check_int("n_families", n_families, 1)
    models_per_family = _check_int("models_per_family", models_per_family, 1)
    n_categories = _check_int("n_categories", n_categories, 1)
    seed = _check_int("seed", seed, 0)
    max_output_tokens = _check_int("max_output_tokens", max_output_tokens, 1)
    if quality not in ("fractional", "bernoulli"):
        raise ValueError(f"quality must be 'fractional' or 'bernoulli', got {quality!r}")
    if not (np.isfinite(student_t_df) and student_t_df > 0):
        raise ValueError(f"student_t_df must be a positive number, got {student_t_df!r}")
    k = n_families * models_per_family
    if n_prompts * k > _MAX_ROWS:
        raise ValueError(f"n_prompts * n_models = {n_prompts * k:,} rows exceeds the limit of {_MAX_ROWS:,}")

    ss_truth, ss_data = np.random.SeedSequence(seed).spawn(2)
    truth = _draw_truth(np.random.default_rng(ss_truth), n_families, models_per_family, n_categories,
                        student_t_df)
    rng = np.random.default_rng(ss_data)
    fam = truth["family_of_model"]

    # per-prompt draws
    cat = rng.choice(n_categories, size=n_prompts, p=truth["category_probs"]).astype(np.int16)  # (N,)
    log_in = truth["input_log_mean"][cat] + truth["input_log_sd"] * rng.standard_normal(n_prompts)
    input_tokens = np.clip(np.rint(np.exp(log_in)), 1, 32768).astype(np.int64)                 # (N,)
    difficulty = (truth["difficulty_sd"] * rng.standard_normal(n_prompts)).astype(np.float32)  # (N,)
    z = (np.log1p(input_tokens) - INPUT_CENTRE).astype(np.float32)                             # (N,)

    # per-(prompt, model) draws, float32 (N, K)
    theta = truth["theta"].astype(np.float32)
    p = expit(theta.T[cat] - difficulty[:, None])                                              # (N, K)
    if quality == "bernoulli":
        q = (rng.random((n_prompts, k), dtype=np.float32) < p).astype(np.float32)
    else:
        q = p.astype(np.float32)
    loc = (truth["length_log_mean"][None, :] + truth["length_family_category"][fam][:, cat].T
           + truth["length_slope"][fam][None, :] * z[:, None]).astype(np.float32)            # (N, K)
    noise = rng.standard_t(student_t_df, size=(n_prompts, k)).astype(np.float32)
    log_out = loc + truth["length_sigma"].astype(np.float32)[None, :] * noise
    out_tokens = np.clip(np.rint(np.exp(np.minimum(log_out, 30.0))), 1, max_output_tokens).astype(np.int64)
    cost = (truth["price_in"][None, :] * input_tokens[:, None]
            + truth["price_out"][None, :] * out_tokens).astype(np.float32)

    # tidy, prompt-major layout with categorical string columns
    model_names = [f"fam{f}-m{r}" for f in range(n_families) for r in range(models_per_family)]
    family_names = [f"fam{f}" for f in range(n_families)]
    cat_names = [f"cat{c}" for c in range(n_categories)]
    # prompt names are built column-wise (pyarrow strings) and each category index is validated once
    idx = pd.Series(np.arange(n_prompts)).astype("str")
    pid_names = pd.Index("syn-" + idx.str.zfill(len(str(n_prompts - 1))))
    prompt_text = pd.Index("synthetic prompt " + idx + " (" + pd.Series(np.asarray(cat_names)[cat]) + ", "
                           + pd.Series(input_tokens).astype("str") + " tokens)")
    pid_dtype = pd.CategoricalDtype(pid_names)
    text_dtype = pd.CategoricalDtype(prompt_text)
    prompt_codes = np.repeat(np.arange(n_prompts, dtype=np.int32), k)
    model_codes = np.tile(np.arange(k, dtype=np.int16), n_prompts)
    df = pd.DataFrame({
        "prompt_id": pd.Categorical.from_codes(prompt_codes, dtype=pid_dtype),
        "prompt": pd.Categorical.from_codes(prompt_codes, dtype=text_dtype),
        "model": pd.Categorical.from_codes(model_codes, model_names),
        "family": pd.Categorical.from_codes(np.tile(fam.astype(np.int16), n_prompts), family_names),
        "quality": q.reshape(-1),
        "output_tokens": out_tokens.reshape(-1),
        "input_tokens": np.repeat(input_tokens, k),
        "cost_usd": cost.reshape(-1),
        "order": np.repeat(np.arange(n_prompts, dtype=np.int64), k),
        "category": pd.Categorical.from_codes(np.repeat(cat, k), cat_names),
        "split": pd.Categorical.from_codes(np.repeat(split_by_order(n_prompts), k), list(SPLIT_NAMES)),
    })
    if not return_truth:
        return df
    truth.update(model_names=tuple(model_names), family_names=tuple(family_names),
                 category_names=tuple(cat_names), category_of_prompt=cat, difficulty=difficulty,
                 quality_kind=quality, max_output_tokens=max_output_tokens)
    return df, truth
