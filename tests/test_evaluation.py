import pytest

from cotlab.evaluation.compare import (CODI_MODELS, MARKOVIAN_MODELS, TRANSPLANT_MODELS, compare, load_predictions,
                                      markdown, optional_models, verification, write_markdown)
from cotlab.evaluation.generate import generate
from cotlab.evaluation.run import evaluate, pick_shots
from cotlab.schema import DataError, write_jsonl
from cotlab.models import load_checkpoint
from cotlab.answers import extract_answer
from cotlab.prompts import render_prompt


def test_batched_generation_matches_one_at_a_time(tiny_base, examples):
    model, tokenizer, _ = load_checkpoint(tiny_base, "cpu")
    prompts = [render_prompt(tokenizer, ex, "cot") for ex in examples["test"]]
    batched = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=8)
    single = [generate(model, tokenizer, [p], max_new_tokens=10, batch_size=1)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.truncated == (g.n_new_tokens == 10) for g in batched)


def test_prefix_cached_generation_gives_the_uncached_rows(tiny_base, examples):
    """Few-shot prompts share their exemplars: run once, their cache copied into each batch, the rows unchanged
    (each row keeps its own tokens and positions; the padding sits masked between the prefix and its rest)."""
    from cotlab.evaluation.generate import shared_prefix_length

    model, tokenizer, _ = load_checkpoint(tiny_base, "cpu")
    shots = pick_shots(examples["train"], 2, seed=0)
    prompts = [render_prompt(tokenizer, ex, "cot", shots=shots) for ex in examples["test"]]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert shared_prefix_length(ids) > 50  # the exemplars
    cached = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=3)
    assert cached == generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=3, prefix_cache=False)
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]], minimum=1) == 2  # every row keeps a token of its own
    assert shared_prefix_length([[1, 2, 3], [1, 2, 4]], minimum=3) == 0  # too short to pay


def test_evaluate_writes_every_field(tiny_base, examples):
    model, tokenizer, _ = load_checkpoint(tiny_base, "cpu")
    shots = pick_shots(examples["train"], 2, seed=0)
    predictions, metrics = evaluate(model, tokenizer, examples["test"], "direct", 6, 4, shots)
    assert len(predictions) == metrics["n"] == len(examples["test"])
    for key in ("id", "prompt", "output", "pred", "pred_strict", "gold", "correct", "truncated"):
        assert key in predictions[0]
    for key in ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "invalid_rate", "truncation_rate",
                "pred_share.:invalid"):
        assert key in metrics
    assert predictions[0]["prompt"].count(shots[0].question) == 1


def _preds(correct, prefix="q"):
    return [{"id": f"{prefix}{i}", "pred": "yes" if c else "no", "pred_strict": None, "gold": "yes",
             "answer_type": "yes_no", "correct": c, "correct_strict": False, "truncated": False}
            for i, c in enumerate(correct)]


def _verdicts(correct, argument_correct):
    """Transplant rows as transplant.predict writes them: the verdict (A or B), the gold, the argued candidate."""
    rows = []
    for i, (c, a) in enumerate(zip(correct, argument_correct)):
        gold = "AB"[i % 2]
        other = "BA"[i % 2]
        rows.append({"id": f"q{i}", "pred": gold if c else other, "gold": gold, "correct": c,
                     "argued": gold if a else other, "argument_correct": a, "follows_argument": c == a})
    return rows


def test_compare_pairs_models_on_the_same_questions(tmp_path):
    ref = [False] * 40 + [True] * 20
    better = [True] * 30 + [False] * 10 + [True] * 20
    write_jsonl(tmp_path / "base_zeroshot/t/predictions.jsonl", _preds(ref))
    write_jsonl(tmp_path / "sft/t/predictions.jsonl", _preds(better))
    result = compare(load_predictions(tmp_path), "base_zeroshot", 500, 0.95, seed=0)
    row = result["t"]["sft"]
    assert row["diff_vs_ref"] == pytest.approx(0.5)
    assert row["diff_ci_low"] > 0.3 and row["mcnemar_p"] < 1e-6
    assert "diff_vs_ref" not in result["t"]["base_zeroshot"]
    assert "| t | sft | 60 |" in markdown(result, "base_zeroshot")


