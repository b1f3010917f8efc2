import pytest

from cotlab.data.filtering import FilterConfig
from cotlab.data.filtering import DROP_REASONS, class_report, filter_examples, rebalance
from cotlab.schema import DataError, Example
from cotlab.formats import render_teacher

STEPS = ["The Nile is over 6000 km long.", "Long rivers are often navigable."]
REASONING = "1. The Nile is over 6000 km long.\n2. Long rivers are often navigable."


def ex(i, answer="yes", question=None, answer_type="yes_no", context=""):
    return Example(id=f"e{i}", question=question or f"Is question number {i} true?", answer=answer,
                   answer_type=answer_type, context=context, metadata={"source": "hand"})


def ok(answer, steps=STEPS, analysis="The draft is right."):
    return {"status": "ok", "text": render_teacher(analysis, steps, answer)}


@pytest.fixture
def rows():
    examples = [
        ex(0, "yes", question="Is the Nile long?"),
        ex(1, "no"),
        ex(2, "yes"),  # teacher failed
        ex(3, "no"),  # no teacher row at all
        ex(4, "yes"),  # unparseable reply
        ex(5, "yes"),  # teacher disagrees with gold
        ex(6, "no"),  # reasoning too short
        ex(7, "yes"),  # reasoning too long
        ex(8, "yes", question="IS the nile   long??"),  # duplicate of e0 after normalisation
    ]
    teacher = {
        "e0": ok("Yes"),
        "e1": ok("No"),
        "e2": {"status": "failed", "reason": "timeout"},
        "e4": {"status": "ok", "text": "I think so, probably."},
        "e5": ok("No"),
        "e6": ok("No", steps=["No."]),
        "e7": ok("Yes", steps=["word " * 60]),
        "e8": ok("Yes"),
    }
    drafts = {"e0": {"draft": "Answer: No - rivers are short"}, "e1": {"draft": "Answer: No - x"},
              "e5": {"draft": "garbage"}}
    return examples, drafts, teacher


CONFIG = FilterConfig(require_agreement=True, dedupe=True, min_reasoning_words=3, max_reasoning_words=50,
                      rebalance="none")


def test_each_drop_reason_counted(rows):
    examples, drafts, teacher = rows
    kept, metrics = filter_examples(examples, drafts, teacher, CONFIG, "test")
    assert [e.id for e in kept] == ["e0", "e1"]
    assert metrics["n_in"] == 9
    assert metrics["kept"] == 2
    assert metrics["dropped.teacher_failed"] == 2  # the failed row and the missing row
    assert metrics["dropped.unparseable"] == 1
    assert metrics["dropped.disagrees"] == 1
    assert metrics["dropped.too_short"] == 1
    assert metrics["dropped.too_long"] == 1
    assert metrics["dropped.duplicate"] == 1
    assert set(DROP_REASONS) == {k.split(".", 1)[1] for k in metrics if k.startswith("dropped.")}
    assert metrics["kept"] + sum(metrics[f"dropped.{r}"] for r in DROP_REASONS) == metrics["n_in"]
    assert metrics["teacher_unparseable.no_final_assessment"] == 1
    # parsed: e0 e1 e5 e6 e7 e8; all but e5 agree
    assert metrics["teacher_agreement_rate"] == round(5 / 6, 4)
    # drafts: e0 and e1 parse, e0's is wrong, e1's is right
    assert metrics["draft_parse_rate"] == round(2 / 9, 4)
    assert metrics["draft_accuracy"] == round(1 / 9, 4)


def test_kept_rows_carry_teacher_output(rows):
    examples, drafts, teacher = rows
    kept, _ = filter_examples(examples, drafts, teacher, CONFIG, "test")
    e0 = kept[0]
    assert e0.reasoning == REASONING
    assert e0.question == "Is the Nile long?" and e0.answer == "yes"
    assert e0.metadata["source"] == "hand"
    assert e0.metadata["draft"] == "Answer: No - rivers are short"
    assert e0.metadata["draft_answer"] == "no"
    assert e0.metadata["teacher_answer"] == "yes"
    assert e0.metadata["teacher_analysis"] == "The draft is right."
    assert kept[1].metadata["teacher_answer"] == "no"
    # the inputs are not modified
    assert examples[0].reasoning == "" and "draft" not in examples[0].metadata


def test_row_without_draft(rows):
    examples, _, teacher = rows
    kept, metrics = filter_examples(examples, {}, teacher, CONFIG, "test")
    assert kept[0].metadata["draft"] == "" and kept[0].metadata["draft_answer"] is None
    assert metrics["draft_parse_rate"] == 0.0


def test_disagreement_kept_without_require_agreement(rows):
    examples, drafts, teacher = rows
    config = FilterConfig(require_agreement=False, dedupe=True, min_reasoning_words=3, max_reasoning_words=50)
    kept, metrics = filter_examples(examples, drafts, teacher, config, "test")
    assert [e.id for e in kept] == ["e0", "e1", "e5"]
    assert metrics["dropped.disagrees"] == 0
    assert kept[2].metadata["teacher_answer"] == "no" and kept[2].answer == "yes"
    assert metrics["teacher_agreement_rate"] == round(5 / 6, 4)


def test_duplicates_and_lengths_configurable(rows):
    examples, drafts, teacher = rows
    config = FilterConfig(require_agreement=True, dedupe=False, min_reasoning_words=1, max_reasoning_words=400)
    kept, metrics = filter_examples(examples, drafts, teacher, config, "test")
    assert [e.id for e in kept] == ["e0", "e1", "e6", "e7", "e8"]
    assert metrics["dropped.duplicate"] == metrics["dropped.too_short"] == metrics["dropped.too_long"] == 0


