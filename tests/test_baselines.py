"""Trivial baselines and collapse: planted degenerate models (always "no", always "yes", always following the argument,
a CoT that names every code) must come out not shown, each naming the yardstick it failed; a model that really beats
the base and every trivial baseline must come out shown (so these tests fail if the verdict is always "no")."""
import json

import pytest

from cotlab.evaluation.baselines import answer_profile, majority_answer, task_baselines
from cotlab.evaluation.compare import baselines, compare, compare_pairs, markdown, verification
from cotlab.evaluation.mechanisms import mechanism_checks, needed_pairs

N = 100


def yes_no_rows(golds, preds):
    return [{"id": f"q{i}", "pred": p, "gold": g, "answer_type": "yes_no", "correct": p == g}
            for i, (g, p) in enumerate(zip(golds, preds))]


# the test split is 64% "yes" (as syllogism's), the train split 60% "yes": the majority class is "yes"
GOLDS = ["yes"] * 64 + ["no"] * 36
TRAIN = {"golds": ["yes"] * 60 + ["no"] * 40, "n_options": 2}
BASE = ["no"] * 98 + ["yes"] * 2  # a base that answers "no" to 98% (the 2 "yes" on golds "no"): 34%


def self_improving(model_preds: list[str], tmp_path) -> dict:
    table = {"syllogism": {"base_zeroshot": yes_no_rows(GOLDS, BASE), "cot_distill": yes_no_rows(GOLDS, model_preds),
                           "dpo": yes_no_rows(GOLDS, model_preds)}}
    trivial = baselines(table, {"syllogism": TRAIN})
    result = compare(table, "base_zeroshot", 200, 0.95, 0, trivial=trivial)
    checks = mechanism_checks(tmp_path, result, {}, {}, table, ["syllogism"], [], [], [], trivial)
    return {"trivial": trivial, "result": result, "checks": {r["check"]: r for r in checks}}


def test_majority_class_comes_from_the_train_split_and_is_scored_on_the_test_questions():
    assert majority_answer(["Yes", "yes", "no"], "yes_no") == "yes"  # normalised: "Yes" and "yes" are one answer
    assert majority_answer(["b", "a", "a", "b"], "label") == "a"  # a tie breaks by the key, the same every run
    rows = yes_no_rows(["no"] * 56 + ["yes"] * 44, ["no"] * 100)
    b = task_baselines(rows, "yes_no", majority_answer(["yes"] * 55 + ["no"] * 45, "yes_no"), 2)
    # the train split's "yes", not the test split's "no": 44%, below chance, so chance is the strongest
    assert b["majority_answer"] == "yes" and b["majority_accuracy"] == pytest.approx(0.44)
    assert b["chance"] == 0.5 and b["strongest"] == "chance"


def test_collapse_and_balanced_accuracy():
    always_no = answer_profile(yes_no_rows(GOLDS, ["no"] * N), "yes_no")
    assert always_no["collapsed"] and always_no["top_answer"] == "no" and always_no["top_share"] == 1.0
    assert always_no["balanced_accuracy"] == pytest.approx(0.5)  # recall 1 on "no", 0 on "yes"
    mixed = answer_profile(yes_no_rows(GOLDS, ["yes"] * 89 + ["no"] * 11), "yes_no")
    assert not mixed["collapsed"] and mixed["top_share"] == pytest.approx(0.89)
    invalid = answer_profile([{**r, "pred": None} for r in yes_no_rows(GOLDS, BASE)], "yes_no")
    assert invalid["collapsed"] and invalid["top_answer"] == ":invalid"  # never answering is one answer too
    assert answer_profile(yes_no_rows(GOLDS, BASE), "number")["balanced_accuracy"] is None  # open answers: none


@pytest.mark.parametrize("constant", ["yes", "no"])
def test_a_model_that_answers_one_thing_is_not_shown(constant, tmp_path):
    out = self_improving([constant] * N, tmp_path)
    row = out["checks"]["Phase B vs base @syllogism"]
    assert not row["shown"] and row["why"].startswith(f"collapsed: {constant} on 100.0%")
    if constant == "yes":  # 64% vs the base's 34%, p = 0.003: what the old rule called shown
        assert out["result"]["syllogism"]["cot_distill"]["mcnemar_p"] < 0.01
        assert "majority (yes) 64.0%" in row["yardsticks"] and "(collapsed: no 98.0%)" in row["yardsticks"]
    assert not out["checks"]["the draft carries information @syllogism"]["shown"]
    assert "**" + constant + " 100.0% collapsed**" in markdown(out["result"], "base_zeroshot")