def test_verification_pairs_the_verdict_against_following_the_argument():
    # 40 items, the argument right on 30. "follower" always follows it; "checker" is right on 38 of 40.
    argument_correct = [True] * 30 + [False] * 10
    follower = _verdicts(argument_correct, argument_correct)
    checker = _verdicts([i < 38 for i in range(40)], argument_correct)
    table = {"svamp": {"transplant": checker, "no_transplant": follower}, "other": {"sft": _preds([True])}}
    result = verification(table, ("transplant", "transplant_masked", "no_transplant"), 500, 0.95, seed=0)
    assert set(result) == {"svamp"} and set(result["svamp"]) == {"transplant", "no_transplant"}
    follows, checks = result["svamp"]["no_transplant"], result["svamp"]["transplant"]
    assert follows["argument_correct_rate"] == checks["argument_correct_rate"] == 0.75
    assert follows["follows_argument_rate"] == 1.0 and follows["diff_vs_argument"] == 0
    assert follows["mcnemar_p_vs_argument"] == 1.0
    assert checks["accuracy"] == 0.95 and checks["diff_vs_argument"] == pytest.approx(0.2)
    assert checks["accuracy_argument_right"] == 1.0 and checks["accuracy_argument_wrong"] == 0.8
    assert checks["mcnemar_p_vs_argument"] < 0.01
    report = markdown({}, "base_zeroshot", None, result)
    assert "## Transplant verification" in report and "| svamp | transplant | 40 | 95.0 |" in report


def test_each_system_gets_a_headline_summary_without_nan():
    """metrics/summary/<system>.json: the headline differences in points, the effects in full, the accuracies; a
    comparison whose side was not evaluated is null, never NaN (DVC and JSON readers choke on NaN)."""
    import json

    from cotlab.evaluation.compare import summaries

    argument_correct = [True] * 30 + [True] * 10
    checker = _verdicts([i < 38 for i in range(40)], argument_correct)
    table = {"t": {"base_zeroshot": _preds([False] * 40 + [True] * 20),
                   "dpo": _preds([True] * 30 + [False] * 10 + [True] * 20)},
             "pr": {"codi": _preds([True] * 10), "base_fewshot_cot": _preds([False] * 10)},
             "svamp": {"transplant": checker}}
    result = compare(table, "base_zeroshot", 200, 0.95, seed=0)
    verified = verification(table, ("transplant",), 200, 0.95, seed=0)
    headline = {"dpo_t": "dpo@t vs base_zeroshot@t", "codi_fewshot": "codi@pr vs base_fewshot_cot@pr",
                "markovian_vs_base": "markovian@arith vs markovian_base@arith"}
    out = summaries(result, headline, 200, 0.95, 0, table, verified)
    assert set(out) == {"self_improving", "codi", "markovian", "transplant"}
    assert out["self_improving"]["pp"] == {"dpo_t": 50.0}
    assert out["self_improving"]["effects"]["dpo_t"]["mcnemar_p"] < 1e-6
    assert set(out["self_improving"]["accuracy"]["t"]) == {"base_zeroshot", "dpo"}
    assert out["codi"]["pp"] == {"codi_fewshot": 100.0} and set(out["codi"]["accuracy"]["pr"]) == {
        "codi", "base_fewshot_cot"}
    assert out["markovian"]["pp"] == {"markovian_vs_base": None}  # not evaluated: null, and said so
    # a headline against a yardstick that answers one thing (base_fewshot_cot@pr: "no" on every row) says so
    assert [out[s]["effects"][n]["against_collapsed"] for s, n in (("self_improving", "dpo_t"), (
        "codi", "codi_fewshot"), ("markovian", "markovian_vs_base"))] == [False, True, None]
    assert out["markovian"]["effects"]["markovian_vs_base"]["missing"] == ["markovian@arith", "markovian_base@arith"]
    assert out["transplant"]["effects"]["transplant_vs_argument@svamp"]["diff"] == pytest.approx(-0.05)
    assert verified["svamp"]["transplant"]["accuracy_argument_wrong"] is None  # the argument was never wrong
    json.dumps(out, allow_nan=False)
    json.dumps(verified, allow_nan=False)


