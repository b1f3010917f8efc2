"""CoT distillation (Phase B): question + student draft -> teacher reasoning + answer, continuing Phase A's adapter.

The loss is SFT's completion-only cross-entropy, but the completion is the reasoning followed by the answer,
so the model is trained to produce the chain of thought before committing to an answer:

    L(theta) = - 1/|C| * sum_{t in C} log p_theta(y_t | x, y_<t)      y = reasoning ++ "The answer is: " ++ a

The prompt carries the student's draft ("Student draft: ...") as in the self-improving recipe, so the model learns
to read a draft and correct it; `with_draft: false` trains on the question alone. Starting point: `init_from: sft`
continues the Phase A adapter (the recipe), `base` starts fresh.
"""

from __future__ import annotations

from typing import Any, Sequence

from cotlab.schema import DataError, Example
from cotlab.methods import sft

TEMPLATE = "cot"


def train(model, tokenizer, examples: Sequence[Example], config: sft.TrainConfig, **run) -> tuple[Any, dict, list[dict]]:
    """sft.train on the examples that have reasoning, with the CoT template (`run`: sft.train's other keywords)."""
    with_reasoning = [ex for ex in examples if ex.reasoning.strip()]
    if not with_reasoning:
        raise DataError("cot_distill: no training example has reasoning to distil (the 'reasoning' field is empty)")
    model, metrics, curve = sft.train(model, tokenizer, with_reasoning, config, template=TEMPLATE, **run)
    metrics["n_without_reasoning"] = len(examples) - len(with_reasoning)
    return model, metrics, curve
