"""Stage candidates: per math problem of `candidates.task`, a correct and an incorrect explained answer and an
argument that picks one (the correct one at `argument_correct_rate`), for transplant verification."""
from collections import Counter

from cotlab import tracking
from cotlab.data.candidates import assign_labels, oracle_candidates
from cotlab.data.schema import DataError, write_json, write_jsonl
from cotlab.data.sources import load_task
from cotlab.evaluation.extract import is_correct
from cotlab.formats import parse_candidates
from cotlab.prompts import candidates_messages
from cotlab.stage import mlflow_params, stage_main
from cotlab.teacher import Request, Teacher

OUT = "data/candidates"


def check(ex, parsed, correct, argued) -> str | None:
    """Why a teacher's candidates cannot be used, or None."""
    wrong = "B" if correct == "A" else "A"
    if not parsed.ok:
        return parsed.problem
    if not is_correct(parsed.answers[correct], ex.answer, ex.answer_type):
        return "correct_candidate_is_wrong"
    if is_correct(parsed.answers[wrong], ex.answer, ex.answer_type):
        return "incorrect_candidate_is_right"
    return None if parsed.argued == argued else "argument_picks_other"


@stage_main("candidates")
def main(params, *_):
    cfg = params.candidates
    task = cfg.task
    teacher = Teacher(params.teacher, oracle=lambda r: oracle_candidates(r.example, r.context))
    metrics = {}
    # Loaded here, not from data@<task>, so the stage works whatever `tasks` lists (same seed: same split).
    splits = load_task(task, params.task_specs[task], params.sizes.n_train, params.sizes.n_test, params.seed)
    with tracking.stage_run("candidates", mlflow_params(params), task=task):
        for split in ("train", "test"):
            examples = splits[split]
            labels = [assign_labels(ex.id, params.seed, cfg.argument_correct_rate) for ex in examples]
            requests = [Request(ex.id, candidates_messages(ex, c, a), "candidates", ex,
                                {"correct": c, "argued": a, "corrupt_step": cfg.corrupt_step, "seed": params.seed})
                        for ex, (c, a) in zip(examples, labels)]
            responses, usage = teacher.run(requests)
            rows, dropped = [], Counter()
            for ex, (correct, argued), response in zip(examples, labels, responses):
                if response.status != "ok":
                    dropped[f"teacher_{response.status}:{response.reason}"] += 1
                    continue
                parsed = parse_candidates(response.text, ex.answer_type)
                problem = check(ex, parsed, correct, argued)
                if problem:
                    dropped[problem] += 1
                    continue
                rows.append({"id": ex.id, "question": ex.question, "answer": ex.answer, "candidates": parsed.texts,
                             "candidate_answers": parsed.answers, "correct": correct, "argument": parsed.argument,
                             "argued": argued, "argument_correct": argued == correct})
            if not rows:
                raise DataError(f"candidates ({task}/{split}): no usable candidates ({dict(dropped)})")
            write_jsonl(f"{OUT}/{split}.jsonl", rows)
            metrics.update({f"{split}.n_in": len(examples), f"{split}.kept": len(rows),
                            f"{split}.argument_correct_rate": round(sum(r["argument_correct"] for r in rows) / len(rows), 4),
                            **{f"{split}.dropped.{k}": v for k, v in sorted(dropped.items())},
                            **usage.metrics(f"{split}.usage")})
        write_json("metrics/candidates.json", metrics)
        tracking.log_metrics(metrics)
    print("candidates: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
