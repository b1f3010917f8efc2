"""The LLM judge of clarifying questions: which student asks the better questions, compared question by question in
both orders (MT-Bench's practice: the challenger once as A, once as B). A question is a win or a loss only when both
orders agree; a judge that answers the same letter both times (position bias) or leaves a reply undecided makes it a
tie. Reported: the win rate with ties as half, the decisive win rate with a Wilson interval, a sign test on wins vs
losses, and how position-consistent the judge was."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

from scipy import stats

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


def judge_pairs(examples: Sequence[Example], challenger: dict[str, list[str]],
                incumbent: dict[str, list[str]]) -> list[dict]:
    """Two comparisons per question where both wrote questions: the challenger shown as A, then as B (the same
    judge_messages, swapped), so a judge's position bias cannot favour either side: it turns into ties."""
    pairs = []
    for ex in examples:
        ours, theirs = challenger.get(ex.id) or [], incumbent.get(ex.id) or []
        if not ours or not theirs:
            continue
        for label, (a, b) in (("A", (ours, theirs)), ("B", (theirs, ours))):
            pairs.append({"id": ex.id, "challenger_label": label,
                          "messages": judge_messages(ex, " ".join(a), " ".join(b)), "example": ex})
    return pairs


_VERDICT = re.compile(r"\b(?:student\s+)?([AB])\b")


def parse_verdict(text: str) -> str | None:
    """The first standalone A or B in the judge's reply; None when there is none."""
    match = _VERDICT.search(text or "")
    return match.group(1) if match else None


def judge_outcomes(pairs: Sequence[dict], verdicts: Sequence[str | None]) -> list[dict]:
    """Per question, its two verdicts (keyed by the challenger's label in that order) and the outcome: "win" when
    both orders pick the challenger, "loss" when both pick the incumbent, "tie" when they disagree (the judge
    picked the same letter both times) or either reply is undecided."""
    if len(pairs) != len(verdicts):
        raise ValueError(f"{len(pairs)} comparisons but {len(verdicts)} verdicts")
    by_id: dict[str, dict[str, str | None]] = {}
    for p, v in zip(pairs, verdicts):
        by_id.setdefault(p["id"], {})[p["challenger_label"]] = v
    out = []
    for qid, orders in by_id.items():
        if set(orders) != {"A", "B"}:
            raise ValueError(f"question {qid!r} was not judged in both orders: {sorted(orders)}")
        picks = [None if v is None else v == label for label, v in orders.items()]  # True: picked the challenger
        outcome = "win" if picks == [True, True] else "loss" if picks == [False, False] else "tie"
        out.append({"id": qid, "verdicts": orders, "outcome": outcome,
                    "decided": None not in picks, "consistent": None not in picks and picks[0] == picks[1]})
    return out


def win_rate(pairs: Sequence[dict], verdicts: Sequence[str | None], confidence: float = 0.95) -> dict:
    """Flat metrics over questions judged in both orders (numbers or None, never a NaN in a metrics file):
    win_rate counts ties as half; decisive_win_rate = wins / (wins + losses) with its Wilson interval; sign_test_p
    is the two-sided binomial test of wins vs losses; position_consistency is the share of questions with both
    replies decided whose verdicts point to the same student; judge_picks_first is the share of decided replies
    that are "A". A judge that always answers A has consistency 0 and picks first 1: uninformative, not a coin."""
    outcomes = judge_outcomes(pairs, verdicts)
    n = len(outcomes)
    wins = sum(o["outcome"] == "win" for o in outcomes)
    losses = sum(o["outcome"] == "loss" for o in outcomes)
    ties = n - wins - losses
    decisive = wins + losses
    low, high = wilson_interval(wins, decisive, confidence) if decisive else (None, None)
    both_decided = [o for o in outcomes if o["decided"]]
    decided = [v for v in verdicts if v is not None]
    return {"n_compared": n, "wins": wins, "losses": losses, "ties": ties,
            "undecided": len(verdicts) - len(decided),
            "win_rate": (wins + 0.5 * ties) / n if n else None,
            "decisive_win_rate": wins / decisive if decisive else None,
            "decisive_win_rate_ci_low": low, "decisive_win_rate_ci_high": high,
            "sign_test_p": float(stats.binomtest(wins, decisive, 0.5).pvalue) if decisive else None,
            "position_consistency": (sum(o["consistent"] for o in both_decided) / len(both_decided)
                                     if both_decided else None),
            "judge_picks_first": sum(v == "A" for v in decided) / len(decided) if decided else None}


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
