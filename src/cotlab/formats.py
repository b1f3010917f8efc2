"""The structured formats of generated data: the student's draft, the teacher's reasoning and the transplant
candidates. Each has a renderer (what the oracle writes) and a parser (what every backend's text goes through).

Parsers never raise: odd text gives a result with `ok=False` and a `problem` naming what was missing, so a
stage counts unparseable rows instead of crashing on the first one.

    draft:      Answer: <Yes/No or value> - <brief reasoning>
                Questions: <focused sub-question>? <key uncertainty>?
    teacher:    Teaching Analysis: ...
                Step-by-Step Reasoning:
                1. ...
                Final Assessment: the answer is: **X**
    candidates: Candidate A: ... The answer is: X
                Candidate B: ... The answer is: Y
                Argument: ... Therefore, Candidate A is correct.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cotlab.schema import Example
from cotlab.answers import extract_answer, is_correct

# One character class before the name: two adjacent classes that both match spaces backtrack quadratically on a
# reply that degenerates into whitespace.
_HEADER = r"(?:^|\n)[ \t#*_]*{name}[*_ ]*:?[*_ ]*"


def _section(text: str, name: str, following: list[str]) -> str | None:
    """The text after header `name` up to the next of `following` (or the end); None when the header is absent."""
    start = re.search(_HEADER.format(name=name), text, re.IGNORECASE)
    if not start:
        return None
    rest = text[start.end():]
    ends = [m.start() for f in following if (m := re.search(_HEADER.format(name=f), rest, re.IGNORECASE))]
    return rest[: min(ends)].strip() if ends else rest.strip()


# ---------------------------------------------------------------- draft

@dataclass
class Draft:
    ok: bool
    answer: str | None = None  # normalised ("yes", "18", "Carol")
    reason: str = ""
    questions: list[str] = field(default_factory=list)
    problem: str = ""
    answer_flexible: str | None = None  # the answer even when the draft ignored the format (extraction fallbacks)


_DRAFT_ANSWER = re.compile(r"answer\s*:\s*(?P<value>[^\n]*?)(?:\s+[-–—]\s+(?P<reason>[^\n]*))?\s*(?:\n|$)",
                           re.IGNORECASE)


def parse_draft(text: str, answer_type: str) -> Draft:
    text = text if isinstance(text, str) else ""
    match = _DRAFT_ANSWER.search(text)
    questions_part = _section(text, "Questions", ["Answer"])
    questions = [q.strip(" -*\n") + "?" for q in (questions_part or "").split("?") if q.strip(" -*\n")]
    flexible = extract_answer(text, answer_type)
    if not match:
        return Draft(ok=False, questions=questions, problem="no_answer_line", answer_flexible=flexible)
    answer = extract_answer(f"Answer: {match['value']}", answer_type, strict=True)
    if answer is None:
        return Draft(ok=False, reason=(match["reason"] or "").strip(), questions=questions, problem="no_answer_value",
                     answer_flexible=flexible)
    return Draft(ok=True, answer=answer, reason=(match["reason"] or "").strip(), questions=questions,
                 answer_flexible=answer)


def draft_records(examples, generations) -> tuple[list[dict], dict]:
    """The drafts stage's rows (raw draft, parsed answer and questions) and how well the student kept the format."""
    rows, parsed, correct, answered, correct_flexible = [], 0, 0, 0, 0
    for ex, gen in zip(examples, generations):
        draft = parse_draft(gen.text, ex.answer_type)
        parsed += draft.ok
        correct += draft.ok and is_correct(draft.answer, ex.answer, ex.answer_type)
        answered += draft.answer_flexible is not None
        correct_flexible += is_correct(draft.answer_flexible, ex.answer, ex.answer_type)
        rows.append({"id": ex.id, "draft": gen.text, "answer": draft.answer, "parsed": draft.ok,
                     "answer_flexible": draft.answer_flexible, "problem": draft.problem,
                     "questions": draft.questions, "truncated": gen.truncated})
    n = max(len(rows), 1)
    metrics = {"n": len(rows), "parse_rate": round(parsed / n, 4), "unparseable": len(rows) - parsed,
               "accuracy": round(correct / n, 4), "answer_rate_flexible": round(answered / n, 4),
               "accuracy_flexible": round(correct_flexible / n, 4),
               "truncation_rate": round(sum(g.truncated for g in generations) / n, 4)}
    return rows, metrics


