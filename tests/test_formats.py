import random
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotlab.data.candidates import _wrong_values, assign_labels, corrupt_solution, oracle_candidates, strip_calculator
from cotlab.schema import Example
from cotlab.data.sources import load_task
from cotlab.teacher import oracle_teacher
from cotlab.formats import (
    parse_candidates,
    parse_draft,
    parse_teacher,
    reasoning_steps,
    render_candidates,
    render_teacher,
)
from cotlab.prompts import display_answer
from cotlab.errors import OracleUnavailable

TYPES = ["number", "choice", "yes_no", "name", "text"]


@pytest.fixture(scope="module")
def gsm8k():
    return load_task("gsm8k", {"source": "gsm8k"}, 40, 10, 0)


@pytest.fixture(scope="module")
def strategyqa():
    return load_task("strategyqa", {"source": "strategyqa"}, 40, 10, 0)


def _check_consistent(result):
    if result.ok:
        assert result.problem == ""
    else:
        assert isinstance(result.problem, str) and result.problem


# ---------------------------------------------------------------- parsers never raise

@settings(max_examples=300, deadline=None)
@given(text=st.text(), answer_type=st.sampled_from(TYPES))
def test_parsers_total_on_arbitrary_text(text, answer_type):
    draft = parse_draft(text, answer_type)
    teacher = parse_teacher(text, answer_type)
    candidates = parse_candidates(text, answer_type)
    for result in (draft, teacher, candidates):
        _check_consistent(result)
    if draft.ok:
        assert draft.answer
    if teacher.ok:
        assert teacher.answer and teacher.reasoning
    if candidates.ok:
        assert candidates.argued in ("A", "B") and None not in candidates.answers.values()


_FRAGMENTS = st.sampled_from([
    "Answer:", "answer: ", "Questions:", "Final Assessment", "**Final Assessment:**", "Teaching Analysis:",
    "Step-by-Step Reasoning", "the answer is", "**", "\n", " - ", "?", "Yes", "no", "42", "1/0", "-", "$",
    "Candidate A:", "Candidate B", "Argument:", "Candidate b is correct", "9" * 40, "1e400", "nan", "#",
])


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.one_of(_FRAGMENTS, st.text(max_size=4)), max_size=14).map("".join),
       answer_type=st.sampled_from(TYPES))
def test_parsers_total_on_format_like_text(text, answer_type):
    for result in (parse_draft(text, answer_type), parse_teacher(text, answer_type),
                   parse_candidates(text, answer_type)):
        _check_consistent(result)


@settings(max_examples=200, deadline=None)
@given(text=st.text().filter(lambda s: "answer" not in s.lower() and "final" not in s.lower()
                             and "candidate" not in s.lower()))
def test_missing_format_names_the_problem(text):
    draft = parse_draft(text, "yes_no")
    assert not draft.ok and draft.answer is None and draft.problem == "no_answer_line"
    assert parse_draft("I think it is yes, probably.", "yes_no").answer_flexible == "yes"
    teacher = parse_teacher(text, "yes_no")
    assert not teacher.ok and teacher.answer is None and teacher.problem == "no_final_assessment"
    candidates = parse_candidates(text)
    assert not candidates.ok and candidates.argued is None and candidates.problem == "missing_candidate"


@pytest.mark.parametrize("text", [
    "", "Answer:", "**Final Assessment**", "Final Assessment:", "Candidate A:", "Answer: - ", None, 123,
    b"Answer: yes", "x" * 200_000, "a " * 100_000, "Answer: " + "y" * 100_000,
    "Final Assessment: the answer is " + "z" * 100_000, "\n".join(["Teaching Analysis:"] * 5_000),
])
def test_odd_inputs_do_not_raise(text):
    for answer_type in TYPES:
        results = (parse_draft(text, answer_type), parse_teacher(text, answer_type),
                   parse_candidates(text, answer_type))
        for result in results:
            _check_consistent(result)
            if answer_type in ("yes_no", "number"):
                assert not result.ok


