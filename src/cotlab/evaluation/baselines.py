"""Trivial baselines and collapse: what an accuracy must beat before it means anything.

A model that gives one answer to every question scores the test split's share of that answer, and a base model that
does so is no yardstick. So every accuracy the report prints sits beside, per task:
- the majority-class predictor: the most frequent gold answer of the *train* split, scored on the test questions
  (designed on train, never on test);
- chance, 1/k, where the answer set is finite (yes/no: 2; multiple choice and the transplant's candidates: their
  count); open answers (numbers, names) have none;
- the follow-the-argument predictor, where the rows record the argument (the transplant);
and, per model, its balanced accuracy (the mean per-class recall, on finite answer sets), the share of its most common
answer, and `collapsed` when that share reaches COLLAPSE_SHARE. An effect counts only against the strongest of the
trivial baselines (`strongest`), paired where the baseline is a predictor (McNemar on the same questions), against
its level where it is chance (exact binomial test)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from scipy import stats

from cotlab.answers import is_correct, normalize_answer

COLLAPSE_SHARE = 0.9  # a model whose most common answer takes >= 90% of the rows answers one thing to everything
INVALID = ":invalid"  # the "answer" of a row whose extraction found none
FINITE = ("yes_no", "choice", "label")  # answer types with a finite answer set: chance and balanced accuracy exist


def answer_key(answer: str | None, answer_type: str) -> str:
    """One key per distinct answer: normalised where it parses ("Yes" and "yes" are one answer), INVALID for none."""
    if answer is None:
        return INVALID
    if answer_type == "label":  # the transplant's candidate identifiers: compared as written
        return str(answer)
    return normalize_answer(answer, answer_type) or str(answer).strip()


def majority_answer(golds: Sequence[str], answer_type: str) -> str | None:
    """The most frequent gold answer (ties broken by the key, so every run picks the same); None for no rows."""
    counts = Counter(answer_key(g, answer_type) for g in golds)
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else None


def answer_profile(preds: Sequence[dict], answer_type: str) -> dict:
    """The share of the most common answer (invalid counts as an answer: a model that always fails to answer is
    collapsed too), `collapsed`, and balanced accuracy (None for open answer types, where classes are not few, and
    for rows that do not record their gold)."""
    counts = Counter(answer_key(p.get("pred"), answer_type) for p in preds)
    top, k = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    out = {"top_answer": top, "top_share": k / len(preds), "collapsed": k / len(preds) >= COLLAPSE_SHARE,
           "balanced_accuracy": None}
    if answer_type in FINITE and all("gold" in p for p in preds):  # rows without their gold: no classes to recall
        by_class: dict[str, list[bool]] = {}
        for p in preds:
            by_class.setdefault(answer_key(p["gold"], answer_type), []).append(bool(p["correct"]))
        out["balanced_accuracy"] = sum(sum(v) / len(v) for v in by_class.values()) / len(by_class)
    return out


def predictors(preds: Sequence[dict], answer_type: str, majority: str | None) -> dict[str, list[bool]]:
    """Per-question correctness of the deterministic trivial predictors on these rows (in their order): `majority`
    (always the train split's majority answer) and, where rows record the argument, `follow_argument`."""
    out = {}
    if majority is not None:
        out["majority"] = [majority == answer_key(p["gold"], answer_type) if answer_type == "label"
                           else is_correct(majority, p["gold"], answer_type) for p in preds]
    if preds and all("argument_correct" in p for p in preds):
        out["follow_argument"] = [bool(p["argument_correct"]) for p in preds]
    return out


def task_baselines(preds: Sequence[dict], answer_type: str, majority: str | None, n_options: int | None) -> dict:
    """A task's trivial baselines on its test questions (`preds`: any model's rows, for the golds and the argument):
    each one's accuracy, and `strongest`, the highest (a predictor wins a tie with chance: it can be paired)."""
    levels = {name: sum(c) / len(c) for name, c in predictors(preds, answer_type, majority).items()}
    out: dict = {"majority_answer": majority, "majority_accuracy": levels.get("majority"),
                 "chance": 1 / n_options if n_options else None,
                 "follow_argument_accuracy": levels.get("follow_argument")}
    if out["chance"] is not None:
        levels["chance"] = out["chance"]
    out["strongest"] = max(levels, key=lambda name: (levels[name], name != "chance")) if levels else None
    out["strongest_accuracy"] = levels.get(out["strongest"])
    return out


def vs_strongest(preds: Sequence[dict], answer_type: str, baselines: dict, paired) -> dict:
    """The model against its task's strongest trivial baseline: the difference and its p (`paired(a, b)` gives the
    paired difference and McNemar p for per-question correctness; chance, having no questions, is an exact binomial
    test of the accuracy against 1/k). Empty where the task has no trivial baseline."""
    name = baselines.get("strongest")
    if name is None:
        return {}
    correct = [bool(p["correct"]) for p in preds]
    if name == "chance":
        diff = sum(correct) / len(correct) - baselines["chance"]
        p = stats.binomtest(sum(correct), len(correct), baselines["chance"]).pvalue
        return {"baseline": name, "diff_vs_baseline": diff, "p_vs_baseline": float(p)}
    baseline = predictors(preds, answer_type, baselines["majority_answer"])[name]
    d = paired(baseline, correct)
    return {"baseline": name, "diff_vs_baseline": d["diff"], "diff_vs_baseline_ci_low": d["ci_low"],
            "diff_vs_baseline_ci_high": d["ci_high"], "p_vs_baseline": d["mcnemar_p"]}
