"""LM Arena human-preference 55k: pairwise battles -> a tidy routing table with Bradley-Terry quality.

Source (first found wins): an explicit CSV/Parquet path; the file named by ``$BANDIT_SIM_ARENA55K``; the
local Hugging Face cache of ``lmarena-ai/arena-human-preference-55k`` or
``lmsys/lmsys-arena-human-preference-55k`` (offline: nothing is downloaded unless ``allow_download=True``).
The file's schema: ``id, model_a, model_b, prompt, response_a, response_b, winner_model_a,
winner_model_b, winner_tie``, where prompt / responses are JSON lists of turns (strings, sometimes null).

Preprocessing (every choice is also written into ``RoutingData.notes``):
- one prompt per battle (``prompt_id`` = the battle ``id``); the set has no timestamps, so ``order`` is
  the row order of the source and the split is 60/20/20 train/val/test in that order;
- tokens: cl100k_base (`bandit_sim.data.tokens`); ``input_tokens`` counts the user turns joined, output tokens
  count a response's turns joined (a null turn counts as empty);
- ``category``: a rule-based topic of the prompt text (`TOPIC_RULES`, first match wins:
  code > math > writing > reasoning > other);
- quality: Bradley-Terry strengths per topic, fitted on the training battles only, ties as half a win,
  each topic shrunk toward the global fit (`bandit_sim.data.bradley_terry`); quality[prompt, model] =
  P(model beats an average model on the prompt's topic). This is a *model* of quality (world kind
  "pairwise-model"): it is the same for every prompt of a topic;
- the table has one row per (prompt, model) for every model kept by the fit and priced in
  `bandit_sim.data.catalog`; a model that did not answer the prompt gets ``output_tokens`` imputed as its
  training median on that topic (its overall training median if it has fewer than
  ``MIN_IMPUTE_OBS`` responses there), flagged ``imputed_tokens = True``. ``pair_score`` holds the observed
  outcome for the two models that did answer (1 win, 0.5 tie, 0 loss; NaN otherwise);
- cost = price_of(model) x (input_tokens, output_tokens).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bandit_sim.data.bradley_terry import BradleyTerryModel, fit_bradley_terry_by_category
from bandit_sim.data.catalog import UnknownModelError, family_of, price_of
from bandit_sim.data.schema import DataValidationError, RoutingData, plain, validate_table
from bandit_sim.data.synthetic import SPLIT_NAMES, split_by_order
from bandit_sim.data.tokens import TOKENIZER as TOKENIZER_NAME
from bandit_sim.data.tokens import count_tokens
from hierarchical.storage import read_checked_npz, write_checked_npz

__all__ = [
    "ARENA55K_COLUMNS", "ENV_VAR", "HF_DATASET_IDS", "TOPICS", "TOPIC_RULES",
    "Arena55kFormatError", "Arena55kUnavailableError",
    "load_arena55k", "preprocess_arena55k", "read_arena55k_raw", "topic_of", "validate_arena55k",
]

ARENA55K_COLUMNS = ("id", "model_a", "model_b", "prompt", "response_a", "response_b",
                    "winner_model_a", "winner_model_b", "winner_tie")
HF_DATASET_IDS = ("lmarena-ai/arena-human-preference-55k", "lmsys/lmsys-arena-human-preference-55k")
ENV_VAR = "BANDIT_SIM_ARENA55K"
MIN_IMPUTE_OBS = 5
_CACHE_VERSION = "arena55k-tokens-v1"

#: Rule-based topics, tried in order on the lower-cased prompt text; the first match wins, else "other".
TOPIC_RULES: tuple[tuple[str, str], ...] = (
    ("code", r"```|\bdef |\bclass \w+[:(]|\bimport \w+|#include|\bfunction\b|\bpython\b|javascript|typescript"
             r"|\bjava\b|c\+\+|\brust\b|golang|\bsql\b|\bhtml\b|\bcss\b|\bregex|\bcode\b|\bcoding\b|\bscript\b"
             r"|\bbash\b|\bcompil|\bdebug|\bapi\b|\balgorithm|\bprogram"),
    ("math", r"\bmath|\bequation|\bsolve\b|\bintegral|\bderivative|\bcalculat|\bprobabilit|\bfraction"
             r"|\bpercent|\bsquare root|\bprime\b|\balgebra|\bgeometr|\btheorem|\d\s*[+*/^×÷=]\s*\d|\d\s+-\s+\d"),  # "12-05" (dates) is not math
    ("writing", r"\bwrite\b|\bwriting\b|\brewrite|\bessay|\bpoem|\bstory|\bstories|\bemail|\bletter\b|\blyrics"
                r"|\bsong\b|\bsummar|\bparaphrase|\bblog|\barticle|\bslogan|\bhaiku|\bjoke|\btweet|\bdraft\b"),
    ("reasoning", r"\bwhy\b|\bexplain|\breason|\briddle|\bpuzzle|\blogic|\bdeduc|\bif\b.*\bthen\b|\bhow many\b"
                  r"|\bwhich (?:one|is)\b|\btrue or false|\bcompare|\bdifference between"),
)
TOPICS: tuple[str, ...] = tuple(t for t, _ in TOPIC_RULES) + ("other",)

_HOW_TO = (
    "Provide the LM Arena human-preference 55k file in one of three ways:\n"
    "  1. pass its path: load_arena55k('/path/to/train.csv') or `--data arena55k` with "
    f"${ENV_VAR}=/path/to/train.csv (CSV or Parquet with columns {', '.join(ARENA55K_COLUMNS)});\n"
    f"  2. set the environment variable {ENV_VAR} to that file;\n"
    "  3. pre-download it into the Hugging Face cache while online, e.g.\n"
    "       python -c \"import datasets; datasets.load_dataset('lmarena-ai/arena-human-preference-55k', "
    "split='train')\"\n"
    "     (or `huggingface-cli download --repo-type dataset lmarena-ai/arena-human-preference-55k` and pass "
    "the train.csv it prints), or call load_arena55k(allow_download=True)."
)


class Arena55kUnavailableError(FileNotFoundError):
    """No copy of the 55k set could be found offline; the message says how to provide one."""


class Arena55kFormatError(DataValidationError):
    """A file that does not follow the 55k schema; the message names the column and the first bad rows."""


# --------------------------------------------------------------------------------------------- reading
def _read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path, dtype={"id": str, "model_a": str, "model_b": str}, keep_default_na=False)
    except Exception as exc:  # pandas / pyarrow parser errors: say which file
        raise Arena55kFormatError(f"{path}: cannot read as a {suffix[1:]} file: {exc}") from exc
    raise Arena55kFormatError(f"{path}: unknown file format {suffix!r}; use .csv or .parquet")


@contextlib.contextmanager
def _hf_offline(offline: bool):
    """Force (or leave) Hugging Face offline mode for the duration, restoring every flag after."""
    if not offline:
        yield
        return
    import datasets.config as dcfg
    import huggingface_hub.constants as hconst

    saved = (dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE, hconst.HF_HUB_OFFLINE,
             os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"))
    dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = hconst.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        yield
    finally:
        dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE, hconst.HF_HUB_OFFLINE = saved[:3]
        for key, value in zip(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"), saved[3:]):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _hf_load_dataset(dataset_id: str, cache_dir, allow_download: bool) -> pd.DataFrame:
    """Load one Hugging Face dataset id as a DataFrame (offline unless `allow_download`)."""
    import datasets

    with _hf_offline(not allow_download):
        ds = datasets.load_dataset(dataset_id, split="train", cache_dir=cache_dir,
                                   download_mode="reuse_dataset_if_exists")
    return ds.to_pandas()


def read_arena55k_raw(path: str | os.PathLike | None = None, *, hf_cache_dir=None,
                      allow_download: bool = False) -> tuple[pd.DataFrame, str]:
    """Find and read the raw 55k battles (explicit path, then $BANDIT_SIM_ARENA55K, then the HF cache).

    Args:
        path: a CSV/Parquet file in the 55k schema, or None to search.
        hf_cache_dir: Hugging Face datasets cache directory (None: the default cache).
        allow_download: let `datasets` download when the cache has no copy.

    Returns:
        (raw DataFrame with the 55k columns, a one-line description of the source).

    Raises:
        FileNotFoundError: an explicit path or the environment variable names a missing file.
        Arena55kUnavailableError: no source at all (the message says how to provide one).
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"arena55k: no file at {p.resolve()}.\n{_HOW_TO}")
        return _read_file(p), f"local file {p.resolve()}"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"arena55k: ${ENV_VAR} = {env!r} but there is no such file.\n{_HOW_TO}")
        return _read_file(p), f"local file {p.resolve()} (from ${ENV_VAR})"
    failures = []
    for dataset_id in HF_DATASET_IDS:
        try:
            df = _hf_load_dataset(dataset_id, hf_cache_dir, allow_download)
        except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
            failures.append(f"  - {dataset_id}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            continue
        mode = "downloaded or cached" if allow_download else "local Hugging Face cache, offline"
        return df, f"Hugging Face dataset {dataset_id} ({mode})"
    mode = "" if allow_download else " offline (nothing is downloaded unless allow_download=True)"
    raise Arena55kUnavailableError(
        f"arena55k: no local copy of the LM Arena human-preference 55k set found{mode}: no path given, "
        f"${ENV_VAR} unset, and the Hugging Face cache has neither id:\n" + "\n".join(failures) + "\n" + _HOW_TO)


# ---------------------------------------------------------------------------------------- validation
def _rows(df: pd.DataFrame, mask: np.ndarray, limit: int = 5) -> str:
    pos = np.flatnonzero(mask)
    ids = df["id"].iloc[pos[:limit]].tolist() if "id" in df.columns else []
    more = f" (and {pos.size - limit} more)" if pos.size > limit else ""
    return f"rows {pos[:limit].tolist()}{more} (id {ids})"


def _parse_turns(values: pd.Series, column: str, source: str, df: pd.DataFrame) -> list[list]:
    """Parse a column of JSON lists of turns; turns must be strings or null."""
    out: list[list] = []
    bad = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values.tolist()):
        if isinstance(v, str):
            try:
                turns = json.loads(v)
            except (json.JSONDecodeError, ValueError):
                turns = None
        elif isinstance(v, (list, tuple, np.ndarray)):
            turns = list(v)
        else:
            turns = None
        if not isinstance(turns, list) or not turns or not all(t is None or isinstance(t, str) for t in turns):
            bad[i] = True
            turns = []
        out.append(turns)
    if bad.any():
        example = repr(values.iloc[int(np.flatnonzero(bad)[0])])[:80]
        raise Arena55kFormatError(
            f"{source}: column {column!r}: expected a JSON list of turns (strings or null), e.g. "
            f"'[\"Hello\"]', found {example} at {_rows(df, bad)}")
    return out


