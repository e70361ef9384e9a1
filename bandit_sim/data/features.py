"""Query features of a table's prompts: the one place a split's feature matrix is built.

`prompt_features(table, prompt_ids)` gives one row per prompt (in the order asked) of
`hierarchical.features.query_features` (log prompt tokens, text cues, ...), computed from the prompt text and its
input-token count; the token model, the Worlds and the routers all read their features from here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from hierarchical.features import query_features

__all__ = ["prompt_features"]


def prompt_features(table: pd.DataFrame, prompt_ids: Sequence[str]) -> np.ndarray:
    """(N, F) float32 query features of `prompt_ids` (rows in that order) from the table's prompt text.

    Args:
      table: tidy routing table with prompt_id, prompt and input_tokens.
      prompt_ids: which prompts, in which order.
    Returns:
      (N, F) float32 array.
    """
    per = table.drop_duplicates("prompt_id").set_index("prompt_id")
    missing = [p for p in prompt_ids if p not in per.index]
    if missing:
        raise ValueError(f"prompt_features: prompt ids {missing[:5]} are not in the table")
    per = per.loc[list(prompt_ids)]
    return np.asarray(query_features(per["prompt"].astype(str).tolist(),
                                      input_tokens=per["input_tokens"].to_numpy(float)), np.float32)
