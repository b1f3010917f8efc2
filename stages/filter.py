"""Stage filter@<task>: teacher outputs -> training data (format, agreement, dedupe, length), class-rebalanced."""
from cotlab import tracking
from cotlab.data.filtering import CLASS_TYPES, FilterConfig, class_report, filter_examples, rebalance
from cotlab.schema import read_examples, read_jsonl, write_json, write_jsonl
from cotlab.stage import data_dir, drafts_dir, filtered_dir, mlflow_params, stage_main, teacher_dir


@stage_main("filter")
def main(params, task):
    cfg = params.section("filter", FilterConfig)
    where = f"filter@{task}"
    train = read_examples(f"{data_dir(task)}/train.jsonl")
    drafts = {row["id"]: row for row in read_jsonl(f"{drafts_dir(task)}/train.jsonl")}
    replies = {row["id"]: row for row in read_jsonl(f"{teacher_dir(task)}/train.jsonl")}
    with tracking.stage_run(where, mlflow_params(params), task=task):
        kept, metrics = filter_examples(train, drafts, replies, cfg, where)
        metrics.update(class_report(train, kept, where))
        if train[0].answer_type in CLASS_TYPES:
            kept, balance = rebalance(kept, cfg.rebalance, params.seed, where)
            metrics.update(balance)
        else:
            metrics["n_out"] = len(kept)  # no classes to balance for free-form answers
        write_jsonl(f"{filtered_dir(task)}/train.jsonl", kept)
        write_json(f"metrics/filter/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"{where}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
