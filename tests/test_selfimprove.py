"""The self-improving recipe's validations: draft ablations, syllogism reasoning, the judge (through a real
OpenAI-protocol server on 127.0.0.1), summaries with intervals, and ablations paired in the comparison."""
import math
import random

import pytest
import reasoning_gym
from scipy import stats

from cotlab.teacher import TeacherConfig
from cotlab.data.syllogism import counterexample, reasoning
from cotlab.evaluation.compare import compare, markdown
from cotlab.evaluation.stats import mean_with_ci
from cotlab.selfimprove.ablations import NO_COT_PREFILL, ablation_inputs, shuffled
from cotlab.selfimprove.judge import (asked_questions, judge_messages, judge_outcomes, judge_pairs, parse_verdict,
                                      win_rate)
from cotlab.teacher import Request, Teacher
from openai_server import FakeOpenAI


@pytest.mark.parametrize("n", [2, 3, 10, 57])
def test_shuffled_drafts_are_a_seeded_derangement(n):
    drafts = [f"draft {i}" for i in range(n)]
    out = shuffled(drafts, seed=0)
    assert sorted(out) == sorted(drafts)  # every draft used once
    assert all(a != b for a, b in zip(out, drafts))  # no question keeps its own draft
    assert out == shuffled(drafts, seed=0) and (n < 4 or out != shuffled(drafts, seed=1))


def test_ablation_inputs():
    drafts = ["a", "b", "c"]
    assert ablation_inputs("full", drafts, 0) == (drafts, "")
    assert ablation_inputs("no_draft", drafts, 0) == (None, "")
    assert ablation_inputs("no_cot", drafts, 0) == (drafts, NO_COT_PREFILL)
    shown, prefill = ablation_inputs("shuffled_draft", drafts, 0)
    assert prefill == "" and sorted(shown) == drafts and shown != drafts
    with pytest.raises(ValueError, match="unknown ablation 'none'"):
        ablation_inputs("none", drafts, 0)


def test_evaluation_with_drafts_and_prefill(tiny_base, examples):
    from cotlab.evaluation.run import evaluate
    from cotlab.models import load_checkpoint

    model, tokenizer, _ = load_checkpoint(tiny_base, "cpu")
    test = examples["test"][:4]
    drafts = [f"Answer: Yes - draft number {i}" for i in range(4)]
    preds, metrics = evaluate(model, tokenizer, test, "cot", 4, 4, drafts=drafts, prefill=NO_COT_PREFILL)
    assert all(f"Student draft: {d}" in p["prompt"] for p, d in zip(preds, drafts))
    assert all(p["prompt"].endswith(NO_COT_PREFILL) and p["output"].startswith(NO_COT_PREFILL) for p in preds)
    plain, _ = evaluate(model, tokenizer, test, "cot", 4, 4)
    assert not any("Student draft:" in p["prompt"] for p in plain) and metrics["n"] == 4


def test_syllogism_reasoning_is_a_model_check():
    assert counterexample(["All dogs are mammals", "All mammals are animals"], "All dogs are animals") is None
    text, follows = reasoning(["All ants are dolphins", "Some dolphins are not spiders"], "Some ants are not spiders")
    assert not follows and "Counterexample" in text and "does not follow" in text
    # Existential import (every named group has members), as reasoning-gym assumes:
    _, follows = reasoning(["All adults are grandparents", "No grandparents are fish"], "Some adults are not fish")
    assert follows
    agree = 0
    items = list(reasoning_gym.create_dataset("syllogism", size=200, seed=5))
    for item in items:
        m = item["metadata"]
        agree += reasoning([m["premise1"], m["premise2"]], m["conclusion"])[1] == m["is_valid"]
    assert agree / len(items) > 0.8  # the rest are reasoning-gym labels our check disputes (dropped at load)


def test_disputed_syllogism_labels_are_dropped():
    from cotlab.data.sources import load_task

    data = load_task("syllogism", {"source": "reasoning_gym", "dataset": "syllogism"}, 40, 40, seed=0)
    for split in ("train", "test"):
        assert len(data[split]) == 40
        for ex in data[split]:
            assert not ex.metadata["label_disputed"] and ex.reasoning
            assert ex.reasoning.endswith("so it follows.") == (ex.answer == "yes")


def test_mean_with_ci_is_the_t_interval():
    values = [0.1, 0.3, 0.25, 0.4, 0.05, 0.2]
    out = mean_with_ci(values)
    low, high = stats.t.interval(0.95, 5, loc=sum(values) / 6, scale=stats.sem(values))
    assert out["mean"] == pytest.approx(0.2166666, rel=1e-5) and (out["ci_low"], out["ci_high"]) == pytest.approx((low, high))
    assert math.isnan(mean_with_ci([0.3])["ci_low"])