def test_a_model_below_the_majority_class_is_not_shown(tmp_path):
    # 80 "yes", 20 "no" answered at random-ish: 60% right, above the base's 34% (p < 0.05) but below "yes" (64%)
    preds = ["yes"] * 52 + ["no"] * 12 + ["yes"] * 28 + ["no"] * 8
    out = self_improving(preds, tmp_path)
    model = out["result"]["syllogism"]["cot_distill"]
    assert not model["collapsed"] and model["accuracy"] == pytest.approx(0.6) and model["mcnemar_p"] < 0.05
    assert model["baseline"] == "majority" and model["diff_vs_baseline"] == pytest.approx(-0.04)
    row = out["checks"]["Phase B vs base @syllogism"]
    assert not row["shown"] and row["why"].startswith("not above the majority baseline (-4.0 pp")


def test_a_model_that_beats_every_yardstick_is_shown(tmp_path):
    # right on 60 of the 64 "yes" and 30 of the 36 "no": 90%, against the majority's 64% and the base's 34%
    preds = ["yes"] * 60 + ["no"] * 4 + ["no"] * 30 + ["yes"] * 6
    out = self_improving(preds, tmp_path)
    row = out["checks"]["Phase B vs base @syllogism"]
    assert row["shown"] and row["why"] is None, row
    assert out["result"]["syllogism"]["cot_distill"]["p_vs_baseline"] < 1e-4
    json.dumps(out["trivial"], allow_nan=False)


def _verdicts(correct, argument_correct):
    rows = []
    for i, (c, a) in enumerate(zip(correct, argument_correct)):
        gold, other = "AB"[i % 2], "BA"[i % 2]
        rows.append({"id": f"q{i}", "pred": gold if c else other, "gold": gold, "correct": c,
                     "argued": gold if a else other, "argument_correct": a, "follows_argument": c == a})
    return rows


def test_a_verifier_that_follows_the_argument_is_not_shown(tmp_path):
    argument = [True] * 75 + [False] * 25
    follower = _verdicts(argument, argument)
    # the no-transplant control answers worse than the argument: the follower beats it, p < 0.05, as before
    control = _verdicts([True] * 55 + [False] * 45, argument)
    table = {"svamp": {"transplant": follower, "no_transplant": control, "transplant_masked": control}}
    trivial = baselines(table, {"svamp": {"golds": ["A", "B"] * 50, "n_options": 2}})
    assert trivial["svamp"]["strongest"] == "follow_argument" and trivial["svamp"]["follow_argument_accuracy"] == 0.75
    result = compare(table, "base_zeroshot", 200, 0.95, 0, trivial=trivial)
    pairs = compare_pairs(table, needed_pairs([], [], ["svamp"]), 200, 0.95, 0)
    verified = verification(table, ("transplant", "transplant_masked", "no_transplant"), 200, 0.95, 0)
    checks = {r["check"]: r for r in mechanism_checks(tmp_path, result, pairs, verified, table, [], [], [], ["svamp"],
                                                      trivial)}
    assert pairs["transplant@svamp vs no_transplant@svamp"]["mcnemar_p"] < 0.05
    against_control = checks["transplant vs no transplant @svamp"]
    assert not against_control["shown"] and "not above the follow argument baseline" in against_control["why"]
    assert not checks["verdict vs the argument @svamp"]["shown"]


def _lockers_rows(singles, n_candidates, carried):
    return [{"id": f"q{i}", "pred": "0", "gold": str(1000 + i), "answer_type": "number", "correct": False,
             "cot_contains_answer": c, "cot_singles_out": s, "cot_n_candidates": k}
            for i, (s, k, c) in enumerate(zip(singles, n_candidates, carried))]


