"""Students' drafts: an answer attempt and the questions the student would ask a teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cotlab.evaluation.generate import generate
from cotlab.formats import draft_records
from cotlab.schema import DataError, Example, read_jsonl
from cotlab.prompts import ANSWER_HINT, question_block, render_messages


@dataclass
class DraftsConfig:
    """The `drafts` section: the student's drafts (the base model, batched greedy), also redrawn by the judge and
    the self-guided rounds."""

    max_new_tokens: int = 64
    batch_size: int | None = None  # None = the scale's eval_batch_size
    stop_after_questions: bool = True  # stop a draft after its "Questions: ...?" line


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


DRAFT_STOP = r"Questions:[^\n]*\?[^\n]*\n"  # the draft's last line: its clarifying questions

# One worked draft per answer type, shown as an earlier chat turn. Without it SmolLM2-135M kept the draft format
# in 0-38% of questions and wrote clarifying questions in none (48 tokens, StrategyQA and syllogism); with it,
# ~100% and ~95% (a 20-question check per task). The exemplars are off-topic for every shipped task on purpose.
_DRAFT_EXEMPLARS = {
    "yes_no": ("Can a goldfish live for a week out of water?",
               "No - fish need water to breathe.",
               "How long can a goldfish breathe air? Would a damp tank count as out of water?"),
    "number": ("A box holds 12 pencils. How many pencils are in 3 boxes?",
               "36 - 3 boxes of 12 pencils is 3 x 12.",
               "Does every box hold exactly 12 pencils? Are any pencils outside the boxes?"),
    "choice": ("Which animal is a mammal?\nOptions: A) trout B) whale C) eagle",
               "B - whales breathe air and feed their young milk.",
               "Which options breathe air? Does any option lay eggs?"),
    "name": ("Ann is Bob's mother and Cara is Bob's sister. Who is Cara's mother?",
             "Ann - siblings share their mother.",
             "Are Bob and Cara full siblings? Could Cara have a different mother?"),
    "text": ("What colour is a ripe banana?",
             "yellow - bananas turn yellow as they ripen.",
             "Which variety of banana is meant? Is ripe the same as overripe?"),
}


def _draft_request(question_block_text: str, answer_type: str) -> str:
    return (f"{question_block_text}\n"
            "Write a quick draft in exactly this format:\n"
            f"Answer: <{ANSWER_HINT[answer_type]}> - <brief reasoning>\n"
            "Questions: <a focused sub-question>? <your key uncertainty>?")


def draft_messages(example: Example) -> list[dict[str, str]]:
    """The student's draft: a quick answer with a reason, and the questions it would ask a teacher; one worked
    exemplar of the same answer type comes first."""
    question, answer, questions = _DRAFT_EXEMPLARS[example.answer_type]
    return [
        {"role": "user", "content": _draft_request(f"Question: {question}", example.answer_type)},
        {"role": "assistant", "content": f"Answer: {answer}\nQuestions: {questions}"},
        {"role": "user", "content": _draft_request(question_block(example, draft_facts=True), example.answer_type)},
    ]
