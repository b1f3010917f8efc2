"""The LLM judge of clarifying questions: which student asks the better questions, compared question by question
in a seeded random order, with a Wilson interval on the win rate."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from cotlab.config import ConfigError
from cotlab.evaluation.stats import wilson_interval
from cotlab.prompts import question_block
from cotlab.schema import Example
from cotlab.teacher import TeacherConfig


@dataclass
class JudgeConfig(TeacherConfig):
    """The judge's backend (any teacher backend but the oracle) and what it compares."""

    backend: Literal["oracle", "local", "openai"] = "local"
    model: str = "models/base"
    max_tokens: int = 16
    challenger: str = "dpo"  # its clarifying questions against the base student's (the drafts stage)

    def __post_init__(self):
        super().__post_init__()
        if self.backend == "oracle":
            raise ConfigError("backend: 'oracle' cannot judge; use local or openai")


def asked_questions(row: dict, limit: int = 3) -> list[str]:
    """The questions a draft asks: its `Questions:` line when it kept the format, else the distinct questions in
    its text. A trained model may drop the draft format and list sub-questions ("1. Who was ...?"): those are
    still its questions to the teacher. At most `limit`, both sides alike; repeats count once."""
    found = row["questions"] or [re.sub(r"^\s*(?:\d+[.)]|[-*])\s*", "", q).strip() + "?"
                                 for q in re.findall(r"[^?\n]+(?=\?)", row["draft"])]
    distinct = list(dict.fromkeys(q for q in found if len(q) > 3))
    return distinct[:limit]


def judge_pairs(examples: Sequence[Example], challenger: dict[str, list[str]], incumbent: dict[str, list[str]],
                seed: int) -> list[dict]:
    """One comparison per question where both wrote questions; the challenger is shown first or second at random
    (seeded) so a judge's position bias cannot favour either side."""
    rng = random.Random(f"{seed}-judge-order")
    pairs = []
    for ex in examples:
        ours, theirs = challenger.get(ex.id) or [], incumbent.get(ex.id) or []
        if not ours or not theirs:
            continue
        challenger_first = rng.random() < 0.5
        a, b = (ours, theirs) if challenger_first else (theirs, ours)
        pairs.append({"id": ex.id, "challenger_label": "A" if challenger_first else "B",
                      "messages": judge_messages(ex, " ".join(a), " ".join(b)), "example": ex})
    return pairs


_VERDICT = re.compile(r"\b(?:student\s+)?([AB])\b")


def parse_verdict(text: str) -> str | None:
    """The first standalone A or B in the judge's reply; None when there is none."""
    match = _VERDICT.search(text or "")
    return match.group(1) if match else None


def win_rate(pairs: Sequence[dict], verdicts: Sequence[str | None], confidence: float = 0.95) -> dict:
    """Challenger wins / decided comparisons, with a Wilson interval; undecided replies are counted apart. With
    nothing decided the rates are None (JSON null): undefined, and never a NaN in a metrics file."""
    wins = sum(v == p["challenger_label"] for p, v in zip(pairs, verdicts) if v)
    decided = sum(v is not None for v in verdicts)
    low, high = wilson_interval(wins, decided, confidence) if decided else (None, None)
    shown_first = [v == "A" for v in verdicts if v]
    return {"n_compared": len(pairs), "n_decided": decided, "undecided": len(pairs) - decided,
            "challenger_wins": wins, "win_rate": wins / decided if decided else None,
            "win_rate_ci_low": low, "win_rate_ci_high": high,
            "judge_picks_first": sum(shown_first) / len(shown_first) if shown_first else None}


JUDGE_SYSTEM = "You are a strict judge of study questions. You reply with one letter."


def judge_messages(example: Example, questions_a: str, questions_b: str) -> list[dict[str, str]]:
    """Which of two students' clarifying questions would help more to answer the question correctly."""
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": (
            f"{question_block(example)}\n\n"
            "Before answering, two students wrote the questions they would ask a teacher.\n"
            f"Student A: {questions_a}\nStudent B: {questions_b}\n\n"
            "Whose questions are more focused and more useful for answering correctly? Reply with A or B only."
        )},
    ]