def test_duplicate_counts_context():
    examples = [ex(0, question="Is it?", context="Facts A."), ex(1, question="Is it?", context="Facts B."),
                ex(2, question="is it", context="facts a")]
    teacher = {e.id: ok("Yes") for e in examples}
    kept, metrics = filter_examples(examples, {}, teacher, CONFIG, "test")
    assert [e.id for e in kept] == ["e0", "e1"]
    assert metrics["dropped.duplicate"] == 1


def test_min_words_at_least_one():
    examples = [ex(0)]
    teacher = {"e0": {"status": "ok", "text": "Teaching Analysis: a\nFinal Assessment: the answer is: Yes"}}
    config = FilterConfig(min_reasoning_words=0)
    with pytest.raises(DataError) as info:
        filter_examples(examples, {}, teacher, config, "test")
    assert "too_short" in str(info.value)


def test_dry_run_raises(rows):
    examples, drafts, teacher = rows
    teacher["e3"] = {"status": "dry_run"}
    with pytest.raises(DataError, match="dry_run"):
        filter_examples(examples, drafts, teacher, CONFIG, "filter gsm8k")


def test_all_dropped_raises():
    examples = [ex(0), ex(1, "no")]
    teacher = {"e0": {"status": "failed", "reason": "timeout"}, "e1": ok("Yes")}
    with pytest.raises(DataError) as info:
        filter_examples(examples, {}, teacher, CONFIG, "filter strategyqa")
    message = str(info.value)
    assert "filter strategyqa" in message and "every row was dropped" in message
    assert "teacher_failed" in message and "disagrees" in message


# ---------------------------------------------------------------- rebalance

def unbalanced():
    return [ex(i, "yes") for i in range(3)] + [ex(i, "no") for i in range(3, 12)]


def counts(rows):
    return sum(r.answer == "yes" for r in rows), sum(r.answer == "no" for r in rows)


def test_upsample():
    rows = unbalanced()
    out, metrics = rebalance(rows, "upsample", 0, "test")
    assert counts(out) == (9, 9)
    ids = [r.id for r in out]
    assert len(ids) == len(set(ids)) == 18
    assert out[:12] == rows
    originals = {r.id: r for r in rows}
    for copy in out[12:]:
        base, _, n = copy.id.partition("~up")
        assert n.isdigit()
        assert copy.answer == "yes"
        assert copy.question == originals[base].question
    assert metrics == {"n_out": 18, "share_after.no": 0.5, "share_after.yes": 0.5}


def test_downsample():
    rows = unbalanced()
    out, metrics = rebalance(rows, "downsample", 0, "test")
    assert counts(out) == (3, 3)
    assert all(r.id in {f"e{i}" for i in range(3)} for r in out if r.answer == "yes")
    positions = [rows.index(r) for r in out]
    assert positions == sorted(positions)  # source order kept
    assert metrics == {"n_out": 6, "share_after.no": 0.5, "share_after.yes": 0.5}


def test_weights():
    rows = unbalanced()
    out, metrics = rebalance(rows, "weights", 0, "test")
    assert len(out) == 12
    assert [r.id for r in out] == [r.id for r in rows]
    assert all(r.weight == 2.0 for r in out if r.answer == "yes")
    assert all(r.weight == 0.666667 for r in out if r.answer == "no")
    assert metrics["share_after.yes"] == 0.5 and metrics["share_after.no"] == 0.5
    assert metrics["n_out"] == 12
    assert all(r.weight == 1.0 for r in rows)  # inputs untouched


def test_none():
    rows = unbalanced()
    out, metrics = rebalance(rows, "none", 0, "test")
    assert out == rows
    assert metrics == {"n_out": 12, "share_after.no": 0.75, "share_after.yes": 0.25}


@pytest.mark.parametrize("method", ["upsample", "downsample", "weights", "none"])
def test_rebalance_deterministic(method):
    a, ma = rebalance(unbalanced(), method, 7, "test")
    b, mb = rebalance(unbalanced(), method, 7, "test")
    assert a == b and ma == mb


def test_rebalance_seed_matters():
    picks = {tuple(r.id for r in rebalance(unbalanced(), "downsample", s, "test")[0]) for s in range(10)}
    assert len(picks) > 1


def test_rebalance_balanced_input_unchanged():
    rows = [ex(i, "yes" if i % 2 else "no") for i in range(6)]
    for method in ("upsample", "downsample"):
        out, _ = rebalance(rows, method, 0, "test")
        assert out == rows
    out, _ = rebalance(rows, "weights", 0, "test")
    assert all(r.weight == 1.0 for r in out)


def test_rebalance_unknown_method():
    with pytest.raises(ValueError, match="shuffle"):
        rebalance(unbalanced(), "shuffle", 0, "filter x")


# ---------------------------------------------------------------- class_report

def test_class_report_vanished_class():
    before = unbalanced()
    filtered = [r for r in before if r.answer == "no"]
    with pytest.raises(DataError) as info:
        class_report(before, filtered, "filter strategyqa")
    message = str(info.value)
    assert "'yes'" in message and "vanished" in message
    assert "3 rows before" in message and "filter strategyqa" in message


def test_class_report_shares():
    before = unbalanced()
    filtered = before[:1] + before[3:7]
    report = class_report(before, filtered, "test")
    assert report == {"share_before.no": 0.75, "share_before.yes": 0.25,
                      "share_filtered.no": 0.8, "share_filtered.yes": 0.2}


def test_class_report_non_class_types():
    numbers = [ex(i, str(i), answer_type="number") for i in range(4)]
    assert class_report(numbers, numbers[:1], "test") == {}
    assert class_report([], [], "test") == {}
