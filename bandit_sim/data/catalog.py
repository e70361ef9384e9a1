"""The one place for model families and prices.

`family_of(model)` maps a model name to its family (the lineage whose history gives a new model its prior).
`price_of(model)` gives (USD per input token, USD per output token) from `PRICES`, a table in USD per 1M tokens
whose every entry names its source.

Your own models and prices: `register_prices({...})` (or `bandit-sim --prices FILE`, read by
`bandit_sim.data.prices.load_prices`) puts a process-wide overlay in front of `PRICES` (and of the family rules);
`price_of` looks there first, then in `PRICES`, then through `ALIASES` (common undated names such as ``gpt-4``,
``gpt-4o`` or ``claude-3-5-sonnet`` resolve to a dated catalog entry). `missing_prices(models)` names the models
nothing prices.

Sources used below:
- ``routerbench``: recovered from RouterBench's own per-call ``total_cost_usd`` by least squares on cl100k token counts
  (``cost = in_tok * p_in + out_tok * p_out``; every one of the 11 models fits with R^2 = 1.000). These are the prices
  RouterBench really charged, so the simulator's predicted costs agree with its observed costs.
- ``openai``, ``anthropic``, ``google``, ``mistral``, ``cohere``: the vendor's public list price for that model version
  at its release (USD per 1M tokens, input/output, standard tier, shortest context tier).
- ``open-weights tier``: open-weight models have no vendor price; they get the serverless per-size tier that
  RouterBench's open models were charged (7B: 0.2, 13B: 0.3, 34B: 0.8, 70B: 0.9, Mixtral 8x7B: 0.6 USD/1M, same for input
  and output), extended to other sizes by the same provider's published tiers (<=4B: 0.1, 8-9B: 0.2, 20-34B: 0.8,
  51-72B: 0.9, 8x22B / 100B+ MoE: 1.2, 340B-405B: 3.5). These are assumptions for routing experiments, not quotes.
"""

from __future__ import annotations

import re
from typing import Mapping, NamedTuple

__all__ = ["ALIASES", "FAMILIES", "PRICES", "Price", "UnknownModelError", "clear_user_prices", "family_of",
           "infer_prices", "missing_prices", "price_of", "price_table", "register_prices", "resolve_alias",
           "user_prices", "HOW_TO_PRICE"]

HOW_TO_PRICE = ("give prices with a prices file (`--prices FILE` on any bandit-sim command, TOML/CSV/JSON with "
                "name, input_per_m, output_per_m; see docs/serve.md) or `bandit_sim.data.catalog.register_prices`, "
                "or add a cost_usd column to the table")


class Price(NamedTuple):
    """USD per 1M tokens, and where the figure comes from."""

    input_per_m: float
    output_per_m: float
    source: str


