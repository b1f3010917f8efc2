"""Filter teacher outputs into training data, then restore the class balance filtering may have broken.

A row is kept when the teacher answered, its reply parses (a final answer and some reasoning), its answer agrees
with the ground truth, its question is not a duplicate and its reasoning length is within limits; each dropped
row counts under the first reason that applies. Filtering can skew classes (a 45/55 Yes/No split became 28/72 in
the source write-up and the model learned to say No), so class shares are reported before and after, and
`rebalance` restores them: upsample the minority classes, downsample the majority, or give each row the weight
n / (K * n_class) that training consumes.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

from cotlab.config import ConfigError
from cotlab.schema import DataError, Example
from cotlab.data.sources import normalize_question
from cotlab.answers import is_correct
from cotlab.formats import parse_draft, parse_teacher

@dataclass
class FilterConfig:
    """The `filter` section: teacher outputs -> training data (Phase A and B train on data/filtered)."""

    require_agreement: bool = True  # drop rows whose teacher answer differs from the ground truth
    dedupe: bool = True
    min_reasoning_words: int = 3
    max_reasoning_words: int = 400
    rebalance: Literal["none", "upsample", "downsample", "weights"] = "upsample"

    def __post_init__(self):
        if self.min_reasoning_words > self.max_reasoning_words:
            raise ConfigError("min_reasoning_words: larger than max_reasoning_words")


CLASS_TYPES = ("yes_no", "choice")
DROP_REASONS = ("teacher_failed", "unparseable", "disagrees", "too_short", "too_long", "duplicate")


def _shares(examples: Sequence[Example]) -> dict[str, float]:
    total = sum(ex.weight for ex in examples)
    counts: Counter = Counter()
    for ex in examples:
        counts[ex.answer] += ex.weight
    return {answer: round(w / total, 4) for answer, w in sorted(counts.items())} if total else {}


def filter_examples(examples: Sequence[Example], drafts: dict[str, dict], teacher: dict[str, dict],
                    config: FilterConfig, where: str) -> tuple[list[Example], dict[str, Any]]:
    dropped: Counter = Counter()
    problems: Counter = Counter()
    agree = parsed = draft_ok = draft_correct = 0
    seen: set[str] = set()
    kept: list[Example] = []
    for ex in examples:
        draft_row = drafts.get(ex.id, {})
        draft = parse_draft(draft_row.get("draft", ""), ex.answer_type)
        draft_ok += draft.ok
        draft_correct += draft.ok and is_correct(draft.answer, ex.answer, ex.answer_type)
        reply = teacher.get(ex.id)
        if reply is not None and reply.get("status") == "dry_run":
            raise DataError(f"{where}: the teacher stage ran with teacher.dry_run: true and has no answers; "
                            "set teacher.dry_run: false to generate them")
        if reply is None or reply.get("status") != "ok":
            dropped["teacher_failed"] += 1
            continue
        out = parse_teacher(reply.get("text", ""), ex.answer_type)
        if not out.ok and out.answer is None:
            problems[out.problem] += 1
            dropped["unparseable"] += 1
            continue
        parsed += 1
        agrees = is_correct(out.answer, ex.answer, ex.answer_type)
        agree += agrees
        n_words = len(out.reasoning.split())
        question = normalize_question(" ".join((ex.context, ex.draft_context, ex.question)))
        reason = ("disagrees" if config.require_agreement and not agrees else
                  "too_short" if n_words < max(config.min_reasoning_words, 1) else
                  "too_long" if n_words > config.max_reasoning_words else
                  "duplicate" if config.dedupe and question in seen else None)
        if reason:
            dropped[reason] += 1
            continue
        seen.add(question)
        kept.append(replace(ex, reasoning=out.reasoning, metadata={
            **ex.metadata, "draft": draft_row.get("draft", ""), "draft_answer": draft.answer,
            "teacher_analysis": out.analysis, "teacher_answer": out.answer}))
    metrics: dict[str, Any] = {
        "n_in": len(examples),
        "kept": len(kept),
        **{f"dropped.{r}": dropped[r] for r in DROP_REASONS},
        **{f"teacher_unparseable.{p}": n for p, n in sorted(problems.items())},
        "teacher_agreement_rate": round(agree / parsed, 4) if parsed else 0.0,
        "draft_parse_rate": round(draft_ok / len(examples), 4) if examples else 0.0,
        "draft_accuracy": round(draft_correct / len(examples), 4) if examples else 0.0,
    }
    if not kept:
        raise DataError(f"{where}: every row was dropped ({dict(dropped)}); nothing to train on. Check the teacher "
                        "outputs or loosen the filter params")
    return kept, metrics


def rebalance(examples: list[Example], method: str, seed: int, where: str) -> tuple[list[Example], dict[str, Any]]:
    """Class shares before and after; the examples rebalanced by `method` (none | upsample | downsample | weights)."""
    by_class: dict[str, list[Example]] = {}
    for ex in examples:
        by_class.setdefault(ex.answer, []).append(ex)
    rng = random.Random(f"{seed}-rebalance")
    sizes = {c: len(rows) for c, rows in by_class.items()}
    match method:
        case "none":
            out = list(examples)
        case "upsample":
            target = max(sizes.values())
            out = list(examples)
            for c in sorted(by_class):
                extra = rng.choices(by_class[c], k=target - sizes[c])
                out += [replace(ex, id=f"{ex.id}~up{i}") for i, ex in enumerate(extra, start=1)]
        case "downsample":
            target = min(sizes.values())
            keep = {id(ex) for c in sorted(by_class) for ex in rng.sample(by_class[c], target)}
            out = [ex for ex in examples if id(ex) in keep]  # source order, so files stay readable
        case "weights":
            k, n = len(by_class), len(examples)
            out = [replace(ex, weight=round(n / (k * sizes[ex.answer]), 6)) for ex in examples]
        case _:
            raise ValueError(f"{where}: unknown rebalance {method!r}")
    return out, {"n_out": len(out), **{f"share_after.{c}": s for c, s in _shares(out).items()}}


def class_report(before: Sequence[Example], filtered: Sequence[Example], where: str) -> dict[str, Any]:
    """Shares in the input and after filtering; a class that filtering removed entirely is an error."""
    if not before or before[0].answer_type not in CLASS_TYPES:
        return {}
    shares_before, shares_filtered = _shares(before), _shares(filtered)
    vanished = sorted(set(shares_before) - set(shares_filtered))
    if vanished:
        counts = Counter(ex.answer for ex in before)
        raise DataError(f"{where}: class {vanished[0]!r} vanished in filtering ({counts[vanished[0]]} rows before, "
                        "0 after); the model would never see it. Check the teacher outputs or loosen the filter")
    return {**{f"share_before.{c}": s for c, s in shares_before.items()},
            **{f"share_filtered.{c}": s for c, s in shares_filtered.items()}}
