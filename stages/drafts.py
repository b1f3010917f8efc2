"""Stage drafts@<task>: the student (the base model) drafts an answer and its questions for every train example."""
import time

from cotlab import tracking
from cotlab.data.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.generate import generate
from cotlab.formats import draft_records
from cotlab.models import load_checkpoint
from cotlab.prompts import draft_messages, render_messages
from cotlab.stage import BASE_MODEL, data_dir, drafts_dir, mlflow_params, stage_main


@stage_main("drafts")
def main(params, task):
    train = read_examples(f"{data_dir(task)}/train.jsonl")
    model, tokenizer, _ = load_checkpoint(BASE_MODEL, params.model.device)
    with tracking.stage_run(f"drafts@{task}", mlflow_params(params), task=task):
        start = time.perf_counter()
        prompts = [render_messages(tokenizer, draft_messages(ex)) for ex in train]
        generations = generate(model, tokenizer, prompts, params.drafts.max_new_tokens,
                               params.drafts.batch_size or params.sizes.eval_batch_size)
        rows, metrics = draft_records(train, generations)
        metrics["runtime_s"] = round(time.perf_counter() - start, 2)
        write_jsonl(f"{drafts_dir(task)}/train.jsonl", rows)
        write_json(f"metrics/drafts/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"drafts@{task}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
