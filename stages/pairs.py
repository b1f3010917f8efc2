"""Stage pairs@<task>: DPO preference pairs from the filtered teacher data and the student's drafts
(prompt = question + "Student draft: " + draft; chosen = the teacher's reasoning and answer; rejected = the same
reasoning concluding with the draft's answer when wrong, else with a flipped answer); test.jsonl: the same on the test
questions with their test drafts and the dataset's own reasoning as chosen (cotlab.data.pairs.heldout_examples), for
DPO's held-out preference accuracy."""
from cotlab import tracking
from cotlab.data.pairs import build_pairs
from cotlab.schema import read_examples, read_jsonl, write_json, write_jsonl
from cotlab.models import load_tokenizer
from cotlab.data.pairs import heldout_examples, pair_examples
from cotlab.stage import BASE_MODEL, data_dir, drafts_dir, filtered_dir, mlflow_params, pairs_dir, stage_main


@stage_main("pairs")
def main(params, task):
    examples = read_examples(f"{filtered_dir(task)}/train.jsonl")
    examples = pair_examples(examples, params.sizes.n_pairs, params.seed)  # the schedule's epochs stay whole
    with tracking.stage_run(f"pairs@{task}", mlflow_params(params), task=task):
        tokenizer = load_tokenizer(BASE_MODEL)
        pairs, metrics = build_pairs(examples, tokenizer, params.seed)
        write_jsonl(f"{pairs_dir(task)}/train.jsonl", pairs)
        test_drafts = {row["id"]: row.get("draft", "") for row in read_jsonl(f"{drafts_dir(task)}/test.jsonl")}
        test, dropped = heldout_examples(read_examples(f"{data_dir(task)}/test.jsonl"), test_drafts)
        test_pairs, test_metrics = build_pairs(test, tokenizer, params.seed) if test else ([], {"n_pairs": 0})
        write_jsonl(f"{pairs_dir(task)}/test.jsonl", test_pairs)
        metrics.update({f"test.{k}": v for k, v in {**test_metrics, **dropped}.items()})
        write_json(f"metrics/pairs/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"pairs@{task}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
