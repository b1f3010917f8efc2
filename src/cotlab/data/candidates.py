"""Candidates for hidden-state transplant verification: per math problem a correct and an incorrect explained
answer and an argument that picks one of them.

The oracle builds the incorrect one from the dataset's worked solution: it breaks one calculator step
(GSM8K's `<<48/2=24>>`) at a chosen position and recomputes every later step that uses the broken value, so
the error propagates to the final answer the way a real slip would.
"""

from __future__ import annotations

import ast
import operator
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from collections import Counter

from cotlab.schema import DataError, Example
from cotlab.data.sources import normalize_number
from cotlab.answers import is_correct
from cotlab.formats import Candidates, parse_candidates, render_candidates
from cotlab.prompts import question_block

@dataclass
class CandidatesConfig:  # candidates@<task> runs on transplant.tasks
    argument_correct_rate: float = 0.7  # share of arguments that pick the correct candidate
    corrupt_step: Literal["random", "first", "middle", "last"] = "random"  # which arithmetic step the oracle breaks


_CALC = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_NUMBER = re.compile(r"(?<![\d.])\d+(?:,\d{3})*(?:\.\d+)?")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(expression: str) -> Fraction | None:
    """Exact arithmetic on + - * / and parentheses; None for anything else."""

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = value(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("unsupported")

    try:
        return value(ast.parse(expression.replace(",", "").strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError):
        return None


def _fmt(x: Fraction) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    return normalize_number(f"{float(x):.2f}") or str(float(x))


def _substitute(text: str, mapping: dict[str, str]) -> str:
    return _NUMBER.sub(lambda m: mapping.get(normalize_number(m.group()) or "", m.group()), text)


def strip_calculator(solution: str) -> str:
    return _CALC.sub("", solution).strip()


@dataclass
class Corruption:
    text: str  # the incorrect solution, calculator annotations removed
    answer: str  # its final answer
    step: int  # 0-based index of the broken step
    n_steps: int
    expression: str
    right: str  # what the broken step should give
    wrong: str  # what it gives instead


def _propagate(solution: str, calcs: list[re.Match], k: int, wrong: str, final: str) -> Corruption | None:
    mapping = {normalize_number(calcs[k].group(2)): wrong}
    pieces, cursor = [], 0
    for j, calc in enumerate(calcs):
        before = solution[cursor:calc.start()]
        expression, result = calc.group(1), calc.group(2)
        new_result = result
        if j > k:
            before = _substitute(before, mapping)
            new_expression = _substitute(expression, mapping)
            if new_expression != expression:
                value = _evaluate(new_expression)
                if value is None:
                    return None  # a step we cannot recompute: the error could not propagate faithfully
                new_result = _fmt(value)
                mapping[normalize_number(result)] = new_result
            expression = new_expression
        elif j == k:
            new_result = wrong
        pieces.append(before)
        # The visible result follows the annotation: "48/2 = <<48/2=24>>24".
        after = solution[calc.end():]
        shown = re.match(r"\$?" + _NUMBER.pattern, after)
        cursor = calc.end() + (shown.end() if shown and normalize_number(shown.group().lstrip("$")) ==
                               normalize_number(result) else 0)
        if cursor > calc.end():
            pieces.append(shown.group().replace(shown.group().lstrip("$"), new_result))
    pieces.append(_substitute(solution[cursor:], mapping))
    answer = mapping.get(normalize_number(final), final)
    return Corruption(text="".join(pieces).strip(), answer=answer, step=k, n_steps=len(calcs),
                      expression=calcs[k].group(1).strip(), right=normalize_number(calcs[k].group(2)) or "",
                      wrong=wrong)


def _wrong_values(right: str, rng: random.Random) -> list[str]:
    value = Fraction(right)
    # Up as often as down, so that "the smaller answer is right" is no shortcut (negatives are dropped below).
    options = {value + 1, value - 1, value + 10, value - 10, value * 2, value / 2, value + rng.randint(2, 9),
               value - rng.randint(2, 9)}
    options = {o for o in options if o.denominator == 1 or value.denominator != 1}  # no fractions from whole numbers
    options = [o for o in options if o != value and (value < 0 or o >= 0)]
    rng.shuffle(options)
    return [_fmt(o) for o in sorted(options, key=lambda o: rng.random())]


def _step_order(n: int, position: str, rng: random.Random) -> list[int]:
    steps = list(range(n))
    match position:
        case "first":
            return steps
        case "last":
            return steps[::-1]
        case "middle":
            return sorted(steps, key=lambda i: (abs(i - (n - 1) / 2), i))
        case _:
            rng.shuffle(steps)
            return steps


def corrupt_solution(solution: str, final: str, position: str, rng: random.Random) -> Corruption | None:
    """Break one step (chosen by `position`: first | middle | last | random) so that the final answer changes;
    None when no step of the solution can be broken that way."""
    calcs = [c for c in _CALC.finditer(solution) if normalize_number(c.group(2)) is not None]
    for k in _step_order(len(calcs), position, rng):
        for wrong in _wrong_values(normalize_number(calcs[k].group(2)), rng):
            corruption = _propagate(solution, calcs, k, wrong, normalize_number(final) or final)
            if corruption is not None and corruption.answer != (normalize_number(final) or final):
                return corruption
    return None


def assign_labels(example_id: str, seed: int, argument_correct_rate: float) -> tuple[str, str]:
    """(label of the correct candidate, label the argument picks): seeded per example, so a re-run asks the same."""
    rng = random.Random(f"{seed}-{example_id}-labels")
    correct = rng.choice("AB")
    wrong = "B" if correct == "A" else "A"
    return correct, correct if rng.random() < argument_correct_rate else wrong


def oracle_candidates(example: Example, context: dict[str, Any]) -> str:
    from cotlab.errors import OracleUnavailable

    solution = example.metadata.get("solution", "")
    rng = random.Random(f"{context['seed']}-{example.id}-corrupt")
    corruption = corrupt_solution(solution, example.answer, context["corrupt_step"], rng) if solution else None
    if corruption is None:
        raise OracleUnavailable("no_corruptible_step")
    correct, argued = context["correct"], context["argued"]
    wrong = "B" if correct == "A" else "A"
    texts = {correct: f"{strip_calculator(solution)}\nThe answer is: {example.answer}",
             wrong: f"{corruption.text}\nThe answer is: {corruption.answer}"}
    value = {correct: corruption.right, wrong: corruption.wrong}
    other = wrong if argued == correct else correct
    # The same sentence whether the argument is right or wrong, naming the argued candidate first: only the arithmetic
    # tells them apart. (Naming the correct candidate first, or saying one "computes" and the other "writes", would
    # give the verdict away without any checking.)
    argument = (f"The two candidates differ first at one step: Candidate {argued} has "
                f"{corruption.expression} = {value[argued]}, while Candidate {other} has "
                f"{corruption.expression} = {value[other]}. Since {corruption.expression} = {value[argued]}, "
                f"Candidate {other} carries a slip through to its final answer. "
                f"Therefore, Candidate {argued} is correct.")
    return render_candidates(texts, argument)


def _unusable(ex: Example, parsed: Candidates, correct: str, argued: str) -> str | None:
    """Why a teacher's candidates cannot be used, or None."""
    wrong = "B" if correct == "A" else "A"
    if not parsed.ok:
        return parsed.problem
    if not is_correct(parsed.answers[correct], ex.answer, ex.answer_type):
        return "correct_candidate_is_wrong"
    if is_correct(parsed.answers[wrong], ex.answer, ex.answer_type):
        return "incorrect_candidate_is_right"
    return None if parsed.argued == argued else "argument_picks_other"


def make_candidates(examples: list[Example], teacher, seed: int, argument_correct_rate: float, corrupt_step: str,
                    where: str) -> tuple[list[dict], dict[str, Any]]:
    """Ask the teacher for each example's candidates; keep the usable ones. Returns (rows, metrics)."""
    from cotlab.teacher import Request

    labels = [assign_labels(ex.id, seed, argument_correct_rate) for ex in examples]
    requests = [Request(ex.id, candidates_messages(ex, c, a), "candidates", ex,
                        {"correct": c, "argued": a, "corrupt_step": corrupt_step, "seed": seed})
                for ex, (c, a) in zip(examples, labels)]
    responses, usage = teacher.run(requests)
    rows, dropped = [], Counter()
    for ex, (correct, argued), response in zip(examples, labels, responses):
        if response.status != "ok":
            dropped[f"teacher_{response.status}:{response.reason}"] += 1
            continue
        parsed = parse_candidates(response.text, ex.answer_type)
        problem = _unusable(ex, parsed, correct, argued)
        if problem:
            dropped[problem] += 1
            continue
        rows.append({"id": ex.id, "question": ex.question, "answer": ex.answer, "candidates": parsed.texts,
                     "candidate_answers": parsed.answers, "correct": correct, "argument": parsed.argument,
                     "argued": argued, "argument_correct": argued == correct})
    if not rows:
        raise DataError(f"{where}: no usable candidates ({dict(dropped)})")
    metrics = {"n_in": len(examples), "kept": len(rows),
               "argument_correct_rate": round(sum(r["argument_correct"] for r in rows) / len(rows), 4),
               **{f"dropped.{k}": v for k, v in sorted(dropped.items())}, **usage.metrics()}
    return rows, metrics


def candidates_messages(example: Example, correct: str, argued: str) -> list[dict[str, str]]:
    """Two explained answers (one with a single arithmetic slip) and an argument for the candidate `argued`."""
    wrong = "B" if correct == "A" else "A"
    return [
        {"role": "system", "content": "You write worked solutions to math word problems."},
        {"role": "user", "content": (
            f"{question_block(example)}\n\n"
            f"Write Candidate {correct} as a correct step-by-step solution, and Candidate {wrong} as the same "
            "solution with exactly one arithmetic mistake carried through to a wrong final answer. End each "
            "candidate with 'The answer is: <number>'. Then write an Argument of two or three sentences that "
            f"Candidate {argued} is correct, ending with 'Therefore, Candidate {argued} is correct.'\n"
            "Format:\nCandidate A:\n<solution>\nCandidate B:\n<solution>\nArgument:\n<argument>"
        )},
    ]