def validate_arena55k(df: pd.DataFrame, source: str = "arena55k") -> pd.DataFrame:
    """Check a raw 55k table's columns, ids, model names and winner flags.

    Args:
        df: the raw battles, one row per battle.
        source: a name for messages.

    Returns:
        A copy with a fresh RangeIndex, ids and models as str and winner flags as int8.

    Raises:
        Arena55kFormatError: naming the column and the first bad rows.
    """
    missing = [c for c in ARENA55K_COLUMNS if c not in df.columns]
    if missing:
        raise Arena55kFormatError(f"{source}: missing column(s) {missing}; the 55k schema is "
                                  f"{', '.join(ARENA55K_COLUMNS)} (found {list(df.columns)})")
    if len(df) == 0:
        raise Arena55kFormatError(f"{source}: the file has no rows")
    df = df.reset_index(drop=True).copy()
    for col in ("id", "model_a", "model_b"):
        s = df[col]
        bad = (s.isna() | (s.astype(str).str.strip() == "")).to_numpy()
        if bad.any():
            raise Arena55kFormatError(f"{source}: column {col!r}: missing or empty values at {_rows(df, bad)}")
        df[col] = s.astype(str).str.strip()
    dup = df["id"].duplicated().to_numpy()
    if dup.any():
        raise Arena55kFormatError(f"{source}: column 'id': duplicate ids at {_rows(df, dup)}")
    flags = []
    for col in ("winner_model_a", "winner_model_b", "winner_tie"):
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isin(v, (0.0, 1.0))
        if bad.any():
            raise Arena55kFormatError(f"{source}: column {col!r}: values must be 0 or 1 "
                                      f"(found {plain(df[col].iloc[int(np.flatnonzero(bad)[0])])}) at {_rows(df, bad)}")
        flags.append(v)
    total = flags[0] + flags[1] + flags[2]
    bad = total != 1
    if bad.any():
        raise Arena55kFormatError(
            f"{source}: columns 'winner_model_a', 'winner_model_b', 'winner_tie': exactly one must be 1 per "
            f"battle, but they sum to {int(total[np.flatnonzero(bad)[0]])} at {_rows(df, bad)}")
    for col, v in zip(("winner_model_a", "winner_model_b", "winner_tie"), flags):
        df[col] = v.astype(np.int8)
    return df