def test_the_report_embeds_figures_rendered_offline_and_skips_systems_that_did_not_run(tmp_path):
    from cotlab.evaluation.figures import report_figures
    from cotlab.schema import write_csv

    rates = {"invalid_rate": 0.0, "truncation_rate": 0.0, "top_answer": "yes", "top_share": 0.5, "collapsed": False}
    result = {"t": {"base_zeroshot": {"n": 60, "accuracy": 0.5, "accuracy_ci_low": 0.38, "accuracy_ci_high": 0.62,
                                      **rates, "top_share": 0.95, "collapsed": True},
                    "sft": {"n": 60, "accuracy": 0.7, "accuracy_ci_low": 0.57, "accuracy_ci_high": 0.8, **rates}}}
    write_csv(tmp_path / "plots/sft/t.csv", [{"step": s, "epoch": s / 4, "loss": 2 - s / 4} for s in range(1, 5)])
    write_csv(tmp_path / "plots/codi/t.csv", [{"step": s, "loss": 3.0, "ce_student": 1.0, "ce_teacher": "" if s % 2
                                               else 0.5, "distill": 0.1} for s in range(1, 5)])  # a part not logged
    trained = {"sft": ["t"], "codi": ["t"], "markovian": ["arithmetic"], "transplant": ["svamp"]}
    trivial = {"t": {"majority_answer": "no", "majority_accuracy": 0.6, "chance": 0.5}}
    figures = report_figures(result, tmp_path / "plots", tmp_path / "figures", trained, trivial)
    names = [name for _, name in figures]
    assert names == ["accuracy.png", "training_loss.png", "codi_loss_parts.png"]  # no Markovian or transplant CSV
    for name in names:
        assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = (tmp_path / "figures" / "accuracy.png").read_bytes()
    report_figures(result, tmp_path / "plots", tmp_path / "figures", trained, trivial)
    assert (tmp_path / "figures" / "accuracy.png").read_bytes() == first  # the same bytes: no timestamp, no version
    report = markdown(result, "base_zeroshot", figures=[(t, f"figures/{n}") for t, n in figures])
    assert "## Figures" in report and "![Accuracy per task, with 95% Wilson intervals (dashed: majority class" in report
    assert "| t | base_zeroshot | 60 | 50.0 |" in report and "**yes 95.0% collapsed**" in report
    # the reference lines and the collapse mark change the picture
    report_figures(result, tmp_path / "plots", tmp_path / "bare", trained)
    assert (tmp_path / "bare" / "accuracy.png").read_bytes() != first


def test_compare_refuses_different_test_sets(tmp_path):
    write_jsonl(tmp_path / "base_zeroshot/t/predictions.jsonl", _preds([True, False]))
    write_jsonl(tmp_path / "sft/t/predictions.jsonl", _preds([True, False], prefix="other"))
    with pytest.raises(DataError, match="different test sets"):
        compare(load_predictions(tmp_path), "base_zeroshot", 100, 0.95, seed=0)


def test_compare_reads_only_the_configured_tasks(tmp_path):
    for task in ("kept", "dropped"):
        write_jsonl(tmp_path / f"base_zeroshot/{task}/predictions.jsonl", _preds([True, False]))
    assert set(load_predictions(tmp_path, ["kept"])) == {"kept"}
    with pytest.raises(DataError, match="missing_task"):
        load_predictions(tmp_path, ["kept", "missing_task"])


def test_optional_tasks_bring_only_their_named_models(tmp_path):
    """CODI's tasks outside `tasks`: its own models when evaluated, never stale outputs of other models there."""
    for model, task in (("base_zeroshot", "kept"), ("codi", "extra"), ("sft", "extra")):
        write_jsonl(tmp_path / f"{model}/{task}/predictions.jsonl", _preds([True, False]))
    table = load_predictions(tmp_path, ["kept"], optional={"extra": ("codi", "cot_sft"), "absent": ("codi",)})
    assert {t: set(m) for t, m in table.items()} == {"kept": {"base_zeroshot"}, "extra": {"codi"}}