class UnknownModelError(KeyError):
    """A model name that the price table does not know."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


# Family rules are tried in order; the first pattern found in the lower-cased name wins. Fine-tunes of an
# open base model whose name says the base (e.g. "snorkel-mistral-pairrm-dpo") belong to the base's family.
_FAMILY_RULES: tuple[tuple[str, str], ...] = (
    (r"nemotron", "NVIDIA"),
    (r"gpt-|^o1-|openai", "OpenAI"),
    (r"claude|anthropic", "Anthropic"),
    (r"gemini|gemma|palm", "Google"),
    (r"mistral|mixtral", "Mistral"),
    (r"llama|meta/", "Meta"),
    (r"command-r|aya-|cohere", "Cohere"),
    (r"qwen", "Alibaba"),
    (r"yi-|zero-one-ai", "01.AI"),
    (r"deepseek", "DeepSeek"),
    (r"glm-", "Zhipu"),
    (r"phi-|wizardlm", "Microsoft"),
    (r"dbrx", "Databricks"),
    (r"snowflake", "Snowflake"),
    (r"athene|starling", "Nexusflow"),
    (r"openchat", "OpenChat"),
    (r"vicuna", "LMSYS"),
    (r"tulu", "AllenAI"),
    (r"internlm", "Shanghai AI Lab"),
    (r"krikri", "ILSP"),
    (r"falcon", "TII"),
    (r"mpt-|dolly", "Databricks"),
    (r"stablelm", "Stability AI"),
    (r"koala|alpaca|guanaco|gpt4all", "Meta"),  # LLaMA fine-tunes
    (r"oasst", "LAION"),
    (r"rwkv", "RWKV"),
    (r"fastchat-t5", "LMSYS"),
    (r"solar-", "Upstage"),
    (r"pplx-", "Perplexity"),
    (r"zephyr|openhermes|nous-hermes|dolphin", "Mistral"),  # fine-tunes of Mistral/Mixtral bases
    (r"stripedhyena", "Together"),
)

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(f for _, f in _FAMILY_RULES)) + ("Other",)


def family_of(model: str) -> str:
    """Family of a model name ("OpenAI", "Anthropic", "Google", "Meta", "Mistral", ..., or "Other").

    Args:
      model: the model name as the data spells it (case-insensitive; an org prefix like "meta/" is fine).
    Returns:
      The family name given with `register_prices`, else the first matching rule; "Other" when none matches.
    """
    name = str(model).lower()
    fam = _USER_FAMILIES.get(name.strip())
    if fam:
        return fam
    for pattern, family in _FAMILY_RULES:
        if re.search(pattern, name):
            return family
    return "Other"


def _p(inp: float, out: float, source: str) -> Price:
    return Price(float(inp), float(out), source)


_RB = "routerbench"
_OW = "open-weights tier"

# USD per 1M tokens. Keys are lower-cased model names with any "org/" prefix removed.
PRICES: dict[str, Price] = {
    # --- RouterBench's 11 models: prices recovered from its real per-call costs ---
    "gpt-4-1106-preview": _p(10.0, 30.0, _RB),
    "gpt-3.5-turbo-1106": _p(1.0, 2.0, _RB),
    "claude-v1": _p(8.0, 24.0, _RB),
    "claude-v2": _p(8.0, 24.0, _RB),
    "claude-instant-v1": _p(0.8, 2.4, _RB),
    "llama-2-70b-chat": _p(0.9, 0.9, _RB),
    "code-llama-instruct-34b-chat": _p(0.776, 0.776, _RB),
    "mistral-7b-chat": _p(0.2, 0.2, _RB),
    "mixtral-8x7b-chat": _p(0.6, 0.6, _RB),
    "yi-34b-chat": _p(0.8, 0.8, _RB),
    "wizardlm-13b-v1.2": _p(0.3, 0.3, _RB),
    # --- OpenAI list prices ---
    "gpt-4-0314": _p(30.0, 60.0, "openai"),
    "gpt-4-0613": _p(30.0, 60.0, "openai"),
    "gpt-4-0125-preview": _p(10.0, 30.0, "openai"),
    "gpt-4-turbo-2024-04-09": _p(10.0, 30.0, "openai"),
    "gpt-4o-2024-05-13": _p(5.0, 15.0, "openai"),
    "gpt-4o-2024-08-06": _p(2.5, 10.0, "openai"),
    "gpt-4o-mini-2024-07-18": _p(0.15, 0.6, "openai"),
    "gpt-3.5-turbo": _p(1.5, 2.0, "openai (gpt-3.5-turbo-0613, the alias's target at the time)"),
    "gpt-3.5-turbo-0125": _p(0.5, 1.5, "openai"),
    "gpt-3.5-turbo-0613": _p(1.5, 2.0, "openai"),
    "gpt-3.5-turbo-0301": _p(2.0, 2.0, "openai"),
    "gpt-3.5-turbo-0314": _p(2.0, 2.0, "openai (same release as 0301)"),
    "o1-preview-2024-09-12": _p(15.0, 60.0, "openai"),
    "o1-mini-2024-09-12": _p(3.0, 12.0, "openai"),
    # --- Anthropic list prices ---
    "claude-1": _p(8.0, 24.0, "anthropic"),
    "claude-2": _p(8.0, 24.0, "anthropic"),
    "claude-2.0": _p(8.0, 24.0, "anthropic"),
    "claude-2.1": _p(8.0, 24.0, "anthropic"),
    "claude-instant-1": _p(0.8, 2.4, "anthropic"),
    "claude-3-opus-20240229": _p(15.0, 75.0, "anthropic"),
    "claude-3-sonnet-20240229": _p(3.0, 15.0, "anthropic"),
    "claude-3-haiku-20240307": _p(0.25, 1.25, "anthropic"),
    "claude-3-5-sonnet-20240620": _p(3.0, 15.0, "anthropic"),
    "claude-3-5-sonnet-20241022": _p(3.0, 15.0, "anthropic"),
    # --- Google list prices (Gemini 1.5: <=128k context tier) ---
    "gemini-pro": _p(0.5, 1.5, "google"),
    "gemini-pro-dev-api": _p(0.5, 1.5, "google"),
    "palm-2": _p(0.5, 1.5, "google (per-character price converted at 4 chars/token)"),
    "gemini-1.0-pro": _p(0.5, 1.5, "google"),
    "gemini-1.5-pro-api-0409-preview": _p(3.5, 10.5, "google"),
    "gemini-1.5-pro-api-0514": _p(3.5, 10.5, "google"),
    "gemini-1.5-flash-api-0514": _p(0.35, 1.05, "google"),
    "palm-2-chat-bison-001": _p(0.5, 1.5, "google (per-character price converted at 4 chars/token)"),
    # --- Mistral list prices ---
    "mistral-large-2402": _p(8.0, 24.0, "mistral"),
    "mistral-large-2407": _p(3.0, 9.0, "mistral"),
    "mistral-medium": _p(2.7, 8.1, "mistral"),
    "mistral-next": _p(8.0, 24.0, "mistral (preview, unpriced: assumed equal to mistral-large-2402)"),
    # --- Cohere list prices ---
    "command-r": _p(0.5, 1.5, "cohere"),
    "command-r-plus": _p(3.0, 15.0, "cohere"),
}

# Open-weight models priced by size tier (see the module docstring). Sizes come from the model cards.
_OPEN_WEIGHT_SIZES: dict[str, float] = {
    # USD per 1M tokens, input = output
    "mistral-7b-instruct": 0.2, "mistralai/mistral-7b-instruct-v0.1": 0.2, "mistral_7b_selfdist": 0.2,
    "mixtral-8x7b-instruct-v0.1": 0.6, "mistralai/mixtral-8x7b-instruct-v0.1": 0.6, "mixtral_instruct_tgi": 0.6,
    "mixtral_8x7b_04_30_24_exp1": 0.6, "mixtral-8x22b-instruct-v0.1": 1.2,
    "llama-13b": 0.3, "llama-2-7b-chat-hf": 0.2, "llama-2-70b-chat-hf": 0.9,
    "llama-3-8b-instruct": 0.2, "llama-3-8b-chat-hf": 0.2, "llama-3-70b-instruct": 0.9, "llama-3-70b-chat-hf": 0.9,
    "llama-3.1-8b-instruct": 0.2, "llama-3.1-70b-instruct": 0.9,
    "llama-3.1-405b-instruct-fp8": 3.5, "llama-3.1-405b-instruct-fp8-no-sys-prompt": 3.5,
    "llama-3.1-nemotron-51b-instruct": 0.9, "llama-3.1-nemotron-70b-instruct": 0.9, "nemotron-4-340b-instruct": 3.5,
    "gemma-2b-it": 0.1, "gemma-1.1-2b-it": 0.1, "gemma-7b-it": 0.2, "gemma-1.1-7b-it": 0.2,
    "gemma-2-9b-it": 0.3, "gemma-2-27b-it": 0.8,
    "qwen1.5-72b-chat": 0.9, "qwen2-72b-instruct": 0.9, "qwen2.5-72b-instruct": 0.9,
    "yi-1.5-34b-chat": 0.8, "yi-large": 3.0, "yi-large-preview": 3.0, "yi-lightning": 0.14,
    "deepseek-coder-v2": 0.28, "glm-4-0116": 1.4, "glm-4-0520": 1.4, "glm-4-air": 0.14,
    "phi-3-mini-128k-instruct": 0.1, "phi-3-small-8k-instruct": 0.2, "phi-3-medium-4k-instruct": 0.3,
    "dbrx-instruct": 1.2, "dbrx-instruct-preview": 1.2, "snowflake-arctic-instruct": 1.2,
    "athene-70b-0725": 0.9, "athene-v2-chat": 0.9, "starling-lm-7b-alpha": 0.2, "starling-lm-7b-beta": 0.2,
    "openchat_3.5": 0.2, "snorkel-mistral-pairrm-dpo": 0.2, "tulu-2-dpo-70b": 0.9,
    "vicuna-7b-v1.5": 0.2, "vicuna-13b-v1.5": 0.3, "vicuna-33b": 0.8, "vicuna-33b-v1.3": 0.8,
    "internlm2-20b-chat": 0.8, "internlm2-20b-5-chat": 0.8,
    "aya-expanse-8b": 0.2, "aya-expanse-32b": 0.8,
    # models of the LM Arena human-preference 55k set (2023 - early 2024)
    "vicuna-7b": 0.2, "vicuna-13b": 0.3, "llama-2-7b-chat": 0.2, "llama-2-13b-chat": 0.3,
    "codellama-34b-instruct": 0.776, "codellama-70b-instruct": 0.9, "wizardlm-13b": 0.3, "wizardlm-70b": 0.9,
    "zephyr-7b-beta": 0.2, "zephyr-7b-alpha": 0.2, "openchat-3.5": 0.2, "openchat-3.5-0106": 0.2,
    "mistral-7b-instruct-v0.2": 0.2, "openhermes-2.5-mistral-7b": 0.2, "dolphin-2.2.1-mistral-7b": 0.2,
    "nous-hermes-2-mixtral-8x7b-dpo": 0.6, "solar-10.7b-instruct-v1.0": 0.3, "stripedhyena-nous-7b": 0.2,
    "koala-13b": 0.3, "alpaca-13b": 0.3, "gpt4all-13b-snoozy": 0.3, "guanaco-33b": 0.8,
    "oasst-pythia-12b": 0.3, "dolly-v2-12b": 0.3, "stablelm-tuned-alpha-7b": 0.2, "fastchat-t5-3b": 0.1,
    "mpt-7b-chat": 0.2, "mpt-30b-chat": 0.8, "rwkv-4-raven-14b": 0.3, "chatglm-6b": 0.2, "chatglm2-6b": 0.2,
    "chatglm3-6b": 0.2, "qwen-14b-chat": 0.3, "qwen1.5-4b-chat": 0.1, "qwen1.5-7b-chat": 0.2,
    "qwen1.5-14b-chat": 0.3, "deepseek-llm-67b-chat": 0.9, "falcon-180b-chat": 3.5, "yi-34b-chat": 0.8,
    "pplx-7b-online": 0.2, "pplx-70b-online": 0.9, "tulu-2-dpo-70b": 0.9,
}
_PROPRIETARY_OPEN_NOTE = {
    "yi-large": "01.AI list price", "yi-large-preview": "01.AI list price", "yi-lightning": "01.AI list price",
    "deepseek-coder-v2": "DeepSeek list price (output 0.28)", "glm-4-0116": "Zhipu list price (CNY converted)",
    "glm-4-0520": "Zhipu list price (CNY converted)", "glm-4-air": "Zhipu list price (CNY converted)",
}
for _name, _usd in _OPEN_WEIGHT_SIZES.items():
    PRICES.setdefault(_name, _p(_usd, _usd, _PROPRIETARY_OPEN_NOTE.get(_name, _OW)))

# 7B research fine-tunes (arena-hard's plato_*, nowllm_*, krikri_* runs): 7-8B open-weights tier.
_SMALL_FINETUNE = re.compile(r"^(plato_7b|nowllm_mistral_7b|krikri-)")


# Common undated names -> the catalog entry they mean (the vendor's current target of the alias at the entry's
# date). Ambiguous names (e.g. "mixtral": 8x7B or 8x22B?) are deliberately absent: give them a price yourself.
ALIASES: dict[str, str] = {
    "gpt-4": "gpt-4-0613", "gpt-4-turbo": "gpt-4-turbo-2024-04-09", "gpt-4-turbo-preview": "gpt-4-0125-preview",
    "gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "o1-preview": "o1-preview-2024-09-12", "o1-mini": "o1-mini-2024-09-12",
    "claude-3-opus": "claude-3-opus-20240229", "claude-3-sonnet": "claude-3-sonnet-20240229",
    "claude-3-haiku": "claude-3-haiku-20240307", "claude-3-5-sonnet": "claude-3-5-sonnet-20241022",
    "claude-3.5-sonnet": "claude-3-5-sonnet-20241022", "claude-3-5-sonnet-latest": "claude-3-5-sonnet-20241022",
    "claude-3-opus-latest": "claude-3-opus-20240229",
    "gemini-1.5-pro": "gemini-1.5-pro-api-0514", "gemini-1.5-flash": "gemini-1.5-flash-api-0514",
    "mistral-large": "mistral-large-2407", "mistral-large-latest": "mistral-large-2407",
    "mistral-7b": "mistral-7b-instruct", "mixtral-8x7b": "mixtral-8x7b-instruct-v0.1",
    "mixtral-8x22b": "mixtral-8x22b-instruct-v0.1",
    "llama-3-8b": "llama-3-8b-instruct", "llama-3-70b": "llama-3-70b-instruct",
    "llama-3.1-8b": "llama-3.1-8b-instruct", "llama-3.1-70b": "llama-3.1-70b-instruct",
    "llama-3.1-405b": "llama-3.1-405b-instruct-fp8",
}

# The process-wide overlay of the user's own prices and families (register_prices); keys are lower-cased names.
_USER_PRICES: dict[str, Price] = {}
_USER_FAMILIES: dict[str, str] = {}


def register_prices(prices: Mapping[str, Price | tuple], families: Mapping[str, str] | None = None) -> None:
    """Add the user's own prices (and families) in front of the catalog, for this process.

    Args:
      prices: model -> Price, or (input_per_m, output_per_m[, source]) in USD per 1M tokens.
      families: optional model -> family (`family_of` answers it first).
    Raises:
      ValueError: a negative or non-finite price.
    """
    for name, p in prices.items():
        p = tuple(p)
        pin, pout = float(p[0]), float(p[1])
        if not (pin >= 0 and pout >= 0 and pin < float("inf") and pout < float("inf")):
            raise ValueError(f"price of {name!r} must be finite USD per 1M tokens >= 0, got {p[:2]!r}")
        _USER_PRICES[str(name).strip().lower()] = _p(pin, pout, str(p[2]) if len(p) > 2 else "user prices")
    for name, fam in (families or {}).items():
        if fam:
            _USER_FAMILIES[str(name).strip().lower()] = str(fam)


def clear_user_prices() -> None:
    """Forget every price and family given with `register_prices`."""
    _USER_PRICES.clear()
    _USER_FAMILIES.clear()


def user_prices() -> dict[str, Price]:
    """A copy of the user's registered prices (lower-cased name -> Price)."""
    return dict(_USER_PRICES)