# ---------------------------------------------------------------------------------------------- topics
def topic_of(prompts: Sequence[str]) -> np.ndarray:
    """Rule-based topic of each prompt (`TOPIC_RULES`, first match wins, else "other").

    Args:
        prompts: N prompt texts.

    Returns:
        (N,) object array of topic names from `TOPICS`.
    """
    text = pd.Series(list(prompts), dtype="object").fillna("").astype(str).str.lower()
    topic = np.full(len(text), "other", dtype=object)
    unset = np.ones(len(text), dtype=bool)
    for name, pattern in TOPIC_RULES:
        hit = text.str.contains(pattern, regex=True).to_numpy(dtype=bool) & unset
        topic[hit] = name
        unset &= ~hit
    return topic


# ---------------------------------------------------------------------------------------- token cache
def _token_counts(prompts: list[str], resp_a: list[str], resp_b: list[str], cache_dir) -> tuple[np.ndarray, ...]:
    """(input, output_a, output_b) token counts, cached in `cache_dir` by a hash of the texts."""

    path = None
    if cache_dir is not None:
        h = hashlib.sha256(_CACHE_VERSION.encode())
        for texts in (prompts, resp_a, resp_b):
            h.update(pd.util.hash_pandas_object(pd.Series(texts, dtype="object"), index=False).to_numpy().tobytes())
        path = Path(cache_dir) / f"arena55k-tokens-{h.hexdigest()[:20]}.npz"
        if path.is_file():
            try:
                z, _ = read_checked_npz(path, what="token-count cache", fmt=_CACHE_VERSION)
                if z["input"].shape == (len(prompts),):
                    return z["input"], z["output_a"], z["output_b"]
            except (ValueError, KeyError):
                pass  # a stale or damaged cache is recomputed (and rewritten below)
    n_in = count_tokens(prompts)
    n_a = count_tokens(resp_a)
    n_b = count_tokens(resp_b)
    if path is not None:
        write_checked_npz(path, {"input": n_in, "output_a": n_a, "output_b": n_b}, {"format": _CACHE_VERSION})
    return n_in, n_a, n_b


