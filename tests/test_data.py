import json
import re

import pytest

from cotlab.config import ConfigError
from cotlab.data import personal_relations
from cotlab.schema import ANSWER_TYPES, DataError
from cotlab.data.sources import (arc_row, wiki_row, gsm8k_aug_row, gsm8k_row, load_task, mathqa_row, mmlu_row, normalize_number,
                                 normalize_question, strategyqa_row, svamp_row, aqua_row)

VENDORED = ["gsm8k", "strategyqa", "svamp", "aqua"]
RG = {"gsm_symbolic": "number", "syllogism": "yes_no", "family_relationships": "text", "basic_arithmetic": "number"}
SMALL_SPECS = {
    **{s: {"source": s} for s in VENDORED},
    **{f"rg_{d}": {"source": "reasoning_gym", "dataset": d} for d in RG},
    "pr": {"source": "personal_relations"},
    "pr_closed": {"source": "personal_relations", "universe": False, "hops": [2, 3], "n_people": 10},
    "lockers": {"source": "lockers"},
}


def ids(rows):
    return [r.id for r in rows]


@pytest.mark.parametrize("text,expected", [
    ("18", "18"), ("18.00", "18"), ("0.50", "0.5"), ("-3", "-3"), ("$1,234", "1234"), (" 7 ", "7"),
    (51.0, "51"), ("100", "100"), ("-0", "0"), ("abc", None), ("", None), ("nan", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_gsm8k_full_sizes_and_reasoning():
    data = load_task("g", {"source": "gsm8k"}, None, None, 0)
    assert (len(data["train"]), len(data["test"])) == (7473, 1319)
    for ex in data["train"] + data["test"]:
        assert ex.answer_type == "number" and normalize_number(ex.answer) == ex.answer
        assert "<<" not in ex.reasoning and ">>" not in ex.reasoning and "####" not in ex.reasoning
        assert ex.reasoning
    assert data["train"][0].answer == "72"


def test_strategyqa_yes_share_and_reasoning():
    data = load_task("s", {"source": "strategyqa"}, None, None, 0)
    rows = data["train"] + data["test"]
    assert 2280 <= len(rows) <= 2290
    assert {ex.answer for ex in rows} == {"yes", "no"}
    for split in ("train", "test"):
        share = sum(ex.answer == "yes" for ex in data[split]) / len(data[split])
        assert share == pytest.approx(0.468, abs=0.01)
    assert len(data["test"]) == pytest.approx(0.2 * len(rows), abs=3)
    assert all(ex.answer_type == "yes_no" and "Facts:" in ex.reasoning for ex in rows)


def test_svamp_and_aqua_shapes():
    sv = load_task("v", {"source": "svamp", "test_fraction": 0.3}, None, None, 1)
    assert (len(sv["train"]), len(sv["test"])) == (700, 300)
    ex = sv["train"][0]
    assert ex.answer_type == "number" and ex.reasoning.startswith("Equation: ") and "?" in ex.question
    aq = load_task("a", {"source": "aqua"}, None, None, 1)
    assert (len(aq["train"]), len(aq["test"])) == (254, 254)
    for ex in aq["test"]:
        assert ex.answer_type == "choice" and ex.answer in "ABCDE" and len(ex.choices) == 5
        assert ex.choices[0].startswith("A)")


@pytest.mark.parametrize("dataset,answer_type", RG.items())
def test_reasoning_gym(dataset, answer_type):
    data = load_task("r", {"source": "reasoning_gym", "dataset": dataset}, 40, 20, 3)
    assert (len(data["train"]), len(data["test"])) == (40, 20)
    for ex in data["train"] + data["test"]:
        assert ex.answer_type == answer_type
        if answer_type == "number":
            assert normalize_number(ex.answer) == ex.answer
        if answer_type == "yes_no":
            assert ex.answer in ("yes", "no")
    if dataset == "gsm_symbolic":
        assert all(ex.reasoning and "####" not in ex.reasoning for ex in data["train"])


@pytest.mark.parametrize("name", sorted(SMALL_SPECS))
def test_every_source_deterministic_and_disjoint(name):
    spec = SMALL_SPECS[name]
    a = load_task(name, spec, 60, 30, 7)
    b = load_task(name, spec, 60, 30, 7)
    assert ids(a["train"]) == ids(b["train"]) and ids(a["test"]) == ids(b["test"])
    assert [e.to_dict() for e in a["test"]] == [e.to_dict() for e in b["test"]]
    assert 0 < len(a["train"]) <= 60 and 0 < len(a["test"]) <= 30
    for split in ("train", "test"):
        assert all(ex.answer_type in ANSWER_TYPES and ex.answer for ex in a[split])
    test_qs = {normalize_question(ex.question) for ex in a["test"]}
    assert not test_qs & {normalize_question(ex.question) for ex in a["train"]}
    assert not set(ids(a["train"])) & set(ids(a["test"]))


@pytest.mark.parametrize("source", VENDORED + ["personal_relations", "lockers"])
def test_no_overlap_full_size(source):
    data = load_task("t", {"source": source}, None, None, 11)
    test_qs = {normalize_question(ex.question) for ex in data["test"]}
    assert all(normalize_question(ex.question) not in test_qs for ex in data["train"])


@pytest.mark.parametrize("source", ["strategyqa", "svamp"])
def test_seed_changes_seeded_split(source):
    a = load_task("t", {"source": source}, None, None, 1)
    b = load_task("t", {"source": source}, None, None, 2)
    assert set(ids(a["test"])) != set(ids(b["test"]))


def test_seed_changes_generated_data():
    for spec in ({"source": "personal_relations"}, {"source": "reasoning_gym", "dataset": "basic_arithmetic"}):
        a = load_task("t", spec, 20, 20, 1)
        b = load_task("t", spec, 20, 20, 2)
        assert [e.question for e in a["test"]] != [e.question for e in b["test"]]


def _follow(universe, start, chain):
    person = start
    for rel in chain:
        person = universe[(rel, person)]
    return person


def test_personal_relations_answers_follow_facts():
    data = load_task("p", {"source": "personal_relations", "hops": [1, 3], "n_people": 12}, 200, 50, 5)
    universe = personal_relations.make_universe(12, 5)
    hops = set()
    for ex in data["train"] + data["test"]:
        chain, start = ex.metadata["chain"], ex.metadata["start"]
        hops.add(len(chain))
        assert ex.answer_type == "name" and ex.answer == _follow(universe, start, chain)
        assert ex.question == "Who is " + "".join(f"the {r} of " for r in reversed(chain)) + f"{start}?"
        steps = ex.reasoning.split(". ")
        assert len(steps) == len(chain) and ex.reasoning.endswith(f"is {ex.answer}.")
        facts = set(ex.context.split("\n"))
        # The context holds every hop's fact, plus distractors, all true in the universe.
        for rel, person in zip(chain, [start] + [_follow(universe, start, chain[:i]) for i in range(1, len(chain))]):
            assert personal_relations.fact(rel, person, universe[(rel, person)]) in facts
        for f in facts:
            rel, person, other = re.fullmatch(r"The (\w+) of (\w+) is (\w+)\.", f).groups()
            assert universe[(rel, person)] == other
        assert len(facts) > len(chain)
    assert hops == {1, 2, 3}


def test_personal_relations_closed_universe():
    a = load_task("p", {"source": "personal_relations", "universe": False}, 50, 20, 9)
    b = load_task("p", {"source": "personal_relations", "universe": False}, 80, 40, 9)
    assert all(ex.context == "" for ex in a["train"] + a["test"])
    # Same seed -> same universe, whatever the sizes: every question about a fact gets the same answer.
    answers = {ex.question: ex.answer for ex in b["train"] + b["test"]}
    assert all(answers.get(ex.question, ex.answer) == ex.answer for ex in a["train"] + a["test"])


def test_hub_offline_raises_dataerror(monkeypatch):
    import datasets
    import huggingface_hub.constants

    # datasets reads HF_HUB_OFFLINE at import time; patch the module values too so the test never waits on retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="openai/gsm8k") as err:
        load_task("h", {"source": "hub", "dataset": "gsm8k"}, 10, 10, 0)
    assert "unreachable" in str(err.value) and "local" in str(err.value)


def test_hub_row_mappers():
    ex = gsm8k_row({"question": "Q?", "answer": "a <<2*3=6>>6 then 1,000\n#### 1,000"}, "x")
    assert (ex.answer, ex.reasoning) == ("1000", "a 6 then 1,000")
    ex = gsm8k_aug_row({"question": "Q?", "cot": "<<600*30/100=180>> <<600*10/100=60>>", "answer": "1,080"}, "x")
    assert (ex.answer, ex.reasoning, ex.answer_type) == ("1080", "600*30/100=180 600*10/100=60", "number")
    ex = strategyqa_row({"qid": "1", "question": "Is it?", "answer": False, "facts": "Fact one",
                         "decomposition": ["Step one?"]}, "x")
    assert ex.answer == "no" and "Fact one." in ex.reasoning and "1. Step one?" in ex.reasoning
    ex = svamp_row({"ID": "1", "Body": "Tom has 3.", "Question": "How many?", "Equation": "( 1.0 + 2.0 )",
                    "Answer": 3.0, "Type": "Addition"}, "x")
    assert (ex.question, ex.answer, ex.reasoning) == ("Tom has 3. How many?", "3", "Equation: (1 + 2) = 3")
    ex = arc_row({"id": "a", "question": "Which?", "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]},
                  "answerKey": "2"}, "x")
    assert (ex.answer, ex.choices, ex.answer_type) == ("B", ["A)x", "B)y", "C)z"], "choice")
    ex = mmlu_row({"question": "Q", "subject": "law", "choices": ["p", "q", "r", "s"], "answer": 3}, "x")
    assert (ex.answer, ex.choices[3]) == ("D", "D)s")
    ex = aqua_row({"question": "Q", "options": ["A)1", "B)2"], "rationale": "r", "correct": "B"}, "x")
    assert (ex.answer, ex.choices, ex.reasoning) == ("B", ["A)1", "B)2"], "r")
    ex = mathqa_row({"Problem": "P", "Rationale": '"because"', "correct": "c", "category": "gain",
                     "options": "a ) 38 , b ) 27.675 , c ) 30 , d ) data inadequate , e ) none of these"}, "x")
    assert ex.answer == "C" and ex.reasoning == "because"
    assert ex.choices == ["A)38", "B)27.675", "C)30", "D)data inadequate", "E)none of these"]
    words = [f"w{i}" for i in range(90)]
    ex = wiki_row({"text": " " + " ".join(words) + " \n"}, "x")
    assert (ex.question, ex.answer, ex.answer_type) == (" ".join(words[:64]), " ".join(words[64:80]), "text")
    assert wiki_row({"text": " = Heading = \n"}, "x") is None and wiki_row({"text": "short line"}, "x") is None


def test_local_jsonl_and_csv(tmp_path):
    rows = [{"q": f"What is {i} plus 1?", "a": f"{i + 1}.0", "why": f"{i} + 1"} for i in range(20)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"source": "local", "path": str(train), "fields": {"question": "q", "answer": "a", "reasoning": "why"},
            "answer_type": "number", "test_fraction": 0.25}
    data = load_task("loc", spec, None, None, 0)
    assert (len(data["train"]), len(data["test"])) == (15, 5)
    assert data["train"][0].answer == str(int(data["train"][0].question.split()[2]) + 1)

    test = tmp_path / "test.csv"
    test.write_text("q,a,why\nWhat is 100 plus 1?,\"1,01\",sum\nWhat is 200 plus 1?,201,sum\n")
    data = load_task("loc", {"source": "local", "path": str(train), "test_path": str(test),
                             "fields": spec["fields"], "answer_type": "number"}, None, None, 0)
    assert len(data["train"]) == 20 and [e.answer for e in data["test"]] == ["101", "201"]
    choices = tmp_path / "choices.csv"
    choices.write_text("id,question,answer,answer_type,choices\nc1,Pick one?,B,choice,A)x|B)y\nc2,Pick two?,A,choice,A)x|B)y\n")
    data = load_task("loc", {"source": "local", "path": str(choices), "test_fraction": 0.5}, None, None, 0)
    ex = (data["train"] + data["test"])[0]
    assert ex.answer_type == "choice" and ex.choices == ["A)x", "B)y"]


def test_local_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a?", "answer": "1"}\n{"question": oops}\n')
    with pytest.raises(DataError, match=r"row 2"):
        load_task("loc", {"source": "local", "path": str(bad), "answer_type": "number"}, None, None, 0)
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_task("loc", {"source": "local", "path": str(missing)}, None, None, 0)
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text('{"question": "a?", "answer": "1"}\n{"question": "b?"}\n')
    with pytest.raises(DataError, match=r"row 2.*answer"):
        load_task("loc", {"source": "local", "path": str(no_answer), "answer_type": "number"}, None, None, 0)


def test_empty_split_error(tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text('{"question": "a?", "answer": "1", "answer_type": "number"}\n')
    with pytest.raises(DataError, match=r"'tiny'.*test split is empty"):
        load_task("tiny", {"source": "local", "path": str(one)}, None, None, 0)
    same = tmp_path / "same.jsonl"
    same.write_text('{"question": "A?", "answer": "1", "answer_type": "number"}\n')
    with pytest.raises(DataError, match=r"'tiny'.*train split is empty"):
        load_task("tiny", {"source": "local", "path": str(same), "test_path": str(one)}, None, None, 0)


@pytest.mark.parametrize("spec,pattern", [
    ({"source": "nope"}, r"task_specs\.bad\.source.*'nope'"),
    ({"source": "gsm8k", "colour": "red"}, r"task_specs\.bad\.colour.*'red'"),
    ({"source": "strategyqa", "test_fraction": 1.5}, r"task_specs\.bad\.test_fraction.*1\.5"),
    ({"source": "reasoning_gym", "dataset": "chess"}, r"task_specs\.bad\.dataset.*'chess'"),
    ({"source": "reasoning_gym"}, r"task_specs\.bad\.dataset"),
    ({"source": "personal_relations", "hops": [3, 1]}, r"task_specs\.bad\.hops.*\[3, 1\]"),
    ({"source": "personal_relations", "universe": "yes"}, r"task_specs\.bad\.universe.*'yes'"),
    ({"source": "hub", "dataset": "imagenet"}, r"task_specs\.bad\.dataset.*'imagenet'"),
    ({"source": "hub", "dataset": "gsm8k_aug", "annotations": "drop"}, r"task_specs\.bad\.annotations.*'drop'"),
    ({"source": "hub", "dataset": "gsm8k_aug", "question_format": "plain"}, r"task_specs\.bad\.question_format"),
    ({"source": "hub", "dataset": "gsm8k_aug", "max_token_num": 0}, r"task_specs\.bad\.max_token_num.*0"),
    ({"source": "hub", "dataset": "gsm8k", "max_token_num": 200}, r"task_specs\.bad\.max_token_num.*only .*gsm8k_aug"),
    ({"source": "local", "path": "x.jsonl", "answer_type": "float"}, r"task_specs\.bad\.answer_type.*'float'"),
])
def test_config_errors(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_task("bad", spec, 5, 5, 0)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    from cotlab.schema import read_jsonl, write_jsonl

    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}, {"a": 2}])

    def rows():
        yield {"a": 3}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_lockers_ask_for_one_listed_code():
    """Markovian's mechanism check: the answer is the asked locker's code, one of the listed codes; the test split
    does not depend on n_train; bad specs name the key."""
    data = load_task("lk", {"source": "lockers", "colours": ["red", "blue"], "digits": 3}, 30, 20, 5)
    for ex in data["train"] + data["test"]:
        asked = ex.metadata["asked"]
        assert ex.answer == ex.metadata["codes"][asked] and len(ex.answer) == 3
        assert f"{asked} {ex.answer}" in ex.question and ex.question.endswith(f"the {asked} locker?")
    assert {ex.metadata["asked"] for ex in data["test"]} == {"red", "blue"}
    again = load_task("lk", {"source": "lockers", "colours": ["red", "blue"], "digits": 3}, 5, 20, 5)
    assert [e.question for e in again["test"]] == [e.question for e in data["test"]]
    with pytest.raises(ConfigError, match="task_specs.lk.colours"):
        load_task("lk", {"source": "lockers", "colours": ["red"]}, 2, 2, 0)
    with pytest.raises(ConfigError, match="task_specs.lk.digits"):
        load_task("lk", {"source": "lockers", "digits": 0}, 2, 2, 0)


def test_hidden_fact_questions_need_the_fact_only_the_draft_prompt_shows(tokenizer):
    """The draft-information check: each question text comes with either answer (the question alone is a coin
    flip), the answer follows from the hidden fact, and the fact reaches the drafter and the teacher but never a
    Phase A/B/C prompt; the same question over a different fact is not a train/test leak."""
    from collections import defaultdict

    from cotlab.prompts import render_prompt
    from cotlab.selfimprove.drafts import draft_messages
    from cotlab.teacher import teacher_messages

    data = load_task("hf", {"source": "hidden_fact"}, 300, 100, 0)
    assert len(data["train"]) >= 250  # only true repeats (question *and* fact) are dropped as leaks
    answers = defaultdict(set)
    for ex in data["train"] + data["test"]:
        asked, actual = ex.metadata["asked"], ex.metadata["actual"]
        assert ex.answer == ("yes" if asked == actual else "no") and ex.draft_context.endswith(f" is {actual}.")
        answers[ex.question].add(ex.answer)
        assert ex.draft_context not in render_prompt(tokenizer, ex, "cot", draft="Answer: Yes - ok")
        assert ex.draft_context in draft_messages(ex)[-1]["content"]
        assert ex.draft_context in teacher_messages(ex, "Answer: Yes - ok")[-1]["content"]
    assert sum(len(a) == 2 for a in answers.values()) >= 0.1 * len(answers)  # repeated texts carry both answers
    shares = [sum(ex.answer == "yes" for ex in data[s]) / len(data[s]) for s in ("train", "test")]
    assert all(0.35 < share < 0.65 for share in shares)
    test_keys = {(ex.draft_context, ex.question) for ex in data["test"]}
    assert not any((ex.draft_context, ex.question) in test_keys for ex in data["train"])
    again = load_task("hf", {"source": "hidden_fact"}, 5, 100, 0)
    assert [e.draft_context for e in again["test"]] == [e.draft_context for e in data["test"]]
    with pytest.raises(ConfigError, match="task_specs.hf.digits"):
        load_task("hf", {"source": "hidden_fact", "digits": 3}, 2, 2, 0)