def test_odd_inputs_problems():
    assert parse_draft("", "yes_no").problem == "no_answer_line"
    assert parse_draft(None, "yes_no").problem == "no_answer_line"
    assert parse_draft("Answer:", "yes_no").problem == "no_answer_value"
    assert parse_draft("Answer: maybe - unsure", "yes_no").reason == "unsure"
    assert parse_teacher("", "yes_no").problem == "no_final_assessment"
    assert parse_teacher(None, "number").problem == "no_final_assessment"
    assert parse_teacher("**Final Assessment**", "yes_no").problem == "no_final_answer"
    assert parse_teacher("Final Assessment: the answer is: unclear", "yes_no").problem == "no_final_answer"
    out = parse_teacher("Final Assessment: the answer is: **Yes**", "yes_no")
    assert (out.ok, out.answer, out.problem) == (False, "yes", "no_reasoning")
    assert parse_candidates("").problem == "missing_candidate"
    assert parse_candidates("Candidate A:\nx\nThe answer is: 3").problem == "missing_candidate"
    assert parse_candidates("Candidate A:\nx\nCandidate B:\nThe answer is: 4").problem == "candidate_without_answer"
    both = "Candidate A:\nThe answer is: 3\nCandidate B:\nThe answer is: 4"
    assert parse_candidates(both).problem == "missing_argument"
    assert parse_candidates(both + "\nArgument:\nBoth look fine.").problem == "argument_picks_none"


# ---------------------------------------------------------------- teacher format

def test_teacher_round_trip_yes_no():
    steps = ["The Nile flows through eleven countries.", "It is about 6650 km long."]
    text = render_teacher("The draft is right.", steps, "Yes")
    out = parse_teacher(text, "yes_no")
    assert out.ok and out.problem == ""
    assert out.answer == "yes"
    assert out.analysis == "The draft is right."
    assert out.reasoning == "1. The Nile flows through eleven countries.\n2. It is about 6650 km long."
    assert "Final Assessment" not in out.reasoning and "Teaching Analysis" not in out.reasoning


@pytest.mark.parametrize("answer, expected", [("18", "18"), ("$1,234.00", "1234"), ("-3", "-3"), ("0.50", "0.5")])
def test_teacher_round_trip_number(answer, expected):
    out = parse_teacher(render_teacher("Checks the sum.", ["6 + 12 = 18", "so 18"], answer), "number")
    assert out.ok
    assert out.answer == expected
    assert out.reasoning == "1. 6 + 12 = 18\n2. so 18"


@pytest.mark.parametrize("text, expected", [
    ("**Teaching Analysis:** the draft is fine\n## Step-by-Step Reasoning\n1. a b c\n2. d e f\n"
     "Final assessment - The answer is: **NO**", "no"),
    ("## TEACHING ANALYSIS\nthe draft is fine\n**STEP BY STEP REASONING:**\n1. a b c\n2. d e f\n"
     "**FINAL ASSESSMENT:** THE ANSWER IS: YES", "yes"),
    ("Teaching analysis: the draft is fine\nStep by step reasoning:\n1. a b c\n2. d e f\n"
     "### Final Assessment\nThe answer is: yes", "yes"),
    ("__Teaching Analysis__: the draft is fine\n__Step-by-Step Reasoning__:\n1. a b c\n2. d e f\n"
     "__Final Assessment__: the answer is **No**.", "no"),
    ("  **Teaching Analysis**: the draft is fine\n  **Step-by-step reasoning**\n1. a b c\n2. d e f\n"
     "  final assessment: the answer is: **no**", "no"),
])
def test_teacher_markdown_headers(text, expected):
    out = parse_teacher(text, "yes_no")
    assert out.ok, out.problem
    assert out.answer == expected
    assert out.analysis == "the draft is fine"
    assert out.reasoning == "1. a b c\n2. d e f"


def test_teacher_without_final_assessment():
    text = "Teaching Analysis: fine\nStep-by-Step Reasoning:\n1. the river is long\nSo the answer is: yes"
    out = parse_teacher(text, "yes_no")
    assert not out.ok
    assert out.problem == "no_final_assessment"
    assert out.answer is None
    assert out.analysis == "fine"
    assert "the river is long" in out.reasoning


def test_teacher_last_answer_on_the_final_line_wins():
    text = render_teacher("a", ["b c d"], "Yes").replace("**Yes**", "**Yes**, no wait, the answer is: **No**")
    assert parse_teacher(text, "yes_no").answer == "no"


# ---------------------------------------------------------------- draft format

def test_draft_yes_no_with_questions():
    draft = parse_draft("Answer: Yes - the river is long\nQuestions: How long is it? Is it navigable?", "yes_no")
    assert draft.ok and draft.problem == ""
    assert draft.answer == "yes"
    assert draft.reason == "the river is long"
    assert draft.questions == ["How long is it?", "Is it navigable?"]
    assert all(q.endswith("?") for q in draft.questions)


def test_draft_number():
    draft = parse_draft("Answer: 42 - since 6*7", "number")
    assert draft.ok
    assert draft.answer == "42"
    assert draft.reason == "since 6*7"
    assert draft.questions == []


