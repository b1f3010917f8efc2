"""Stage drafts@<task>: the student (the base model) drafts an answer and its questions for every train and test
example. Train drafts go to the teacher and into Phase B/C prompts; test drafts into the evaluation prompts of the
draft-conditioned models and to the judge."""
import time

from cotlab import tracking
from cotlab.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.generate import load_generator
from cotlab.selfimprove.drafts import DraftsConfig, student_drafts
from cotlab.stage import BASE_MODEL, data_dir, drafts_dir, mlflow_params, stage_main


@stage_main("drafts")
def main(params, task):
    cfg = params.section("drafts", DraftsConfig)
    model, tokenizer, _ = load_generator(BASE_MODEL, params.model.device, params.generation)
    metrics = {}
    with tracking.stage_run(f"drafts@{task}", mlflow_params(params), task=task):
        for split in ("train", "test"):
            start = time.perf_counter()
            rows, metrics[split] = student_drafts(model, tokenizer, read_examples(f"{data_dir(task)}/{split}.jsonl"),
                                                  cfg.max_new_tokens,
                                                  cfg.batch_size or params.sizes.eval_batch_size,
                                                  cfg.stop_after_questions)
            metrics[split]["runtime_s"] = round(time.perf_counter() - start, 2)
            write_jsonl(f"{drafts_dir(task)}/{split}.jsonl", rows)
        write_json(f"metrics/drafts/{task}.json", metrics)
        tracking.log_metrics({f"{split}.{k}": v for split, m in metrics.items() for k, v in m.items()})
    print(f"drafts@{task}: " + "; ".join(f"{s}: parse_rate={m['parse_rate']}, accuracy={m['accuracy']}"
                                         for s, m in metrics.items()))


if __name__ == "__main__":
    main()
