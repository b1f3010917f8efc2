"""Stage data@<task> (and codi_data@<task>): train/test splits of one task in the example schema, and their sizes and
class shares. An optional second argument names the group folder: data/<group>/<task> (default: tasks)."""
from collections import Counter
from typing import Literal

from cotlab import tracking
from cotlab.schema import write_json, write_jsonl
from cotlab.data.sources import load_task
from cotlab.stage import data_dir, mlflow_params, stage_main


@stage_main("data")
def main(params, task, group: Literal["tasks", "codi", "markovian"] = "tasks"):
    size = params.split_sizes(task)
    out = data_dir(task) if group == "tasks" else f"data/{group}/{task}"
    metrics_path = f"metrics/data/{task}.json" if group == "tasks" else f"metrics/data/{group}/{task}.json"
    with tracking.stage_run(f"data@{task}", mlflow_params(params), task=task):
        splits = load_task(task, params.task_specs[task], size.n_train, size.n_test, params.seed)
        metrics = {}
        for split, examples in splits.items():
            write_jsonl(f"{out}/{split}.jsonl", examples)
            metrics[f"n_{split}"] = len(examples)
            counts = Counter(ex.answer for ex in examples)
            if examples[0].answer_type in ("yes_no", "choice"):
                for answer, count in sorted(counts.items()):
                    metrics[f"{split}_share.{answer}"] = round(count / len(examples), 4)
        write_json(metrics_path, metrics)
        tracking.log_metrics(metrics)
    print(f"data@{task}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