# -------------------------------------------------------------------------------------- preprocessing
def _join(turns_list: list[list]) -> tuple[list[str], np.ndarray]:
    joined = ["\n\n".join(t for t in turns if t is not None) for turns in turns_list]
    n_null = np.fromiter((sum(t is None for t in turns) for turns in turns_list), dtype=np.int64,
                         count=len(turns_list))
    return joined, n_null


def _kept_models(ma: np.ndarray, mb: np.ndarray, min_comparisons: int) -> tuple[list[str], dict[str, int]]:
    """Drop models with too few comparisons until every kept model has at least `min_comparisons`."""
    keep = set(ma) | set(mb)
    dropped: dict[str, int] = {}
    while True:
        m = np.fromiter(((a in keep) and (b in keep) for a, b in zip(ma, mb)), dtype=bool, count=len(ma))
        counts = pd.Series(np.concatenate([ma[m], mb[m]])).value_counts()
        low = {k: int(counts.get(k, 0)) for k in keep if counts.get(k, 0) < min_comparisons}
        if not low:
            return sorted(keep), dropped
        for k, n in low.items():
            dropped.setdefault(k, n)
        keep -= set(low)


def preprocess_arena55k(raw: pd.DataFrame, *, source: str = "arena55k", cache_dir=None,
                        min_comparisons: int = 20, l2_global: float = 1.0, l2_category: float = 4.0,
                        ) -> tuple[pd.DataFrame, list[str], BradleyTerryModel]:
    """Turn raw 55k battles into the tidy (prompt, model) table with Bradley-Terry quality.

    Args:
        raw: battles in the 55k schema, in the source's order.
        source: a name for messages and notes.
        cache_dir: where token counts are cached (None: no cache).
        min_comparisons: a model needs this many training comparisons (after excluding the others)
            to enter the Bradley-Terry fit.
        l2_global, l2_category: Bradley-Terry penalties (see `bandit_sim.data.bradley_terry`).

    Returns:
        (table, notes, bt): the tidy table (N_prompts x K_models rows, schema columns plus n_turns,
        imputed_tokens, pair_score), the notes, and the fitted Bradley-Terry model.
    """

    df = validate_arena55k(raw, source)
    n = len(df)
    prompt_turns = _parse_turns(df["prompt"], "prompt", source, df)
    resp_a_turns = _parse_turns(df["response_a"], "response_a", source, df)
    resp_b_turns = _parse_turns(df["response_b"], "response_b", source, df)
    prompts, _ = _join(prompt_turns)
    resp_a, null_a = _join(resp_a_turns)
    resp_b, null_b = _join(resp_b_turns)
    n_turns = np.fromiter((len(t) for t in prompt_turns), dtype=np.int64, count=n)
    n_in, n_out_a, n_out_b = _token_counts(prompts, resp_a, resp_b, cache_dir)
    topic = topic_of(prompts)
    split = split_by_order(n)
    ma = df["model_a"].to_numpy(dtype=object)
    mb = df["model_b"].to_numpy(dtype=object)
    score_a = df["winner_model_a"].to_numpy(np.float64) + 0.5 * df["winner_tie"].to_numpy(np.float64)
    train = split == 0
    n_split = np.bincount(split, minlength=3)
    notes = [
        f"source: {source}; {n} battles, {len(set(ma) | set(mb))} models",
        f"order: the 55k set has no timestamps, so order = row order of the source; split 60/20/20 "
        f"train/val/test in that order ({n_split[0]}/{n_split[1]}/{n_split[2]} prompts)",
        f"tokens: {TOKENIZER_NAME}; input_tokens = the user turns joined (earlier answers of multi-turn "
        f"battles not included); output_tokens = a response's turns joined",
        "category: rule-based topic of the prompt text (first match of code > math > writing > reasoning, "
        "else other; bandit_sim.data.arena55k.TOPIC_RULES): "
        + ", ".join(f"{t} {int((topic == t).sum())}" for t in TOPICS),
    ]
    if (null_a + null_b).sum():
        notes.append(f"responses with null turns (counted as empty text): {int((null_a > 0).sum() + (null_b > 0).sum())}")

    # Bradley-Terry on the training battles
    self_pair = ma == mb
    if self_pair.any():
        notes.append(f"excluded from the Bradley-Terry fit: {int(self_pair.sum())} battles of a model against "
                     f"itself (their tokens are kept, from response_a)")
    fit_rows = train & ~self_pair
    bt_models, dropped = _kept_models(ma[fit_rows], mb[fit_rows], min_comparisons)
    if dropped:
        notes.append(f"excluded models with fewer than {min_comparisons} training comparisons: "
                     + ", ".join(f"{k} ({v})" for k, v in sorted(dropped.items())))
    if len(bt_models) < 2:
        raise Arena55kFormatError(
            f"{source}: fewer than 2 models have >= {min_comparisons} training comparisons; "
            f"cannot fit Bradley-Terry (lower min_comparisons or provide more battles)")
    in_bt = np.isin(ma, bt_models) & np.isin(mb, bt_models)
    fit_rows &= in_bt
    excluded_cmp = int((train & ~self_pair & ~in_bt).sum())
    if excluded_cmp:
        notes.append(f"training battles left out of the fit because a side is an excluded model: {excluded_cmp}")
    bt = fit_bradley_terry_by_category(ma[fit_rows], mb[fit_rows], score_a[fit_rows], topic[fit_rows],
                                       models=bt_models, categories=TOPICS, l2_global=l2_global,
                                       l2_category=l2_category)
    notes.append(
        f"quality: Bradley-Terry per topic fitted on {int(fit_rows.sum())} training battles (ties = half a win "
        f"each side; L2 {l2_global} toward 0 globally, {l2_category} toward the global strengths per topic); "
        f"quality = P(model beats an average model on the prompt's topic), the same for every prompt of a "
        f"topic (a pairwise-model world, not observed quality)")

    # routing models: in the fit and priced
    prices = {}
    unpriced = []
    for m in bt_models:
        try:
            prices[m] = price_of(m)
        except UnknownModelError:
            unpriced.append(m)
    models = [m for m in bt_models if m in prices]
    if unpriced:
        notes.append(f"excluded from the table (no price in bandit_sim.data.catalog; they still inform the "
                     f"Bradley-Terry fit): {', '.join(unpriced)}")
    if not models:
        raise Arena55kFormatError(f"{source}: none of the fitted models has a price in bandit_sim.data.catalog")
    k = len(models)
    idx_a = pd.Index(models).get_indexer(ma).astype(np.int64)   # -1: not a routing model
    idx_b = pd.Index(models).get_indexer(mb).astype(np.int64)

    # output tokens: observed where the model answered, else its training median on the topic
    topic_idx = pd.Index(TOPICS).get_indexer(topic).astype(np.int64)
    obs_model = np.concatenate([idx_a, idx_b])
    obs = pd.DataFrame({"m": obs_model, "t": np.concatenate([topic_idx, topic_idx]),
                        "y": np.concatenate([n_out_a, n_out_b]), "train": np.concatenate([train, train])})
    obs = obs[(obs["m"] >= 0) & obs["train"]]
    overall = obs.groupby("m")["y"].median().reindex(range(k)).to_numpy()
    cell = obs.groupby(["t", "m"])["y"].agg(["median", "size"])
    impute = np.tile(overall, (len(TOPICS), 1))                                       # (T, K)
    enough = cell[cell["size"] >= MIN_IMPUTE_OBS]
    impute[enough.index.get_level_values("t"), enough.index.get_level_values("m")] = enough["median"].to_numpy()
    impute = np.rint(impute).astype(np.int64)
    out_tok = impute[topic_idx]                                                       # (N, K)
    imputed = np.ones((n, k), dtype=bool)
    pair = np.full((n, k), np.nan, dtype=np.float32)
    rows = np.arange(n)
    for idx, tok, score in ((idx_b, n_out_b, 1.0 - score_a), (idx_a, n_out_a, score_a)):  # a last: wins self-pairs
        ok = idx >= 0
        out_tok[rows[ok], idx[ok]] = tok[ok]
        imputed[rows[ok], idx[ok]] = False
        pair[rows[ok], idx[ok]] = score[ok]
    n_imp = int(imputed.sum())
    none_observed = int(imputed.all(axis=1).sum())
    if none_observed:
        notes.append(f"prompts kept although neither answer is from a table model (all their output_tokens "
                     f"imputed): {none_observed}")
    notes.append(f"output_tokens imputed for {n_imp} of {n * k} (prompt, model) rows ({n_imp / (n * k):.1%}): "
                 f"the model's training median on the topic (overall training median when it has fewer than "
                 f"{MIN_IMPUTE_OBS} there); flagged by imputed_tokens")
    notes.append("seed is not used: the 55k split and fit are deterministic")

    quality = bt.quality_table()[:, [bt.models.index(m) for m in models]]             # (T, K)
    p_in = np.array([prices[m][0] for m in models])
    p_out = np.array([prices[m][1] for m in models])
    cost = p_in[None, :] * n_in[:, None] + p_out[None, :] * out_tok                   # (N, K)
    families = [family_of(m) for m in models]
    fam_names = sorted(set(families))
    prompt_codes, prompt_uniques = pd.factorize(pd.Series(prompts, dtype="object"))
    pid_rows = np.repeat(rows, k)
    table = pd.DataFrame({
        "prompt_id": pd.Categorical.from_codes(pid_rows, dtype=pd.CategoricalDtype(pd.Index(df["id"].to_numpy()))),
        "prompt": pd.Categorical.from_codes(np.repeat(prompt_codes, k), dtype=pd.CategoricalDtype(pd.Index(np.asarray(prompt_uniques, dtype=object)))),
        "model": pd.Categorical.from_codes(np.tile(np.arange(k), n), models),
        "family": pd.Categorical.from_codes(np.tile([fam_names.index(f) for f in families], n), fam_names),
        "quality": quality[topic_idx].reshape(-1).astype(np.float32),
        "output_tokens": out_tok.reshape(-1),
        "input_tokens": np.repeat(n_in, k),
        "cost_usd": cost.reshape(-1),
        "order": pid_rows.astype(np.int64),
        "category": pd.Categorical.from_codes(np.repeat(topic_idx, k), list(TOPICS)),
        "split": pd.Categorical.from_codes(np.repeat(split, k), list(SPLIT_NAMES)),
        "n_turns": np.repeat(n_turns, k),
        "imputed_tokens": imputed.reshape(-1),
        "pair_score": pair.reshape(-1),
    })
    return table, notes, bt


