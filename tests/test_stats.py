import json
import math

import pytest
from scipy import stats

from cotlab.evaluation.mechanisms import spearman_interval
from cotlab.evaluation.stats import (mcnemar_exact, paired_bootstrap_diff, paired_logprob_gain, summarize,
                                     two_stage_metrics, wilson_interval)


def test_wilson_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490, abs=1e-3)
    assert hi == pytest.approx(0.943, abs=1e-3)


def test_wilson_edges():
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0 < hi < 0.35
    lo, hi = wilson_interval(10, 10)
    assert 0.65 < lo < 1 and hi == pytest.approx(1.0)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    lo90, hi90 = wilson_interval(8, 10, confidence=0.90)
    assert lo90 > lo or hi90 < 1  # narrower interval at lower confidence
    assert wilson_interval(8, 10, 0.90)[0] > wilson_interval(8, 10)[0]


def test_spearman_interval_is_fisher_z_with_bonett_wright_variance_and_covers():
    # By hand: atanh(0.5) = 0.5493, se = sqrt((1 + 0.25 / 2) / 25) = 0.2121, tanh(0.5493 -+ 1.96 * 0.2121)
    assert spearman_interval(0.5, 28) == pytest.approx((0.1327, 0.7463), abs=1e-3)
    low, high = spearman_interval(0.0, 28)
    assert low == pytest.approx(-high) and high == pytest.approx(math.tanh(1.96 / 5), abs=1e-3)
    assert all(math.isnan(x) for x in spearman_interval(0.3, 3))
    # Coverage on bivariate normal samples of 24 (a Markovian run's steps): the population Spearman of a normal
    # pair with correlation r is 6 / pi * asin(r / 2)
    import numpy as np
    rng, r, n = np.random.default_rng(0), 0.6, 24
    truth = 6 / math.pi * math.asin(r / 2)
    hits = 0
    for _ in range(400):
        x, y = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=n).T
        low, high = spearman_interval(stats.spearmanr(x, y).statistic, n)
        hits += low <= truth <= high
    assert 0.91 <= hits / 400 <= 0.99


def test_mcnemar_known_table():
    # 10 pairs where only a is right, 2 where only b is right, plus concordant pairs.
    a = [True] * 10 + [False] * 2 + [True] * 5 + [False] * 3
    b = [False] * 10 + [True] * 2 + [True] * 5 + [False] * 3
    res = mcnemar_exact(a, b)
    assert res["b"] == 10 and res["c"] == 2 and res["n"] == 20
    assert res["p_value"] == pytest.approx(158 / 4096, rel=1e-9)  # ~0.0386


def test_mcnemar_identical_and_errors():
    v = [True, False, True, True]
    assert mcnemar_exact(v, v) == {"b": 0, "c": 0, "p_value": 1.0, "n": 4}
    assert mcnemar_exact([], [])["p_value"] == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_mcnemar_symmetric():
    a = [True, True, True, False, False]
    b = [False, False, True, True, False]
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(mcnemar_exact(b, a)["p_value"])


def test_bootstrap_simple_case():
    # b is right on 30 more items out of 100: true diff 0.3.
    a = [True] * 40 + [False] * 60
    b = [True] * 70 + [False] * 30
    res = paired_bootstrap_diff(a, b, n_resamples=1000)
    assert res["diff"] == pytest.approx(0.3)
    assert res["ci_low"] > 0
    assert res["ci_low"] <= 0.3 <= res["ci_high"]
    rev = paired_bootstrap_diff(b, a, n_resamples=1000)
    assert rev["diff"] == pytest.approx(-0.3) and rev["ci_high"] < 0


def test_bootstrap_reproducible():
    a = [True, False, True, False, True, True, False, False]
    b = [True, True, False, True, True, False, True, False]
    assert paired_bootstrap_diff(a, b, seed=3) == paired_bootstrap_diff(a, b, seed=3)


@pytest.mark.parametrize(
    "a, b, diff",
    [
        ([True] * 5, [True] * 5, 0.0),
        ([False] * 5, [True] * 5, 1.0),
        ([True, False], [True, False], 0.0),
        ([True], [False], -1.0),
    ],
)
def test_bootstrap_degenerate(a, b, diff):
    res = paired_bootstrap_diff(a, b)
    assert res == {"diff": diff, "ci_low": diff, "ci_high": diff}


def test_bootstrap_empty_and_mismatch():
    res = paired_bootstrap_diff([], [])
    assert all(math.isnan(v) for v in res.values())
    with pytest.raises(ValueError):
        paired_bootstrap_diff([True, False], [True])


def _pred(pred, correct, pred_strict=None, correct_strict=False, truncated=False):
    return {
        "pred": pred,
        "pred_strict": pred_strict,
        "correct": correct,
        "correct_strict": correct_strict,
        "truncated": truncated,
    }


