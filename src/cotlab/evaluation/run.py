"""Evaluate a model on a test split: generate, extract, score; every prediction is kept."""

from __future__ import annotations

import random
from typing import Sequence

from cotlab.schema import Example
from cotlab.answers import extract_answer, is_correct
from cotlab.evaluation.generate import generate
from cotlab.evaluation.stats import summarize
from cotlab.prompts import FIRST_LINE_STOP, TEMPLATE_STOPS, render_prompt


def pick_shots(train: Sequence[Example], k: int, seed: int) -> list[Example]:
    """The same k exemplars for every test question, drawn with a fixed seed."""
    if k == 0:
        return []
    if len(train) < k:
        raise ValueError(f"few_shot={k} exemplars requested but the train split has only {len(train)} rows")
    return random.Random(seed).sample(list(train), k)


def evaluate(model, tokenizer, examples: Sequence[Example], template: str, max_new_tokens: int,
             batch_size: int, shots: Sequence[Example] = (), drafts: Sequence[str] | None = None,
             prefill: str = "", stop_at_answer: bool = True, desc: str = "evaluate") -> tuple[list[dict], dict]:
    """`drafts`: one student draft per example, shown in the prompt ("Student draft: ..."); `prefill`: text the
    answer is forced to start with (e.g. "The answer is:" to answer without reasoning), scored as part of it;
    `stop_at_answer`: a row stops after its answer line (the template's stop pattern, cotlab.prompts)."""
    prompts = [render_prompt(tokenizer, ex, template, shots, draft=None if drafts is None else drafts[i]) + prefill
               for i, ex in enumerate(examples)]
    stop = (FIRST_LINE_STOP if prefill else TEMPLATE_STOPS[template]) if stop_at_answer else None
    generations = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           stop=stop, desc=desc)
    return score(examples, prompts, generations, prefill)


def score(examples: Sequence[Example], prompts: Sequence[str], generations, prefill: str = "") -> tuple[list[dict], dict]:
    """Extract and score each generation (any object with text, truncated, n_new_tokens); every row is kept."""
    predictions = []
    for ex, prompt, gen in zip(examples, prompts, generations):
        output = prefill + gen.text
        pred = extract_answer(output, ex.answer_type)
        pred_strict = extract_answer(output, ex.answer_type, strict=True)
        predictions.append({
            "id": ex.id,
            "prompt": prompt,
            "output": output,
            "pred": pred,
            "pred_strict": pred_strict,
            "gold": ex.answer,
            "answer_type": ex.answer_type,
            "correct": is_correct(pred, ex.answer, ex.answer_type),
            "correct_strict": is_correct(pred_strict, ex.answer, ex.answer_type),
            "truncated": gen.truncated,
            "n_new_tokens": gen.n_new_tokens,
        })
    metrics = summarize(predictions)
    metrics["mean_new_tokens"] = sum(g.n_new_tokens for g in generations) / max(len(generations), 1)
    return predictions, metrics