def test_each_methods_tasks_bring_its_own_models():
    optional = optional_models(["gsm8k"], ["gsm8k", "arc"], ["svamp"])
    assert optional == {"gsm8k": CODI_MODELS + MARKOVIAN_MODELS, "arc": MARKOVIAN_MODELS, "svamp": TRANSPLANT_MODELS}
    assert optional["gsm8k"] == ("codi", "cot_sft", "base_fewshot_cot", "markovian", "markovian_base",
                                 "non_markovian", "non_markovian_base")  # the order the lists are given in
    assert optional_models([], [], []) == {}


def test_the_report_is_written_where_asked_and_returned(tmp_path):
    write_jsonl(tmp_path / "eval/base_zeroshot/t/predictions.jsonl", _preds([True, False]))
    write_jsonl(tmp_path / "eval/sft/t/predictions.jsonl", _preds([True, True]))
    result = compare(load_predictions(tmp_path / "eval"), "base_zeroshot", 100, 0.95, seed=0)
    report = write_markdown(tmp_path / "reports/compare.md", result, "base_zeroshot")
    assert report == markdown(result, "base_zeroshot") and report.endswith("|\n")
    assert (tmp_path / "reports/compare.md").read_text() == report


def test_mechanism_checks_show_an_effect_its_ablation_and_what_is_missing(tmp_path):
    """A Markovian actor whose CoT carries the code where the base's does not: the check is shown with its McNemar p;
    the trend comes from the training metrics with its Fisher-z interval, the ablation's beside it; IG's
    completeness counts the attributions within 5%; a system whose outputs are absent is a 'not run' row, never a
    dropped one."""
    import json

    from cotlab.evaluation.compare import compare_pairs
    from cotlab.evaluation.mechanisms import mechanism_checks, mechanisms_markdown, needed_pairs, spearman_interval
    from cotlab.evaluation.stats import wilson_interval

    def rows(correct, carried):
        return [{"id": f"q{i}", "correct": c, "pred": str(1000 + i) if c else "0", "gold": str(1000 + i),
                 "answer_type": "number", "cot_contains_answer": k} for i, (c, k) in enumerate(zip(correct, carried))]

    n = 30
    table = {"lockers": {"markovian": rows([True] * 20 + [False] * 10, [True] * 25 + [False] * 5),
                         "markovian_base": rows([False] * n, [False] * n),
                         "non_markovian": rows([True] * 15 + [False] * 15, [False] * n),
                         "non_markovian_base": rows([False] * n, [False] * n)}}
    for variant, rho, p in (("markovian", 0.6, 0.001), ("non_markovian", 0.1, 0.6)):
        path = tmp_path / f"metrics/train/{variant}/lockers.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"steps": 24, "answer_logprob_trend_spearman": rho, "answer_logprob_trend_p": p,
                                    "answer_logprob_first_quarter": -9.0, "answer_logprob_last_quarter": -4.0}))
    # IG on syllogism: 3 of 4 attributions complete to within 5%, the medians from the stage's metrics
    (tmp_path / "attribution/syllogism").mkdir(parents=True)
    (tmp_path / "attribution/syllogism/scores.jsonl").write_text("".join(
        json.dumps({"id": f"q{i % 2}", "model": m, "relative_delta": e}) + "\n"
        for i, (m, e) in enumerate([("cot_distill", 0.01), ("cot_distill", 0.04), ("dpo", 0.02), ("dpo", 0.3)])))
    (tmp_path / "metrics/attribution").mkdir(parents=True)
    summary = {"median_relative_delta": 0.025, "draft_share": 0.3}
    (tmp_path / "metrics/attribution/syllogism.json").write_text(json.dumps(
        {"before_dpo": summary, "after_dpo": {**summary, "median_relative_delta": 0.16}}))
    # the judge of syllogism had nothing to compare: Phase C wrote no questions in its drafts
    (tmp_path / "metrics/judge").mkdir(parents=True)
    (tmp_path / "metrics/judge/syllogism.json").write_text(json.dumps(
        {"n_compared": 0, "wins": 0, "losses": 0, "ties": 0, "undecided": 0, "position_consistency": None,
         "judge_picks_first": None, "sign_test_p": None, "challenger_question_rate": 0.0,
         "incumbent_question_rate": 1.0, "challenger_drafts.n": 100}))
    # the draft-information check: Phase C loses 20 pp without its draft (p < 0.05) but only 2 pp with another's
    def ablation(diff, p):
        return {"ablation_of": "dpo", "diff_vs_full": diff, "diff_vs_full_ci_low": diff - 0.1,
                "diff_vs_full_ci_high": diff + 0.1, "mcnemar_p_vs_full": p}
    result = {"syllogism": {"dpo": {"accuracy": 0.7}, "dpo_no_draft": ablation(-0.2, 0.001),
                            "dpo_shuffled_draft": ablation(-0.02, 0.7)},
              "hidden_fact": {"dpo": {"accuracy": 0.8}, "dpo_no_draft": ablation(-0.3, 1e-5),
                              "dpo_shuffled_draft": ablation(-0.25, 1e-4)}}
    pairs = compare_pairs(table, needed_pairs([], ["lockers"], ["svamp"]), 200, 0.95, 0)
    checks = mechanism_checks(tmp_path, result, pairs, {}, table, ["syllogism", "hidden_fact"], [], ["lockers"],
                              ["svamp"])
    by = {r["check"]: r for r in checks}
    assert by["reward trend @lockers"]["shown"] and "rho +0.10" in by["reward trend @lockers"]["ablation"]
    assert by["reward trend @lockers"]["interval"] == "rho [{:+.2f}, {:+.2f}]".format(*spearman_interval(0.6, 24))
    ig = by["IG completeness @syllogism"]
    assert not ig["shown"] and "3 of 4 attributions within it" in ig["effect"]  # the after-DPO median is 16%
    assert ig["interval"] == "[{:.1f}, {:.1f}]%".format(*(100 * x for x in wilson_interval(3, 4)))
    partial, carried_by_draft = by["the draft carries information @syllogism"], by[
        "the draft carries information @hidden_fact"]
    assert not partial["shown"] and partial["p"] == 0.001 and "-20.0 pp" in partial["effect"]  # shuffling: -2 pp
    assert carried_by_draft["shown"] and carried_by_draft["interval"] == "[-40.0, -20.0] pp"
    assert by["Phase B vs base @hidden_fact"]["effect"].startswith("not run")
    judged = by["judge: questions vs the base's @syllogism"]
    assert not judged["shown"] and judged["why"] == ("nothing to judge: the challenger's drafts asked questions on "
                                                     "0.0% of 100 questions (the base's: 100.0%)")
    accuracy = by["two-stage accuracy (greedy) @lockers"]
    assert accuracy["shown"] and accuracy["p"] == pytest.approx(2 * 0.5 ** 20)
    assert "+50.0 pp" in accuracy["ablation"]  # non_markovian vs its base
    carried = by["CoT carries the answer @lockers"]
    assert carried["shown"] and "83.3% vs base 0.0%" in carried["effect"] and "0.0%" in carried["ablation"]
    assert not by["verdict vs the argument @svamp"]["shown"]
    assert by["verdict vs the argument @svamp"]["effect"].startswith("not run")
    report = mechanisms_markdown(checks)
    assert report.startswith("## Mechanism checks") and report.count("\n| markovian |") == 3
    assert "smallest size" not in report
    needed = mechanisms_markdown(checks, {"transplant": "~12,000 samples", "codi": "not in these rows"})
    assert "- **transplant**: ~12,000 samples" in needed and "codi" not in needed.split("smallest size")[1]