def test_summarize_hand_made():
    preds = [
        _pred("18", True, "18", True),
        _pred("18", True, None, False, truncated=True),
        _pred("0.5", False, "0.5", False),
        _pred(None, False, None, False, truncated=True),
    ]
    s = summarize(preds)
    assert s["n"] == 4
    assert s["accuracy"] == 0.5
    assert s["accuracy_strict"] == 0.25
    assert s["invalid_rate"] == 0.25
    assert s["invalid_rate_strict"] == 0.5
    assert s["truncation_rate"] == 0.5
    assert (s["accuracy_ci_low"], s["accuracy_ci_high"]) == wilson_interval(2, 4)
    assert (s["accuracy_strict_ci_low"], s["accuracy_strict_ci_high"]) == wilson_interval(1, 4)
    assert s["pred_share.18"] == 0.5
    assert s["pred_share.0_5"] == 0.25
    assert s["pred_share.:invalid"] == 0.25
    assert s["pred_share.:other"] == 0.0
    # Flat, JSON-safe, numbers only, and answers carry no dots of their own.
    json.dumps(s)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in s.values())
    assert all(k.count(".") <= 1 for k in s)


def test_summarize_top_k_and_other():
    preds = [_pred(str(i), False) for i in range(12)] + [_pred("0", True)]
    s = summarize(preds)
    shares = {k: v for k, v in s.items() if k.startswith("pred_share.")}
    assert len(shares) == 12  # 10 answers + :invalid + :other
    assert s["pred_share.0"] == pytest.approx(2 / 13)
    assert s["pred_share.:other"] == pytest.approx(2 / 13)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_summarize_sanitizes_keys_and_empty():
    s = summarize([_pred("Carol Smith", True), _pred("a.b/c", False)])
    assert "pred_share.Carol_Smith" in s and "pred_share.a_b_c" in s
    empty = summarize([])
    assert empty["n"] == 0 and math.isnan(empty["accuracy"])
    assert math.isnan(empty["accuracy_ci_low"])


def _two_stage_row(anchored, simple, logprob, repetition=0.0):
    """A row as markovian.two_stage writes it for a number question: `correct` is the primary (anchored) reading."""
    return {"pred": "7" if anchored else "3", "pred_strict": None, "correct": anchored, "correct_strict": False,
            "truncated": False, "correct_anchored": anchored, "correct_simple": simple,
            "answer_logprob": logprob, "cot_repetition": repetition}


def test_two_stage_metrics_reports_each_extraction_variant_and_the_logprob_interval():
    rows = [_two_stage_row(True, True, -0.5), _two_stage_row(True, False, -1.0, repetition=0.9),
            _two_stage_row(False, False, -2.5), _two_stage_row(True, True, -0.2, repetition=0.5)]
    m = two_stage_metrics(rows)
    assert {k: m[k] for k in summarize(rows)} == summarize(rows)
    assert m["accuracy_anchored"] == 0.75 and m["accuracy_simple"] == 0.5
    assert (m["accuracy_anchored_ci_low"], m["accuracy_anchored_ci_high"]) == wilson_interval(3, 4)
    assert (m["accuracy_simple_ci_low"], m["accuracy_simple_ci_high"]) == wilson_interval(2, 4)
    assert "accuracy_strict_ci_low" in m and not any(k.startswith("accuracy_strict_strict") for k in m)
    assert m["answer_logprob"] == pytest.approx(-1.05)
    t = stats.t.interval(0.95, 3, loc=-1.05, scale=stats.sem([-0.5, -1.0, -2.5, -0.2]))
    assert (m["answer_logprob_ci_low"], m["answer_logprob_ci_high"]) == pytest.approx(t)
    assert m["cot_repetition_rate"] == 0.25  # repetition strictly above one half: 0.5 itself is not repetitive
    json.dumps(m)


def test_paired_logprob_gain_is_the_mean_difference_with_its_t_interval_and_wilcoxon_p():
    base = [_two_stage_row(False, False, lp) for lp in (-2.0, -1.5, -3.0, -1.0, -2.2)]
    trained = [_two_stage_row(True, True, lp) for lp in (-1.0, -1.6, -1.0, -0.4, -1.2)]
    diffs = [1.0, -0.1, 2.0, 0.6, 1.0]
    gain = paired_logprob_gain(trained, base)
    assert gain["answer_logprob_vs_base"] == pytest.approx(sum(diffs) / 5)
    interval = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert gain["answer_logprob_vs_base_ci_low"] == pytest.approx(interval.low)
    assert gain["answer_logprob_vs_base_ci_high"] == pytest.approx(interval.high)
    assert interval.low < gain["answer_logprob_vs_base"] < interval.high
    assert gain["answer_logprob_vs_base_wilcoxon_p"] == pytest.approx(stats.wilcoxon(diffs).pvalue)


def test_paired_logprob_gain_with_no_difference_has_p_one():
    """Wilcoxon's normal approximation is 0/0 on all-zero differences; an actor that matches its base everywhere is
    no evidence of a gain, and its interval has zero width at zero."""
    rows = [_two_stage_row(True, True, lp) for lp in (-1.0, -0.5, -2.0)]
    gain = paired_logprob_gain(rows, [dict(r) for r in rows])
    assert gain["answer_logprob_vs_base"] == 0.0
    assert gain["answer_logprob_vs_base_wilcoxon_p"] == 1.0
    assert gain["answer_logprob_vs_base_ci_low"] == gain["answer_logprob_vs_base_ci_high"] == 0.0