def test_a_cot_that_names_every_code_does_not_single_out_the_answer(tmp_path):
    # trained: 90% of CoTs list all three codes (so carry the gold) and single out none; base: 20% single out
    trained = _lockers_rows([False] * N, [3] * 90 + [0] * 10, [True] * 90 + [False] * 10)
    base = _lockers_rows([True] * 20 + [False] * 80, [1] * 20 + [0] * 80, [True] * 20 + [False] * 80)
    table = {"lockers": {"markovian": trained, "markovian_base": base}}
    (tmp_path / "metrics/train/markovian").mkdir(parents=True)
    (tmp_path / "metrics/train/markovian/lockers.json").write_text(json.dumps(
        {"steps": 24, "answer_logprob_trend_spearman": 0.6, "answer_logprob_trend_p": 0.002,
         "answer_logprob_first_quarter": -2.7, "answer_logprob_last_quarter": -1.7}))
    checks = {r["check"]: r for r in mechanism_checks(tmp_path, {}, {}, {}, table, [], [], ["lockers"], [], {})}
    singled = checks["CoT singles out the answer @lockers"]
    assert not singled["shown"] and "90.0% vs base 20.0%" in singled["effect"]  # carried at all: up from 20%
    assert "copy-several shortcut" in singled["why"]
    trend = checks["reward trend @lockers"]
    assert not trend["shown"] and trend["why"].startswith("the reward rose through the copy-several shortcut")
    # the same rewards with CoTs that single the code out are shown
    table["lockers"]["markovian"] = _lockers_rows([True] * 60 + [False] * 40, [1] * 60 + [0] * 40,
                                                  [True] * 60 + [False] * 40)
    checks = {r["check"]: r for r in mechanism_checks(tmp_path, {}, {}, {}, table, [], [], ["lockers"], [], {})}
    assert checks["CoT singles out the answer @lockers"]["shown"] and checks["reward trend @lockers"]["shown"]


def test_the_candidate_choice_row_holds_the_answer_against_chance_among_the_codes(tmp_path):
    codes = {"1000": -1.0, "2000": -2.0, "3000": -3.0}
    def rows(right):
        return [{**r, "answer_choice_correct": c, "candidate_logprobs": codes}
                for r, c in zip(_lockers_rows([False] * N, [0] * N, [False] * N), right)]
    table = {"lockers": {"markovian": rows([True] * 50 + [False] * 50), "markovian_base": rows([True] * 30 + [False] * 70)}}
    checks = {r["check"]: r for r in mechanism_checks(tmp_path, {}, {}, {}, table, [], [], ["lockers"], [], {})}
    row = checks["answer chosen among the question's codes @lockers"]
    assert row["shown"] and "50.0% vs base 30.0%" in row["effect"] and row["yardsticks"] == "chance 33.3%"
    # 40% beats a 20% base (p < 0.05) but not chance among three codes (p = 0.17): not shown
    table["lockers"] = {"markovian": rows([True] * 40 + [False] * 60), "markovian_base": rows([True] * 20 + [False] * 80)}
    checks = {r["check"]: r for r in mechanism_checks(tmp_path, {}, {}, {}, table, [], [], ["lockers"], [], {})}
    row = checks["answer chosen among the question's codes @lockers"]
    assert not row["shown"] and row["why"].startswith("not above chance 33.3%"), row


@pytest.mark.parametrize("ci_low,start,p_gain,shown", [(0.45, 0.5, 0.03, False), (0.6, 0.5, 0.03, True),
                                                        (0.6, 0.5, 0.2, False), (0.6, 1.0, 1.0, False)])
def test_dpo_preference_row_reads_each_pair_kind_beside_the_phase_b_start(tmp_path, ci_low, start, p_gain, shown):
    """Shown only when the implicit reward clears 50% and the raw preference rose from the Phase B start's; a start
    at the ceiling (it already prefers every chosen side) is named as such."""
    dpo = {"heldout.preference_accuracy": 0.7, "heldout.preference_accuracy_ci_low": ci_low,
           "heldout.preference_accuracy_ci_high": 0.8, "heldout.n_pairs": 40,
           "heldout.policy_logprob_accuracy": max(0.65, start), "heldout.start_logprob_accuracy": start,
           "heldout.logprob_accuracy_mcnemar_p": p_gain}
    for kind, n in (("draft_wrong", 15), ("flipped", 25)):
        dpo.update({f"heldout.by_made.{kind}.n_pairs": n, f"heldout.by_made.{kind}.preference_accuracy": 0.6,
                    f"heldout.by_made.{kind}.start_logprob_accuracy": 0.4,
                    f"heldout.by_made.{kind}.policy_logprob_accuracy": 0.55})
    (tmp_path / "metrics/train/dpo").mkdir(parents=True)
    (tmp_path / "metrics/train/dpo/syllogism.json").write_text(json.dumps(dpo))
    rows = {r["check"]: r for r in mechanism_checks(tmp_path, {}, {}, {}, {}, ["syllogism"], [], [], [], {})}
    row = rows["DPO held-out preference accuracy @syllogism"]
    assert "draft_wrong (n=15): implicit 60.0%, log p 40.0% -> 55.0%" in row["ablation"]
    assert "flipped (n=25)" in row["ablation"] and f"{100 * start:.1f}% at its Phase B start" in row["ablation"]
    assert row["shown"] == shown
    if start == 1.0:
        assert "cannot show a learned preference" in row["why"]
