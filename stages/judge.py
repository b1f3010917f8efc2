"""Stage judge@<task>: an LLM judge compares the clarifying questions of the challenger (judge.challenger, Phase C
by default) with the base student's, question by question, in both orders (challenger as A, then as B; MT-Bench's
practice). Both orders agreeing make a win or a loss, anything else a tie; the win rate (ties as half), the decisive
win rate with a Wilson 95% CI, a sign test and the judge's position consistency. The judge is any teacher backend
(`local` runs offline); prompts and raw verdicts of both orders are kept."""
import sys

from cotlab import tracking
from cotlab.schema import read_examples, read_jsonl, write_json, write_jsonl
from cotlab.evaluation.generate import load_generator
from cotlab.selfimprove.drafts import DraftsConfig, student_drafts
from cotlab.selfimprove.judge import JudgeConfig, asked_questions, judge_pairs, parse_verdict, win_rate
from cotlab.stage import data_dir, drafts_dir, mlflow_params, model_dir, stage_main
from cotlab.teacher import Request, Teacher


@stage_main("judge")
def main(params, task):
    cfg = params.section("judge", JudgeConfig)
    drafts_cfg = params.section("drafts", DraftsConfig)
    test = read_examples(f"{data_dir(task)}/test.jsonl")
    incumbent = {row["id"]: asked_questions(row) for row in read_jsonl(f"{drafts_dir(task)}/test.jsonl")}
    with tracking.stage_run(f"judge@{task}", mlflow_params(params), task=task):
        model, tokenizer, _ = load_generator(model_dir(cfg.challenger, task), params.model.device,
                                             params.generation)
        drafts, draft_metrics = student_drafts(model, tokenizer, test, drafts_cfg.max_new_tokens,
                                               drafts_cfg.batch_size or params.sizes.eval_batch_size,
                                               drafts_cfg.stop_after_questions)
        del model
        challenger = {row["id"]: asked_questions(row) for row in drafts}
        pairs = judge_pairs(test, challenger, incumbent)
        responses, usage = Teacher(cfg, section="judge").run([Request(p["id"], p["messages"], "judge") for p in pairs])
        verdicts = [parse_verdict(r.text) if r.status == "ok" else None for r in responses]
        metrics = {**win_rate(pairs, verdicts), "challenger": cfg.challenger,
                   "challenger_question_rate": sum(bool(q) for q in challenger.values()) / len(test),
                   "incumbent_question_rate": sum(bool(incumbent.get(ex.id)) for ex in test) / len(test),
                   **{f"challenger_drafts.{k}": v for k, v in draft_metrics.items()}, **usage.metrics()}
        write_jsonl(f"judge/{task}/challenger_drafts.jsonl", drafts)
        write_jsonl(f"judge/{task}/verdicts.jsonl", [
            {"id": p["id"], "challenger_label": p["challenger_label"], "messages": p["messages"],
             "status": r.status, "reason": r.reason, "reply": r.text, "verdict": v}
            for p, r, v in zip(pairs, responses, verdicts)])
        write_json(f"metrics/judge/{task}.json", metrics)
        tracking.log_metrics(metrics)
    if metrics["n_compared"] and metrics["undecided"] == 2 * metrics["n_compared"]:
        print(f"judge@{task}: WARNING no reply of the judge names A or B ({metrics['n_compared']} questions, both "
              f"orders): every question is a tie; see judge/{task}/verdicts.jsonl", file=sys.stderr)
        return
    if not metrics["n_compared"]:
        # Not an error: a student that writes no questions is a finding. But an undefined win rate must not pass
        # unseen.
        print(f"judge@{task}: WARNING nothing compared: questions in "
              f"{metrics['challenger_question_rate']:.0%} of the challenger's drafts and "
              f"{metrics['incumbent_question_rate']:.0%} of the base student's "
              f"(data/drafts/{task}/test.jsonl); the win rate is undefined. Longer drafts "
              f"(drafts.max_new_tokens, now {drafts_cfg.max_new_tokens}) may reach the Questions line.",
              file=sys.stderr)
        return
    m = {k: "n/a" if v is None else f"{v:.3f}" for k, v in metrics.items() if isinstance(v, float) or v is None}
    print(f"judge@{task}: {cfg.challenger} vs base on {metrics['n_compared']} questions, both orders: "
          f"{metrics['wins']} wins, {metrics['losses']} losses, {metrics['ties']} ties "
          f"({metrics['undecided']} undecided replies); win rate {m['win_rate']}, decisive "
          f"{m['decisive_win_rate']} [{m['decisive_win_rate_ci_low']}, {m['decisive_win_rate_ci_high']}], sign test p "
          f"{m['sign_test_p']}, position consistency {m['position_consistency']}, picks A {m['judge_picks_first']}")


if __name__ == "__main__":
    main()
