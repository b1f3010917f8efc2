"""Students' drafts: an answer attempt and the questions the student would ask a teacher."""

from __future__ import annotations

from typing import Sequence

from cotlab.evaluation.generate import generate
from cotlab.formats import draft_records
from cotlab.prompts import DRAFT_STOP, draft_messages, render_messages
from cotlab.schema import DataError, Example, read_jsonl


def student_drafts(model, tokenizer, examples: Sequence[Example], max_new_tokens: int, batch_size: int,
                   stop_after_questions: bool = True) -> tuple[list[dict], dict]:
    """The model's draft for each example (the drafts stage's format) and how well it kept the format."""
    prompts = [render_messages(tokenizer, draft_messages(ex)) for ex in examples]
    return draft_records(examples, generate(model, tokenizer, prompts, max_new_tokens, batch_size,
                                            stop=DRAFT_STOP if stop_after_questions else None, desc="drafts"))


def drafts_for(examples: Sequence[Example], path: str) -> list[str]:
    """The draft of each example from a drafts JSONL; a missing one is an error naming the file and the ids."""
    by_id = {row["id"]: row["draft"] for row in read_jsonl(path)}
    missing = [ex.id for ex in examples if ex.id not in by_id]
    if missing:
        raise DataError(f"{path}: no draft for question(s) {missing[:5]}; re-run the stage that writes it")
    return [by_id[ex.id] for ex in examples]