@pytest.mark.parametrize("text, answer_type, answer, reason", [
    ("**Answer:** Yes – because it is", "yes_no", "yes", "because it is"),
    ("answer: NO", "yes_no", "no", ""),
    ("Answer: -3 - because", "number", "-3", "because"),
    ("Answer: $1,200 — the total", "number", "1200", "the total"),
    ("Some thinking first.\nAnswer: 7\nQuestions: Is 7 prime?", "number", "7", ""),
])
def test_draft_variants(text, answer_type, answer, reason):
    draft = parse_draft(text, answer_type)
    assert draft.ok
    assert (draft.answer, draft.reason) == (answer, reason)


def test_draft_without_value():
    draft = parse_draft("Answer: not sure - it depends\nQuestions: What is it?", "yes_no")
    assert not draft.ok
    assert draft.problem == "no_answer_value"
    assert draft.reason == "it depends"
    assert draft.questions == ["What is it?"]


# ---------------------------------------------------------------- oracle teacher

def test_reasoning_steps():
    # Sub-questions first: "#1" then names step 1.
    assert reasoning_steps("Facts: A is B. C is D!\nSub-questions:\n1. Is A B?\n2) Is #1 C?") == [
        "Is A B?", "Is #1 C?", "A is B.", "C is D!"]
    assert reasoning_steps("He has 3 + 4 = 7.\n\n- So 7 * 2 = 14.\n") == ["He has 3 + 4 = 7.", "So 7 * 2 = 14."]
    assert reasoning_steps("") == []


@pytest.mark.parametrize("task", ["strategyqa", "gsm8k"])
def test_oracle_teacher_parses_back_to_gold(task, gsm8k, strategyqa):
    data = {"gsm8k": gsm8k, "strategyqa": strategyqa}[task]
    for ex in data["train"][:10]:
        gold = display_answer(ex)
        if ex.answer_type == "yes_no":
            wrong = "No" if ex.answer == "yes" else "Yes"
        else:
            wrong = str(int(float(ex.answer)) + 7)
        texts = {"right": oracle_teacher(ex, f"Answer: {gold} - x"),
                 "wrong": oracle_teacher(ex, f"Answer: {wrong} - x"),
                 "garbage": oracle_teacher(ex, "I have no idea ###")}
        for kind, text in texts.items():
            out = parse_teacher(text, ex.answer_type)
            assert out.ok, (kind, out.problem)
            assert out.answer == ex.answer
            steps = reasoning_steps(ex.reasoning)
            assert out.reasoning == "\n".join(f"{i}. {s}" for i, s in enumerate(steps, start=1))
        assert parse_teacher(texts["right"], ex.answer_type).analysis == (
            f"The draft's answer, {gold}, is correct; the steps below show why.")
        wrong_analysis = parse_teacher(texts["wrong"], ex.answer_type).analysis
        assert "is correct" not in wrong_analysis
        assert f"The draft answers {wrong}" in wrong_analysis and f"the answer is {gold}" in wrong_analysis
        assert "no clear final answer" in parse_teacher(texts["garbage"], ex.answer_type).analysis


def test_oracle_teacher_without_reasoning():
    ex = Example(id="x0", question="Is water wet?", answer="yes", answer_type="yes_no", reasoning="")
    with pytest.raises(OracleUnavailable) as info:
        oracle_teacher(ex, "Answer: Yes - x")
    assert info.value.reason == "no_reasoning"
    ex = Example(id="x1", question="Is water wet?", answer="yes", answer_type="yes_no", reasoning="Sub-questions:\n\n")
    with pytest.raises(OracleUnavailable):
        oracle_teacher(ex, "Answer: Yes - x")


# ---------------------------------------------------------------- corrupt_solution

SOLUTION = ("Tom has 3*4=<<3*4=12>>12 apples.\nHe buys 12+5=<<12+5=17>>17 more.\n"
            "In total 17*2=<<17*2=34>>34.")


@pytest.mark.parametrize("seed", range(8))
def test_corrupt_first_propagates(seed):
    c = corrupt_solution(SOLUTION, "34", "first", random.Random(seed))
    assert c is not None
    assert (c.step, c.n_steps, c.expression, c.right) == (0, 3, "3*4", "12")
    w = int(c.wrong)
    assert w != 12
    assert "<<" not in c.text and ">>" not in c.text
    assert c.text.startswith(f"Tom has 3*4={w} apples.")
    assert f"{w}+5={w + 5}" in c.text
    assert f"{w + 5}*2={(w + 5) * 2}" in c.text
    assert c.answer == str((w + 5) * 2)
    assert c.answer != "34"


