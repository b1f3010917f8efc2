"""Integrated-gradients attribution of the answer to draft vs question tokens (captum on the embeddings)."""
import pytest
import torch

from cotlab.evaluation.attribution import draft_attribution


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