def load_arena55k(path: str | os.PathLike | None = None, *, seed: int = 0, cache_dir=None,
                  hf_cache_dir=None, allow_download: bool = False, min_comparisons: int = 20,
                  l2_global: float = 1.0, l2_category: float = 4.0):
    """Load LM Arena human-preference 55k as a pairwise-model `RoutingData` (see the module docstring).

    Args:
        path: CSV/Parquet in the 55k schema; None: $BANDIT_SIM_ARENA55K, then the local HF cache.
        seed: accepted for a uniform `load_data` interface; unused (the split follows the data order).
        cache_dir: where token counts are cached (None: no cache).
        hf_cache_dir: Hugging Face datasets cache directory (None: the default).
        allow_download: allow `datasets` to download the set when no local copy exists.
        min_comparisons: minimum training comparisons for a model to enter the fit.
        l2_global, l2_category: Bradley-Terry penalties.

    Returns:
        `bandit_sim.data.loaders.RoutingData` named "arena55k", quality_kind "bradley-terry", world_kind
        "pairwise-model"; `extra` holds the fitted Bradley-Terry model (`bradley_terry`, a JSON-ready dict).

    Raises:
        Arena55kUnavailableError: no source offline (the message says how to provide one).
        Arena55kFormatError: the file breaks the 55k schema (names the column and rows).
    """

    raw, source = read_arena55k_raw(path, hf_cache_dir=hf_cache_dir, allow_download=allow_download)
    table, notes, bt = preprocess_arena55k(raw, source=source, cache_dir=cache_dir,
                                           min_comparisons=min_comparisons, l2_global=l2_global,
                                           l2_category=l2_category)
    table = validate_table(table, source="arena55k")
    return RoutingData("arena55k", table, "bradley-terry", "pairwise-model", notes,
                       extra={"bradley_terry": bt.to_dict(), "source": source})