@pytest.mark.parametrize("seed", range(8))
def test_corrupt_middle_and_last(seed):
    middle = corrupt_solution(SOLUTION, "34", "middle", random.Random(seed))
    assert middle is not None and middle.step == 1 and middle.right == "17"
    w = int(middle.wrong)
    assert w != 17
    assert "3*4=12 apples" in middle.text  # steps before the broken one are untouched
    assert f"12+5={w} more" in middle.text
    assert f"{w}*2={2 * w}" in middle.text
    assert middle.answer == str(2 * w) != "34"
    assert "<<" not in middle.text

    last = corrupt_solution(SOLUTION, "34", "last", random.Random(seed))
    assert last is not None and last.step == 2 and last.right == "34"
    assert "3*4=12 apples" in last.text and "12+5=17 more" in last.text
    assert last.text.endswith(f"17*2={last.wrong}.")
    assert last.answer == last.wrong != "34"
    assert "<<" not in last.text


def test_corrupt_is_deterministic_and_none_without_steps():
    a = corrupt_solution(SOLUTION, "34", "random", random.Random(3))
    b = corrupt_solution(SOLUTION, "34", "random", random.Random(3))
    assert a == b
    assert corrupt_solution("No arithmetic here.", "5", "random", random.Random(0)) is None
    assert corrupt_solution("", "5", "first", random.Random(0)) is None


def test_strip_calculator():
    assert strip_calculator(SOLUTION) == "Tom has 3*4=12 apples.\nHe buys 12+5=17 more.\nIn total 17*2=34."


def test_corrupt_random_on_gsm8k(gsm8k):
    train = gsm8k["train"]
    assert len(train) == 40
    results = []
    for ex in train:
        c = corrupt_solution(ex.metadata["solution"], ex.answer, "random", random.Random(f"0-{ex.id}"))
        if c is None:
            continue
        results.append(c)
        assert c.answer != ex.answer
        assert "<<" not in c.text and ">>" not in c.text
        assert 0 <= c.step < c.n_steps
        assert c.wrong != c.right
    assert len(results) >= 0.8 * len(train)
    assert any(c.step < c.n_steps - 1 for c in results)
    assert any(c.step == c.n_steps - 1 for c in results if c.n_steps > 1)


# ---------------------------------------------------------------- candidates

def test_candidates_round_trip(gsm8k):
    used = 0
    for ex in gsm8k["train"][:12]:
        c = corrupt_solution(ex.metadata["solution"], ex.answer, "random", random.Random(f"0-{ex.id}-corrupt"))
        if c is None:
            with pytest.raises(OracleUnavailable):
                oracle_candidates(ex, {"seed": 0, "corrupt_step": "random", "correct": "A", "argued": "A"})
            continue
        used += 1
        for correct in "AB":
            for argued in "AB":
                text = oracle_candidates(ex, {"seed": 0, "corrupt_step": "random", "correct": correct,
                                              "argued": argued})
                wrong = "B" if correct == "A" else "A"
                parsed = parse_candidates(text, "number")
                assert parsed.ok, parsed.problem
                assert parsed.answers[correct] == ex.answer
                assert parsed.answers[wrong] == c.answer != ex.answer
                assert parsed.argued == argued
                assert "<<" not in text
                assert parsed.texts[correct].startswith(strip_calculator(ex.metadata["solution"]))
                assert parsed.texts[wrong].startswith(c.text)
                assert c.expression in parsed.argument
                assert re.search(rf"Candidate {argued} is correct\.$", parsed.argument)
    assert used >= 8


def test_oracle_argument_reads_the_same_whether_right_or_wrong(gsm8k):
    """Only the arithmetic may tell a right argument from a wrong one: with the identifiers and the two values of the
    broken step blanked, the argument for the correct candidate equals the argument for the incorrect one."""
    checked = 0
    for ex in gsm8k["train"][:12]:
        c = corrupt_solution(ex.metadata["solution"], ex.answer, "random", random.Random(f"0-{ex.id}-corrupt"))
        if c is None:
            continue
        for correct in "AB":
            blanked = set()
            for argued in "AB":
                argument = parse_candidates(oracle_candidates(ex, {"seed": 0, "corrupt_step": "random",
                                                                   "correct": correct, "argued": argued})).argument
                expression_free = argument.replace(c.expression, "<expr>")
                blanked.add(re.sub(r"Candidate [AB]", "Candidate _",
                                   re.sub(rf"= ({re.escape(c.right)}|{re.escape(c.wrong)})\b", "= <v>", expression_free)))
                # Named first: the candidate argued for, with the value it has.
                first = re.search(r"Candidate ([AB]) has [^,]*= (\S+), while", argument.replace(c.expression, "e"))
                assert first.group(1) == argued
                assert first.group(2) == (c.right if argued == correct else c.wrong)
            assert len(blanked) == 1, blanked
            checked += 1
    assert checked >= 16