def test_diff_metrics_names_each_difference_and_ignores_wall_clock(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts/diff_metrics.py"
    for run, (acc, seconds) in {"a": (0.5, 3.0), "b": (0.5, 9.0)}.items():
        (tmp_path / run / "eval").mkdir(parents=True)
        (tmp_path / run / "eval/m.json").write_text(json.dumps({"accuracy": acc, "train_runtime": seconds,
                                                                 "nested": {"share_update": seconds}}))
    same = subprocess.run([sys.executable, script, tmp_path / "a", tmp_path / "b"], capture_output=True, text=True)
    assert same.returncode == 0 and "identical: 1 metrics files" in same.stdout
    (tmp_path / "b/eval/m.json").write_text(json.dumps({"accuracy": 0.6, "train_runtime": 9.0}))
    (tmp_path / "b/extra.json").write_text("{}")
    changed = subprocess.run([sys.executable, script, tmp_path / "a", tmp_path / "b"], capture_output=True, text=True)
    assert changed.returncode == 1
    assert "eval/m.json: accuracy: 0.5 -> 0.6" in changed.stdout and "extra.json: only in B" in changed.stdout
    assert "nested.share_update only in A" in changed.stdout  # a key that vanished is a difference, timing or not


def test_needs_forcing_only_rows_cut_without_an_answer_line():
    from cotlab.evaluation.run import needs_forcing

    assert needs_forcing("Plants need light, so they", True, "yes_no")
    assert needs_forcing("No wait, let me think: yes it", True, "yes_no")  # yes/no words are no answer line
    assert needs_forcing("Some reasoning.\nThe answer is: maybe", True, "yes_no")  # an anchor whose value fails
    assert not needs_forcing("Plants need light, so they", False, "yes_no")  # ended by itself: never forced
    assert not needs_forcing("Reasoning.\nThe answer is: Yes\nMore rambling until the cap", True, "yes_no")
    assert not needs_forcing("So 3 + 4.\nThe answer is: 7", True, "number")
    assert needs_forcing("So 3 + 4 = 7 and then", True, "number")


def test_budget_forcing_answers_rows_cut_at_the_cap(tiny_base, examples):
    """s1's budget forcing: rows cut at max_new_tokens without an answer line get the cue and a short continuation,
    generated from prompt + output + cue; off, evaluate is exactly generate + score as before."""
    from cotlab.evaluation.run import FORCED_ANSWER_CUE, score
    from cotlab.prompts import FIRST_LINE_STOP, TEMPLATE_STOPS

    model, tokenizer, _ = load_checkpoint(tiny_base, "cpu")
    test = examples["test"]
    plain, plain_metrics = evaluate(model, tokenizer, test, "cot", 3, 4)
    prompts = [p["prompt"] for p in plain]
    generations = generate(model, tokenizer, prompts, 3, batch_size=4, stop=TEMPLATE_STOPS["cot"])
    assert (plain, plain_metrics) == score(test, prompts, generations)  # off: today's rows and metrics
    assert "forced" not in plain[0] and "forced_answer_rate" not in plain_metrics

    forced, metrics = evaluate(model, tokenizer, test, "cot", 3, 4, force_answer_tokens=5)
    is_forced = [p["forced"] for p in forced]
    assert any(is_forced)
    assert metrics["forced_answer_rate"] == pytest.approx(sum(is_forced) / len(forced))
    assert metrics["truncation_rate"] == plain_metrics["truncation_rate"]  # the raw cut rate stays reported
    cued = [p["prompt"] + p["output"] + FORCED_ANSWER_CUE for p, f in zip(plain, is_forced) if f]
    answers = generate(model, tokenizer, cued, 5, batch_size=4, stop=FIRST_LINE_STOP)
    answers = iter(answers)
    for before, row, gen in zip(plain, forced, generations):
        if row["forced"]:
            answer = next(answers)
            assert gen.truncated and before["pred_strict"] is None
            assert row["output"] == before["output"] + FORCED_ANSWER_CUE + answer.text
            assert row["n_forced_tokens"] == answer.n_new_tokens > 0 and row["truncated"]
            assert row["pred_strict"] == extract_answer(FORCED_ANSWER_CUE + answer.text, row["answer_type"],
                                                        strict=True)
        else:
            assert row["n_forced_tokens"] == 0
            assert {k: v for k, v in row.items() if k not in ("forced", "n_forced_tokens")} == before

    # A prefilled run already ends its prompt with the answer line: never forced.
    prefilled, m = evaluate(model, tokenizer, test, "cot", 2, 4, prefill="The answer is:", force_answer_tokens=5)
    assert "forced" not in prefilled[0] and "forced_answer_rate" not in m
