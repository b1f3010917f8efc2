"""Ablations of a draft-conditioned model, each on the same test questions as the full model:

    full            question + its own student draft -> reasoning + answer
    no_draft        question only (does the model still need the draft?)
    shuffled_draft  question + a seeded other question's draft (does it read *this* draft, or any draft?)
    no_cot          question + its draft, the answer forced to start at once (what does the reasoning add?)
"""

from __future__ import annotations

import random
from typing import Sequence

ABLATIONS = ("no_draft", "shuffled_draft", "no_cot")
NO_COT_PREFILL = "The answer is:"


def shuffled(drafts: Sequence[str], seed: int) -> list[str]:
    """Each position gets another position's draft (a seeded derangement; identity only for one draft)."""
    n = len(drafts)
    if n < 2:
        return list(drafts)
    order = list(range(n))
    random.Random(f"{seed}-shuffled-draft").shuffle(order)
    # Rotating a random permutation by one gives a derangement: position order[i] takes order[i+1]'s draft.
    out = [""] * n
    for i in range(n):
        out[order[i]] = drafts[order[(i + 1) % n]]
    return out


def ablation_inputs(variant: str, drafts: Sequence[str], seed: int) -> tuple[list[str] | None, str]:
    """(drafts shown, answer prefill) for one variant."""
    match variant:
        case "full":
            return list(drafts), ""
        case "no_draft":
            return None, ""
        case "shuffled_draft":
            return shuffled(drafts, seed), ""
        case "no_cot":
            return list(drafts), NO_COT_PREFILL
    raise ValueError(f"unknown ablation {variant!r}; expected full or one of {ABLATIONS}")
