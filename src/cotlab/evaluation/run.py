"""Evaluate a model on a test split: generate, extract, score; every prediction is kept.

Budget forcing (s1, Muennighoff et al. 2025, "s1: Simple test-time scaling"): a row that hit the token cap without
an answer line would be scored invalid, however close its reasoning came. With `force_answer_tokens` > 0 such a row
gets FORCED_ANSWER_CUE appended (the "The answer is: X" line the templates train, cotlab.prompts.target) and a
short greedy continuation from prompt + output + cue; its answer is extracted from the cue and that continuation.
All forced rows of a run go through one more generate() call (batched there, on either backend).
"""

from __future__ import annotations

import random
from typing import Sequence

from cotlab.schema import Example
from cotlab.answers import extract_answer, is_correct
from cotlab.evaluation.generate import Generation, generate
from cotlab.evaluation.stats import summarize
from cotlab.prompts import FIRST_LINE_STOP, TEMPLATE_STOPS, render_prompt

# The end-of-thinking cue of budget forcing: a new line opening the answer line the templates train
# ("The answer is: X", cotlab.prompts.target); the continuation is the value, stopped at its line (FIRST_LINE_STOP).
FORCED_ANSWER_CUE = "\nThe answer is:"


def needs_forcing(output: str, truncated: bool, answer_type: str) -> bool:
    """A row is forced when it hit the token cap and has no answer line (no strict anchor whose value parses):
    the flexible fallback on a cut-off reasoning would only scrape a word out of it. A row with an answer line, or
    one that ended by itself, is never forced."""
    return truncated and extract_answer(output, answer_type, strict=True) is None


def pick_shots(train: Sequence[Example], k: int, seed: int) -> list[Example]:
    """The same k exemplars for every test question, drawn with a fixed seed."""
    if k == 0:
        return []
    if len(train) < k:
        raise ValueError(f"few_shot={k} exemplars requested but the train split has only {len(train)} rows")
    return random.Random(seed).sample(list(train), k)


def evaluate(model, tokenizer, examples: Sequence[Example], template: str, max_new_tokens: int,
             batch_size: int, shots: Sequence[Example] = (), drafts: Sequence[str] | None = None,
             prefill: str = "", stop_at_answer: bool = True, desc: str = "evaluate",
             force_answer_tokens: int = 0) -> tuple[list[dict], dict]:
    """`drafts`: one student draft per example, shown in the prompt ("Student draft: ..."); `prefill`: text the
    answer is forced to start with (e.g. "The answer is:" to answer without reasoning), scored as part of it;
    `stop_at_answer`: a row stops after its answer line (the template's stop pattern, cotlab.prompts);
    `force_answer_tokens`: budget forcing (module docstring) with this many new tokens for the answer; 0 = off.
    A prefilled run is never forced: its answer line is already there."""
    prompts = [render_prompt(tokenizer, ex, template, shots, draft=None if drafts is None else drafts[i]) + prefill
               for i, ex in enumerate(examples)]
    stop = (FIRST_LINE_STOP if prefill else TEMPLATE_STOPS[template]) if stop_at_answer else None
    generations = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           stop=stop, desc=desc)
    if force_answer_tokens <= 0 or prefill:
        return score(examples, prompts, generations, prefill)
    rows = [i for i, (ex, gen) in enumerate(zip(examples, generations))
            if needs_forcing(gen.text, gen.truncated, ex.answer_type)]
    answers = generate(model, tokenizer, [prompts[i] + generations[i].text + FORCED_ANSWER_CUE for i in rows],
                       max_new_tokens=force_answer_tokens, batch_size=batch_size, stop=FIRST_LINE_STOP,
                       desc=f"{desc} (forced answers)") if rows else []
    forced: list[Generation | None] = [None] * len(examples)
    for i, answer in zip(rows, answers):
        forced[i] = answer
    return score(examples, prompts, generations, prefill, forced)


def score(examples: Sequence[Example], prompts: Sequence[str], generations, prefill: str = "",
          forced: Sequence[Generation | None] | None = None) -> tuple[list[dict], dict]:
    """Extract and score each generation (any object with text, truncated, n_new_tokens); every row is kept.
    `forced`: per row, the continuation after FORCED_ANSWER_CUE of a budget-forced row, else None; given, each row
    records `forced` and `n_forced_tokens`, its answer is read from the cue and the continuation (its raw
    `truncated` stays), and the metrics add `forced_answer_rate`."""
    predictions = []
    for i, (ex, prompt, gen) in enumerate(zip(examples, prompts, generations)):
        output = prefill + gen.text
        answer = forced[i] if forced is not None else None
        if answer is not None:
            output += FORCED_ANSWER_CUE + answer.text
        scored = output if answer is None else FORCED_ANSWER_CUE + answer.text
        pred = extract_answer(scored, ex.answer_type)
        pred_strict = extract_answer(scored, ex.answer_type, strict=True)
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
        if forced is not None:
            predictions[-1].update(forced=answer is not None, n_forced_tokens=0 if answer is None else
                                   answer.n_new_tokens)
    metrics = summarize(predictions)
    metrics["mean_new_tokens"] = sum(g.n_new_tokens for g in generations) / max(len(generations), 1)
    if forced is not None:
        metrics["forced_answer_rate"] = sum(p["forced"] for p in predictions) / len(predictions) if predictions \
            else float("nan")
    return predictions, metrics