def test_parse_verdict():
    assert parse_verdict("A") == "A" and parse_verdict(" Student B.") == "B" and parse_verdict("**B**") == "B"
    assert parse_verdict("Both are good") is None and parse_verdict("") is None


def _judge(pairs, reply, cache_dir):
    """The verdicts of a judge served over the OpenAI protocol, one per comparison."""
    with FakeOpenAI(reply=reply) as server:
        config = TeacherConfig(backend="openai", model="judge", base_url=server.base_url, api_key_env=None,
                               max_tokens=4)
        responses, usage = Teacher(config, cache_dir=cache_dir).run(
            [Request(p["id"], p["messages"], "judge") for p in pairs])
    assert usage.answered == len(pairs)
    return [parse_verdict(r.text) for r in responses]


def test_the_judge_asks_both_orders(examples):
    test = examples["test"] + examples["train"]
    challenger = {ex.id: ["Is it true?"] for ex in test}
    incumbent = {ex.id: ["What is it?"] for ex in test[:-3]}  # 3 questions without incumbent questions: skipped
    pairs = judge_pairs(test, challenger, incumbent)
    assert len(pairs) == 2 * (len(test) - 3)
    for ex, (first, second) in zip(test, zip(pairs[::2], pairs[1::2])):
        assert first["id"] == second["id"] == ex.id
        assert (first["challenger_label"], second["challenger_label"]) == ("A", "B")
        assert first["messages"] == judge_messages(ex, "Is it true?", "What is it?")
        assert second["messages"] == judge_messages(ex, "What is it?", "Is it true?")


def test_a_judge_with_pure_position_bias_gives_only_ties(examples, tmp_path):
    """A judge that always answers "A" is uninformative: every question a tie, not a coin's half of wins."""
    test = examples["test"][:10]
    pairs = judge_pairs(test, {ex.id: ["Is it true?"] for ex in test}, {ex.id: ["What is it?"] for ex in test})
    result = win_rate(pairs, _judge(pairs, lambda messages: "A", tmp_path))
    n = len(test)
    assert result["n_compared"] == n and result["ties"] == n and result["wins"] == result["losses"] == 0
    assert result["undecided"] == 0 and result["win_rate"] == 0.5
    assert result["position_consistency"] == 0.0 and result["judge_picks_first"] == 1.0
    assert result["sign_test_p"] in (None, 1.0)
    assert result["decisive_win_rate"] is result["decisive_win_rate_ci_low"] is result["decisive_win_rate_ci_high"] is None


@pytest.mark.parametrize("prefer", ["challenger", "incumbent"])
def test_a_consistent_judge_wins_or_loses_every_question(examples, tmp_path, prefer):
    test = examples["test"][:10]
    pairs = judge_pairs(test, {ex.id: ["Is it true?"] for ex in test}, {ex.id: ["What is it?"] for ex in test})
    liked = "Is it true?" if prefer == "challenger" else "What is it?"

    def reply(messages):  # the student whose questions it likes, wherever they are shown
        return "A" if f"Student A: {liked}" in messages[-1]["content"] else "B"

    result = win_rate(pairs, _judge(pairs, reply, tmp_path))
    n = len(test)
    assert (result["wins"], result["losses"]) == ((n, 0) if prefer == "challenger" else (0, n))
    assert result["ties"] == result["undecided"] == 0
    assert result["win_rate"] == result["decisive_win_rate"] == (1.0 if prefer == "challenger" else 0.0)
    assert result["position_consistency"] == 1.0 and result["judge_picks_first"] == 0.5
    assert result["sign_test_p"] == pytest.approx(2 * 0.5 ** n) and result["sign_test_p"] < 0.01
    assert result["decisive_win_rate_ci_low"] <= result["decisive_win_rate"] <= result["decisive_win_rate_ci_high"]
    assert (result["decisive_win_rate_ci_low"], result["decisive_win_rate_ci_high"]) == pytest.approx(
        stats.binomtest(result["wins"], n).proportion_ci(method="wilson"))


