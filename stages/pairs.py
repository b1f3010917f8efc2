"""Stage pairs@<task>: DPO preference pairs from the filtered teacher data and the student's drafts
(prompt = question + "Student draft: " + draft; chosen = the teacher's reasoning and answer; rejected = the draft
when wrong, else a flipped answer)."""
from cotlab import tracking
from cotlab.data.pairs import build_pairs
from cotlab.schema import read_examples, write_json, write_jsonl
from cotlab.models import load_tokenizer
from cotlab.data.pairs import pair_examples
from cotlab.stage import BASE_MODEL, filtered_dir, mlflow_params, pairs_dir, stage_main


@stage_main("pairs")
def main(params, task):
    examples = read_examples(f"{filtered_dir(task)}/train.jsonl")
    examples = pair_examples(examples, params.sizes.n_pairs, params.seed)  # the schedule's epochs stay whole
    with tracking.stage_run(f"pairs@{task}", mlflow_params(params), task=task):
        pairs, metrics = build_pairs(examples, load_tokenizer(BASE_MODEL), params.seed)
        write_jsonl(f"{pairs_dir(task)}/train.jsonl", pairs)
        write_json(f"metrics/pairs/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"pairs@{task}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
