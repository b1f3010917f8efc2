"""Evaluation statistics, delegated to scipy so the formulas are the audited ones."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["wilson_interval", "mcnemar_exact", "paired_bootstrap_diff", "summarize", "mean_with_ci",
           "two_stage_metrics", "paired_logprob_gain"]

TOP_K_ANSWERS = 10
INVALID_KEY = "pred_share.:invalid"
OTHER_KEY = "pred_share.:other"


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n.

    n == 0 gives (nan, nan): an empty sample has no interval, and a fake (0, 1)
    would silently look like data in plots and metric diffs.
    """
    if n == 0:
        return (math.nan, math.nan)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def _as_bool_pair(a: Sequence[bool], b: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(f"paired samples must be 1-D and equal length, got {a_arr.shape} and {b_arr.shape}")
    return a_arr, b_arr


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """Exact (binomial) McNemar test on paired correctness vectors.

    Returns ``b`` (a right, b wrong), ``c`` (a wrong, b right), two-sided ``p_value``
    (1.0 when there are no discordant pairs) and ``n``.
    """
    a, b_ = _as_bool_pair(a_correct, b_correct)
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    p = stats.binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    return {"b": b, "c": c, "p_value": float(p), "n": int(a.size)}


def _mean_diff(x, y, axis=-1):
    return np.mean(y, axis=axis) - np.mean(x, axis=axis)


def paired_bootstrap_diff(
    a_correct: Sequence[bool],
    b_correct: Sequence[bool],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Paired percentile-bootstrap CI for accuracy(b) - accuracy(a).

    Percentile (not BCa) because BCa breaks down on the near-constant vectors that
    small evals produce. If every paired difference is identical the bootstrap
    distribution is a point, so the CI is returned as [diff, diff] directly.
    Empty input gives all-nan.
    """
    a_bool, b_bool = _as_bool_pair(a_correct, b_correct)
    a, b = a_bool.astype(float), b_bool.astype(float)
    if a.size == 0:
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    diff = float(b.mean() - a.mean())
    if np.all(b - a == (b - a)[0]):
        return {"diff": diff, "ci_low": diff, "ci_high": diff}
    res = stats.bootstrap(
        (a, b),
        _mean_diff,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return {
        "diff": diff,
        "ci_low": float(res.confidence_interval.low),
        "ci_high": float(res.confidence_interval.high),
    }


def _answer_key(answer: str) -> str:
    # DVC flattens nested metrics on ".", so dots (and anything odd) become "_".
    key = re.sub(r"[^0-9A-Za-z_\-]+", "_", str(answer)).strip("_")
    return f"pred_share.{key or '_'}"


def summarize(predictions: list[dict]) -> dict:
    """Flat metrics dict (floats/ints only) for a list of per-example predictions.

    Keys: n, accuracy(+_ci_low/_ci_high), accuracy_strict(+CI), invalid_rate,
    invalid_rate_strict, truncation_rate, and ``pred_share.<answer>`` for the 10
    most common (sanitised) flexible predictions plus ``pred_share.:invalid``
    (pred is None) and ``pred_share.:other``; both are always present so the
    metric schema is stable. Answers that sanitise to the same key are merged.
    Rates are nan when n == 0.
    """
    n = len(predictions)
    rate = (lambda k: k / n) if n else (lambda k: math.nan)
    k = sum(bool(p.get("correct", False)) for p in predictions)
    k_strict = sum(bool(p.get("correct_strict", False)) for p in predictions)
    lo, hi = wilson_interval(k, n)
    lo_s, hi_s = wilson_interval(k_strict, n)
    out: dict = {
        "n": n,
        "accuracy": rate(k),
        "accuracy_ci_low": lo,
        "accuracy_ci_high": hi,
        "accuracy_strict": rate(k_strict),
        "accuracy_strict_ci_low": lo_s,
        "accuracy_strict_ci_high": hi_s,
        "invalid_rate": rate(sum(p.get("pred") is None for p in predictions)),
        "invalid_rate_strict": rate(sum(p.get("pred_strict") is None for p in predictions)),
        "truncation_rate": rate(sum(bool(p.get("truncated", False)) for p in predictions)),
    }
    counts = Counter(_answer_key(p["pred"]) for p in predictions if p.get("pred") is not None)
    # Sort by (-count, key) so ties are broken the same way on every run.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    for key, count in ranked[:TOP_K_ANSWERS]:
        out[key] = rate(count)
    out[INVALID_KEY] = out["invalid_rate"]
    out[OTHER_KEY] = rate(sum(count for _, count in ranked[TOP_K_ANSWERS:]))
    return out


def mean_with_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean and its t-interval (scipy), for per-example scores such as attribution shares."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        mean = float(x.mean()) if x.size else float("nan")
        return {"mean": mean, "ci_low": float("nan"), "ci_high": float("nan"), "n": int(x.size)}
    low, high = stats.t.interval(confidence, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    return {"mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(x.size)}


def two_stage_metrics(rows: list[dict], confidence: float = 0.95) -> dict:
    """`summarize` plus what the two-stage protocol records per row: an accuracy with its Wilson interval for each
    extraction variant (`correct_<variant>`, strict aside: `summarize` has it), the mean gold-answer log-prob with
    its t interval, and the share of CoTs that repeat themselves (`cot_repetition` > 0.5)."""
    metrics = summarize(rows)
    n = len(rows)
    for variant in sorted({k[len("correct_"):] for r in rows for k in r if k.startswith("correct_")} - {"strict"}):
        k = sum(r[f"correct_{variant}"] for r in rows)
        low, high = wilson_interval(k, n, confidence)
        metrics.update({f"accuracy_{variant}": k / n, f"accuracy_{variant}_ci_low": low,
                        f"accuracy_{variant}_ci_high": high})
    logprobs = [r["answer_logprob"] for r in rows]
    metrics["answer_logprob"] = sum(logprobs) / n
    interval = stats.ttest_1samp(logprobs, 0.0).confidence_interval(confidence)
    metrics["answer_logprob_ci_low"], metrics["answer_logprob_ci_high"] = float(interval.low), float(interval.high)
    metrics["cot_repetition_rate"] = sum(r["cot_repetition"] > 0.5 for r in rows) / n
    if all("cot_contains_answer" in r for r in rows):  # the CoT's information: it spells out the gold answer
        k = sum(r["cot_contains_answer"] for r in rows)
        low, high = wilson_interval(k, n, confidence)
        metrics.update({"cot_contains_answer": k / n, "cot_contains_answer_ci_low": low,
                        "cot_contains_answer_ci_high": high})
    return metrics


def paired_logprob_gain(trained_rows: list[dict], base_rows: list[dict], confidence: float = 0.95) -> dict:
    """The reward itself, paired per question: the gold answer's log-prob after the trained CoT minus after the
    base's, as the mean difference, its t interval and the Wilcoxon signed-rank p. Wilcoxon is 0/0 when every
    difference is zero, and no difference at all is no evidence of a gain: p = 1.0."""
    diffs = [t["answer_logprob"] - b["answer_logprob"] for t, b in zip(trained_rows, base_rows)]
    interval = stats.ttest_1samp(diffs, 0.0).confidence_interval(confidence)
    return {"answer_logprob_vs_base": sum(diffs) / len(diffs),
            "answer_logprob_vs_base_ci_low": float(interval.low),
            "answer_logprob_vs_base_ci_high": float(interval.high),
            "answer_logprob_vs_base_wilcoxon_p": float(stats.wilcoxon(diffs).pvalue) if any(diffs) else 1.0}
