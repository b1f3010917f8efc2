"""Stage teacher@<task>: the teacher's structured reasoning for every train example, given the student's draft.

Answers come from the response cache when they were asked before; only new requests reach the backend.
With teacher.dry_run nothing is sent: requests.jsonl lists what would be, with token and cost estimates.
"""
from cotlab import tracking
from cotlab.schema import read_examples, read_jsonl, write_json, write_jsonl
from cotlab.stage import data_dir, drafts_dir, mlflow_params, stage_main, teacher_dir
from cotlab.teacher import Request, Teacher, TeacherConfig, dry_run_rows, oracle_teacher, teacher_messages


@stage_main("teacher")
def main(params, task):
    cfg = params.section("teacher", TeacherConfig)
    train = read_examples(f"{data_dir(task)}/train.jsonl")
    drafts = {row["id"]: row.get("draft", "") for row in read_jsonl(f"{drafts_dir(task)}/train.jsonl")}
    requests = [Request(ex.id, teacher_messages(ex, drafts.get(ex.id, "")), "reasoning", ex,
                        {"draft": drafts.get(ex.id, "")}) for ex in train]
    teacher = Teacher(cfg, oracle=lambda r: oracle_teacher(r.example, r.context["draft"]))
    with tracking.stage_run(f"teacher@{task}", mlflow_params(params), task=task):
        responses, usage = teacher.run(requests)
        rows = [{"id": r.id, "status": r.status, "reason": r.reason, "cached": r.cached, "text": r.text}
                for r in responses]
        write_jsonl(f"{teacher_dir(task)}/train.jsonl", rows)
        write_jsonl(f"{teacher_dir(task)}/requests.jsonl",
                    dry_run_rows(requests, responses, teacher.model_name) if cfg.dry_run else [])
        metrics = usage.metrics()
        write_json(f"metrics/teacher/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"teacher@{task} ({cfg.backend}): " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