def test_undecided_replies_and_disagreeing_orders_are_ties(examples):
    test = examples["test"][:6]
    pairs = judge_pairs(test, {ex.id: ["Is it true?"] for ex in test}, {ex.id: ["What is it?"] for ex in test})
    verdicts = ["A", "B",  # challenger both times: win
                "B", "A",  # incumbent both times: loss
                "A", "A",  # same letter both times: position-inconsistent tie
                None, "A",  # one reply undecided: tie
                "B", None,  # one reply undecided: tie
                None, None]  # both undecided: tie
    outcomes = judge_outcomes(pairs, verdicts)
    assert [o["outcome"] for o in outcomes] == ["win", "loss", "tie", "tie", "tie", "tie"]
    assert [o["id"] for o in outcomes] == [ex.id for ex in test]
    result = win_rate(pairs, verdicts)
    assert (result["n_compared"], result["wins"], result["losses"], result["ties"], result["undecided"]) == \
        (6, 1, 1, 4, 4)
    assert result["win_rate"] == 0.5 and result["decisive_win_rate"] == 0.5 and result["sign_test_p"] == 1.0
    assert result["position_consistency"] == pytest.approx(2 / 3)  # of the 3 questions with both replies decided
    assert result["judge_picks_first"] == pytest.approx(5 / 8)
    nothing = win_rate(pairs, [None] * len(pairs))  # nothing decided: every question a tie, the rest undefined
    assert nothing["ties"] == 6 and nothing["undecided"] == 12 and nothing["win_rate"] == 0.5
    assert all(nothing[k] is None for k in ("decisive_win_rate", "decisive_win_rate_ci_low", "decisive_win_rate_ci_high",
                                            "sign_test_p", "position_consistency", "judge_picks_first"))
    empty = win_rate([], [])
    assert empty["n_compared"] == 0 and empty["win_rate"] is None
    with pytest.raises(ValueError, match="both orders"):
        win_rate(pairs[:-1], verdicts[:-1])


def _preds(correct):
    return [{"id": str(i), "correct": c, "pred": "yes", "pred_strict": "yes", "truncated": False}
            for i, c in enumerate(correct)]


def test_ablations_are_paired_against_the_full_model():
    rng = random.Random(0)
    full = [rng.random() < 0.7 for _ in range(60)]
    table = {"t": {"base_zeroshot": _preds([rng.random() < 0.5 for _ in range(60)]), "dpo": _preds(full),
                   "dpo_no_draft": _preds([c and rng.random() < 0.6 for c in full])}}
    result = compare(table, "base_zeroshot", 500, 0.95, 0, {"dpo_no_draft": "dpo"})
    row = result["t"]["dpo_no_draft"]
    assert row["ablation_of"] == "dpo" and row["diff_vs_full"] < 0 and row["mcnemar_p_vs_full"] < 0.05
    assert row["diff_vs_full"] == pytest.approx(row["accuracy"] - result["t"]["dpo"]["accuracy"])
    assert "ablation_of" not in result["t"]["dpo"]
    report = markdown(result, "base_zeroshot")
    assert "## Ablations" in report and "| t | dpo_no_draft | dpo |" in report


def test_phase_b_trains_on_the_prompt_evaluation_shows(tokenizer, examples):
    from dataclasses import replace

    from cotlab.methods.sft import build_dataset
    from cotlab.prompts import render_prompt

    rows = [replace(ex, reasoning="Step one.", metadata={**ex.metadata, "draft": f"Answer: No - guess {i}"})
            for i, ex in enumerate(examples["train"][:4])]
    with_draft, _, _ = build_dataset(rows, tokenizer, "cot", 512, with_draft=True)
    without, _, _ = build_dataset(rows, tokenizer, "cot", 512)
    for ex, a, b in zip(rows, with_draft, without):
        assert a["prompt"] == render_prompt(tokenizer, ex, "cot", draft=ex.metadata["draft"])
        assert f"Student draft: {ex.metadata['draft']}" in a["prompt"] and "Student draft" not in b["prompt"]
        assert a["completion"] == b["completion"]


def test_the_judge_reads_the_questions_a_draft_asks_with_or_without_the_format():
    """A draft that kept the format gives its Questions line; one that dropped it (a trained model listing
    sub-questions) gives its distinct questions; at most three, repeats once."""
    kept = {"questions": ["Is it wet?", "Is it cold?"], "draft": "Answer: Yes - x.\nQuestions: Is it wet? Is it cold?"}
    assert asked_questions(kept) == ["Is it wet?", "Is it cold?"]
    listed = {"questions": [], "draft": "1. Who is A?\n2. Who is A?\n3. Where is B?\n4. When? 5. Why is C?\n6. What is D?"}
    assert asked_questions(listed) == ["Who is A?", "Where is B?", "When?"]
    assert asked_questions({"questions": [], "draft": "No questions here."}) == []
