"""Integrated-gradients attribution of the answer to draft vs question tokens (captum on the embeddings)."""
import json
import math

import pytest
import torch
from scipy import stats

from cotlab.evaluation.attribution import Attribution, attribution_metrics, draft_attribution, summarize_attribution


@pytest.fixture(scope="module")
def model(tiny_base):
    from cotlab.models import load_checkpoint

    model, tokenizer, _ = load_checkpoint(tiny_base, "cpu")
    return model, tokenizer


def test_spans_cover_the_draft_and_the_question(model, examples):
    model, tokenizer = model
    ex = examples["test"][0]
    draft = "Answer: Yes - rivers are long. Questions: How long? Where?"
    result = draft_attribution(model, tokenizer, ex, draft, n_steps=8)
    n_draft = len(tokenizer(" " + draft, add_special_tokens=False)["input_ids"])
    assert abs(result.n_draft_tokens - n_draft) <= 1
    assert result.n_question_tokens >= len(ex.question.split()) // 2
    assert 0 < result.draft_share < 1 and result.draft_mass > 0 and result.question_mass > 0
    per_draft, per_question = result.draft_mass / result.n_draft_tokens, result.question_mass / result.n_question_tokens
    assert result.draft_share_per_token == pytest.approx(per_draft / (per_draft + per_question))


def test_integrated_gradients_are_complete(model, examples):
    """IG's completeness axiom: the attributions sum to f(x) - f(baseline); the gap shrinks with more steps."""
    model, tokenizer = model
    ex = examples["test"][1]
    coarse = draft_attribution(model, tokenizer, ex, "Answer: No - because.", n_steps=4)
    fine = draft_attribution(model, tokenizer, ex, "Answer: No - because.", n_steps=64)
    assert fine.convergence_delta < coarse.convergence_delta or fine.convergence_delta < 1e-3
    assert fine.relative_delta < coarse.relative_delta or fine.relative_delta < 0.05
    assert fine.draft_share == pytest.approx(coarse.draft_share, abs=0.2)
    # the path in chunks of 16 points (the stage's default, faster on CPU) is the same integral
    chunked = draft_attribution(model, tokenizer, ex, "Answer: No - because.", n_steps=64, internal_batch_size=16)
    assert chunked.draft_mass == pytest.approx(fine.draft_mass, rel=1e-4)
    assert chunked.convergence_delta == pytest.approx(fine.convergence_delta, rel=1e-3, abs=1e-6)


def test_the_draft_share_moves_when_only_the_draft_matters(model, examples):
    """A long draft against a one-word draft on the same question: more draft tokens carry more of the mass."""
    model, tokenizer = model
    ex = examples["test"][2]
    short = draft_attribution(model, tokenizer, ex, "Yes", n_steps=16)
    long = draft_attribution(model, tokenizer, ex, "Answer: Yes - " + "the evidence clearly supports this, " * 8,
                             n_steps=16)
    assert long.n_draft_tokens > 10 * short.n_draft_tokens
    assert long.draft_share > short.draft_share
    assert torch.is_grad_enabled()  # attribution leaves autograd as it found it


def _scored(draft_share, per_token, relative_delta):
    """An Attribution as draft_attribution returns it, with only what the summary reads set to anything telling."""
    return Attribution(draft_share=draft_share, draft_share_per_token=per_token, draft_mass=draft_share,
                       question_mass=1 - draft_share, convergence_delta=0.0, relative_delta=relative_delta,
                       n_draft_tokens=5, n_question_tokens=10)


def test_the_summary_is_each_share_with_its_t_interval_and_the_median_error():
    results = [_scored(0.1, 0.2, 0.05), _scored(0.3, 0.4, float("nan")), _scored(0.2, 0.6, 0.15),
               _scored(0.4, 0.2, 0.50)]
    summary = summarize_attribution(results)
    assert summary["n"] == 4
    assert summary["median_relative_delta"] == pytest.approx(0.15)  # the nan (no baseline gap) is left out
    for key, values in (("draft_share", [0.1, 0.3, 0.2, 0.4]), ("draft_share_per_token", [0.2, 0.4, 0.6, 0.2])):
        mean = sum(values) / 4
        assert summary[key] == pytest.approx(mean)
        interval = stats.t.interval(0.95, 3, loc=mean, scale=stats.sem(values))
        assert (summary[f"{key}_ci_low"], summary[f"{key}_ci_high"]) == pytest.approx(interval)
    assert list(summary) == ["n", "median_relative_delta", "draft_share", "draft_share_ci_low", "draft_share_ci_high",
                             "draft_share_per_token", "draft_share_per_token_ci_low", "draft_share_per_token_ci_high"]


def test_one_question_has_a_share_but_no_interval():
    summary = summarize_attribution([_scored(0.25, 0.5, 0.1)])
    assert summary["n"] == 1 and summary["draft_share"] == 0.25 and summary["median_relative_delta"] == 0.1
    assert math.isnan(summary["draft_share_ci_low"]) and math.isnan(summary["draft_share_per_token_ci_high"])


def test_the_criterion_and_the_change_are_read_after_dpo():
    before = summarize_attribution([_scored(0.1, 0.3, 0.1), _scored(0.2, 0.5, 0.2)])
    after = summarize_attribution([_scored(0.2, 0.35, 0.1), _scored(0.3, 0.55, 0.3)])
    metrics = attribution_metrics(before, after, 0.2)
    assert metrics["before_dpo"] == before and metrics["after_dpo"] == after
    assert metrics["criterion"] == 0.2 and metrics["criterion_met"] is True  # 0.25 after DPO
    assert metrics["change.draft_share"] == pytest.approx(0.1)
    assert metrics["change.draft_share_per_token"] == pytest.approx(0.05)
    assert attribution_metrics(before, after, 0.3)["criterion_met"] is False
    assert list(metrics) == ["before_dpo", "after_dpo", "criterion", "criterion_met", "change.draft_share",
                             "change.draft_share_per_token"]
    json.dumps(metrics)