def test_wrong_values_go_up_as_often_as_down():
    rng = random.Random(0)
    ups = downs = 0
    for right in range(20, 220):
        for wrong in [Fraction(w) for w in _wrong_values(str(right), rng)]:
            ups, downs = ups + (wrong > right), downs + (wrong < right)
            assert wrong.denominator == 1
    assert abs(ups - downs) <= 0.1 * (ups + downs)


def test_render_candidates_round_trip():
    text = render_candidates({"A": "2+2=4\nThe answer is: 4", "B": "2+2=5\nThe answer is: 5"},
                             "B adds wrongly. Therefore, Candidate A is correct.")
    parsed = parse_candidates(text)
    assert parsed.ok
    assert parsed.answers == {"A": "4", "B": "5"}
    assert parsed.argued == "A"
    assert parsed.texts["B"] == "2+2=5\nThe answer is: 5"


def test_oracle_candidates_without_solution():
    ex = Example(id="n0", question="What is 2+2?", answer="4", answer_type="number", metadata={})
    with pytest.raises(OracleUnavailable) as info:
        oracle_candidates(ex, {"seed": 0, "corrupt_step": "random", "correct": "A", "argued": "A"})
    assert info.value.reason == "no_corruptible_step"


def test_assign_labels_deterministic_and_rate():
    ids = [f"gsm8k-train-{i}" for i in range(400)]
    labels = [assign_labels(i, 0, 0.7) for i in ids]
    assert labels == [assign_labels(i, 0, 0.7) for i in ids]
    assert all(c in "AB" and a in "AB" for c, a in labels)
    share = sum(c == a for c, a in labels) / len(labels)
    assert abs(share - 0.7) <= 0.05
    share_a = sum(c == "A" for c, _ in labels) / len(labels)
    assert abs(share_a - 0.5) <= 0.1
    assert all(c == a for c, a in (assign_labels(i, 0, 1.0) for i in ids))
    assert all(c != a for c, a in (assign_labels(i, 0, 0.0) for i in ids))
    assert [assign_labels(i, 1, 0.7) for i in ids] != labels


def test_parsers_stay_linear_on_whitespace_runs():
    import time

    start = time.perf_counter()
    for parse in (lambda t: parse_teacher(t, "yes_no"), lambda t: parse_draft(t, "yes_no"), parse_candidates):
        parse("\n" + " " * 20000 + "\n" + "\t" * 20000)
    assert time.perf_counter() - start < 2  # was 10 s for 16k spaces with a backtracking header pattern


def test_last_final_answer_wins_and_questions_stop_at_the_answer_line():
    reply = ("Step-by-Step Reasoning:\n1. Check the claim.\nFinal Assessment: the draft said the answer is yes.\n"
             "However, the answer is: **No**")
    assert parse_teacher(reply, "yes_no").answer == "no"
    draft = parse_draft("Questions: Why?\nAnswer: No - x", "yes_no")
    assert draft.questions == ["Why?"] and draft.answer == "no"


def test_make_candidates_keeps_usable_rows_and_names_an_empty_result(gsm8k, strategyqa):
    from cotlab.teacher import TeacherConfig
    from cotlab.data.candidates import make_candidates, oracle_candidates
    from cotlab.schema import DataError
    from cotlab.teacher import Teacher

    teacher = Teacher(TeacherConfig(backend="oracle"), oracle=lambda r: oracle_candidates(r.example, r.context))
    rows, metrics = make_candidates(gsm8k["train"][:20], teacher, 0, 0.7, "random", "here")
    assert metrics["kept"] == len(rows) > 0 and metrics["n_in"] == 20
    assert metrics["kept"] + metrics.get("dropped.teacher_failed:no_corruptible_step", 0) == 20
    assert all(r["candidate_answers"][r["correct"]] == r["answer"] for r in rows)
    with pytest.raises(DataError, match="here: no usable candidates"):
        make_candidates(strategyqa["train"][:5], teacher, 0, 0.7, "random", "here")  # no calculator steps