def resolve_alias(model: str) -> str:
    """The catalog name a common alias stands for (`ALIASES`), else the name itself."""
    return ALIASES.get(str(model).strip().lower(), str(model))


def _key(model: str) -> str:
    name = str(model).strip().lower()
    if name in _USER_PRICES:
        return name
    if "/" in name and name.split("/", 1)[1] in PRICES:
        return name.split("/", 1)[1]
    return ALIASES.get(name, name) if name not in PRICES else name


def _lookup(model: str) -> Price | None:
    key = _key(model)
    return _USER_PRICES.get(key) or PRICES.get(key)


def price_of(model: str) -> tuple[float, float]:
    """USD per input token and per output token for a model.

    Args:
      model: model name as the data spells it (case-insensitive; "org/name" accepted).
    Returns:
      (usd_per_input_token, usd_per_output_token).
    Raises:
      UnknownModelError: the model is not in `PRICES`; the message says how to add it.
    """
    key = _key(model)
    price = _lookup(model)
    if price is None and _SMALL_FINETUNE.match(key):
        price = _p(0.2, 0.2, _OW + " (7-8B fine-tune)")
    if price is None:
        raise UnknownModelError(f"no price for model {model!r}: {HOW_TO_PRICE}")
    return price.input_per_m / 1e6, price.output_per_m / 1e6