# ---------------------------------------------------------------- teacher

@dataclass
class TeacherOutput:
    ok: bool
    answer: str | None = None
    analysis: str = ""
    reasoning: str = ""
    problem: str = ""


_SECTIONS = ["Teaching Analysis", "Step[- ]by[- ]Step Reasoning", "Final Assessment"]
_FINAL = re.compile(r"the\s+answer\s+is\s*:?\s*(?P<value>[^\n]*)", re.IGNORECASE)


def parse_teacher(text: str, answer_type: str) -> TeacherOutput:
    text = text if isinstance(text, str) else ""
    analysis = _section(text, _SECTIONS[0], _SECTIONS[1:]) or ""
    reasoning = _section(text, _SECTIONS[1], _SECTIONS[2:]) or ""
    final = _section(text, _SECTIONS[2], [])
    if final is None:
        return TeacherOutput(ok=False, analysis=analysis, reasoning=reasoning, problem="no_final_assessment")
    matches = list(_FINAL.finditer(final))  # "the draft said the answer is Yes; however, the answer is: **No**"
    match = matches[-1] if matches else None
    answer = extract_answer(f"The answer is: {match['value']}", answer_type, strict=True) if match else None
    if answer is None:
        return TeacherOutput(ok=False, analysis=analysis, reasoning=reasoning, problem="no_final_answer")
    if not reasoning:
        return TeacherOutput(ok=False, answer=answer, analysis=analysis, problem="no_reasoning")
    return TeacherOutput(ok=True, answer=answer, analysis=analysis, reasoning=reasoning)


def render_teacher(analysis: str, steps: list[str], answer: str) -> str:
    numbered = "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))
    return (f"Teaching Analysis: {analysis}\nStep-by-Step Reasoning:\n{numbered}\n"
            f"Final Assessment: the answer is: **{answer}**")


def reasoning_steps(reasoning: str) -> list[str]:
    """A dataset's worked solution as steps: one per line (GSM8K), per sentence (StrategyQA facts). StrategyQA's
    sub-questions come first, so their "#1"-style references point at the right step."""
    steps, facts = [], []
    for line in reasoning.splitlines():
        line = re.sub(r"^\s*(?:\d+[.)]|[-*])\s*", "", line).strip()
        if not line:
            continue
        if line.lower().startswith("facts:"):
            facts.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", line[6:].strip()) if s.strip())
        elif not line.lower().startswith("sub-questions:"):
            steps.append(line)
    return steps + facts


# ---------------------------------------------------------------- candidates

@dataclass
class Candidates:
    ok: bool
    texts: dict[str, str] = field(default_factory=dict)  # label -> explanation
    answers: dict[str, str | None] = field(default_factory=dict)
    argument: str = ""
    argued: str | None = None  # the label the argument picks
    problem: str = ""


_ARGUED = re.compile(r"candidate\s+([AB])\s+is\s+(?:the\s+)?correct", re.IGNORECASE)


def parse_candidates(text: str, answer_type: str = "number") -> Candidates:
    text = text if isinstance(text, str) else ""
    a = _section(text, "Candidate A", ["Candidate B", "Argument"])
    b = _section(text, "Candidate B", ["Argument"])
    argument = _section(text, "Argument", [])
    if a is None or b is None:
        return Candidates(ok=False, problem="missing_candidate")
    texts = {"A": a, "B": b}
    answers = {k: extract_answer(v, answer_type, strict=True) for k, v in texts.items()}
    if None in answers.values():
        return Candidates(ok=False, texts=texts, answers=answers, problem="candidate_without_answer")
    if not argument:
        return Candidates(ok=False, texts=texts, answers=answers, problem="missing_argument")
    picks = _ARGUED.findall(argument)
    if not picks:
        return Candidates(ok=False, texts=texts, answers=answers, argument=argument, problem="argument_picks_none")
    return Candidates(ok=True, texts=texts, answers=answers, argument=argument, argued=picks[-1].upper())


def render_candidates(texts: dict[str, str], argument: str) -> str:
    return f"Candidate A:\n{texts['A']}\nCandidate B:\n{texts['B']}\nArgument:\n{argument}"
