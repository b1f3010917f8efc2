"""Preference pairs for DPO (Phase C): prompt = question + "Student draft: " + draft; chosen = the teacher's
reasoning and final answer; rejected = the same reasoning concluding with a wrong answer: the draft's when the draft
is wrong (made "draft_wrong"), else a flipped one ("flipped"). The two sides share one template and differ only in
the final "The answer is:" line, so a preference can be learned from the conclusion alone, never from the format
(the raw draft as the rejected side, "Answer: No - ... / Questions: ...", made its pairs separable by format alone).
Every pair records how its rejected side was made.

Held-out pairs (test questions, for DPO's held-out preference accuracy) are built the same way; the teacher writes
no test reasoning, so their chosen side is the dataset's own reasoning as the oracle teacher renders it (what the
train pairs hold under teacher.backend oracle; under another backend, the train pairs hold that teacher's)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any, Sequence

from cotlab.schema import DataError, Example
from cotlab.data.sources import LETTERS
from cotlab.answers import is_correct
from cotlab.formats import parse_draft, parse_teacher, reasoning_steps, render_teacher
from cotlab.prompts import display_answer, end_of_turn, render_prompt, target


def flipped_answer(example: Example, rng: random.Random) -> str:
    """A wrong answer of the same type, as the model would write it."""
    match example.answer_type:
        case "yes_no":
            return "No" if example.answer == "yes" else "Yes"
        case "choice":
            letters = [c for c in LETTERS[: max(len(example.choices), 2)] if c != example.answer]
            return rng.choice(letters)
        case "number":
            value = float(example.answer)
            wrong = value + rng.choice([-2, -1, 1, 2, 10]) if value.is_integer() else value * 2
            return str(int(wrong)) if float(wrong).is_integer() else str(wrong)
    raise DataError(f"example {example.id!r}: cannot flip a {example.answer_type!r} answer; give the pairs stage "
                    "drafts with wrong answers instead")


def pair_examples(examples: Sequence[Example], n_pairs: int | None, seed: int) -> list[Example]:
    """The examples pairs are built from: all, or a seeded sample of the scale's n_pairs."""
    if n_pairs is None or n_pairs >= len(examples):
        return list(examples)
    return random.Random(f"{seed}-pairs-subsample").sample(list(examples), n_pairs)


def heldout_examples(examples: Sequence[Example], drafts: dict[str, str]) -> tuple[list[Example], dict[str, int]]:
    """Test examples as build_pairs takes them: reasoning = the dataset's own, rendered and parsed as the oracle
    teacher's (the train pairs' chosen side under teacher.backend oracle), draft = the student's test draft ("" when
    missing). Examples without reasoning steps are left out and counted."""
    kept, dropped = [], Counter()
    for ex in examples:
        steps = reasoning_steps(ex.reasoning)
        out = parse_teacher(render_teacher("", steps, display_answer(ex)), ex.answer_type) if steps else None
        if out is None or not out.ok:
            dropped["no_reasoning"] += 1
            continue
        kept.append(replace(ex, reasoning=out.reasoning, metadata={**ex.metadata, "draft": drafts.get(ex.id, "")}))
    return kept, {"dropped.no_reasoning": dropped["no_reasoning"]}


def build_pairs(examples: Sequence[Example], tokenizer, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for TRL's DPOTrainer (prompt, chosen, rejected as text) from filtered examples that carry their
    student draft in metadata["draft"]; chosen and rejected differ only in the final answer line (module docstring);
    metrics: how pairs were made and the class balance of chosen answers."""
    rng = random.Random(f"{seed}-pairs")
    eos = end_of_turn(tokenizer)
    rows, made, chosen_classes = [], Counter(), Counter()
    for ex in examples:
        draft_text = str(ex.metadata.get("draft", ""))
        draft = parse_draft(draft_text, ex.answer_type)
        draft_answer = draft.answer if draft.ok else draft.answer_flexible
        chosen = target(ex, "cot")
        if draft_answer is not None and not is_correct(draft_answer, ex.answer, ex.answer_type):
            wrong, how = draft_answer, "draft_wrong"
        else:
            wrong, how = flipped_answer(ex, rng), "flipped"
        rejected = target(replace(ex, answer=wrong), "cot")  # the chosen text with the wrong conclusion
        made[how] += 1
        chosen_classes[ex.answer] += 1
        rows.append({"id": ex.id, "prompt": render_prompt(tokenizer, ex, "cot", draft=draft_text),
                     "chosen": chosen + eos, "rejected": rejected + eos, "made": how, "answer": ex.answer})
    if not rows:
        raise DataError("pairs: no filtered examples to build preference pairs from")
    metrics = {"n_pairs": len(rows), **{f"made.{k}": v for k, v in sorted(made.items())}}
    if examples[0].answer_type in ("yes_no", "choice"):
        metrics.update({f"chosen_share.{c}": round(n / len(rows), 4) for c, n in sorted(chosen_classes.items())})
    return rows, metrics