def missing_prices(models) -> list[str]:
    """The models (sorted, unique) that neither the user's prices, the catalog nor its aliases price."""
    out = set()
    for m in models:
        try:
            price_of(m)
        except UnknownModelError:
            out.add(str(m))
    return sorted(out)


def price_table(models) -> list[dict]:
    """Rows (model, family, input/output USD per 1M tokens, source) for the given models, for reports."""
    rows = []
    for m in models:
        p = _lookup(m)
        if p is None:
            pin, pout = price_of(m)
            p = _p(pin * 1e6, pout * 1e6, _OW + " (7-8B fine-tune)")
        rows.append({"model": m, "family": family_of(m), "input_per_m": p.input_per_m,
                     "output_per_m": p.output_per_m, "source": p.source})
    return rows


def infer_prices(models, input_tokens, output_tokens, cost_usd) -> tuple[float, float]:
    """Per-token prices of one model recovered from its observed calls: non-negative least squares of
    cost = input_tokens * p_in + output_tokens * p_out (how RouterBench's prices were found).

    Args:
      models: unused label for messages (the model name).
      input_tokens, output_tokens, cost_usd: (n,) observed calls of that model.
    Returns:
      (usd_per_input_token, usd_per_output_token).
    Raises:
      UnknownModelError: when there are no calls or they do not determine a positive price.
    """
    import numpy as np
    from scipy.optimize import nnls

    x = np.column_stack([np.asarray(input_tokens, float), np.asarray(output_tokens, float)])
    y = np.asarray(cost_usd, float)
    ok = np.isfinite(x).all(1) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(y) == 0 or not (x.sum(0) > 0).any():
        raise UnknownModelError(f"no price for model {models!r} and no calls with tokens and cost to infer it from")
    scale = np.maximum(x.max(0), 1.0)
    coef, _ = nnls(x / scale, y)
    coef = coef / scale
    if not coef.sum() > 0:
        raise UnknownModelError(f"no price for model {models!r}: its observed costs are all zero")
    return float(coef[0]), float(coef[1])
