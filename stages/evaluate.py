"""Stage eval_base@<task> / evaluate@<method>-<task>: predictions JSONL and metrics for one model on one task.

The base model is evaluated zero-shot and few-shot; a trained checkpoint with the template in its manifest.
"""
from cotlab import tracking
from cotlab.data.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.run import evaluate, pick_shots
from cotlab.models import load_checkpoint
from cotlab.stage import data_dir, max_new_tokens, mlflow_params, model_dir, stage_main


@stage_main("evaluate")
def main(params, method, task):
    test = read_examples(f"{data_dir(task)}/test.jsonl")
    batch_size = params.evaluate.batch_size or params.sizes.eval_batch_size
    model, tokenizer, manifest = load_checkpoint(model_dir(method, task), params.model.device)
    if method == "base":
        train = read_examples(f"{data_dir(task)}/train.jsonl")
        runs = {"base_zeroshot": [], "base_fewshot": pick_shots(train, params.evaluate.few_shot, params.seed)}
        template = "direct"
    else:
        runs = {method: []}
        template = manifest["prompt"]["template"]
    with tracking.stage_run(f"evaluate@{method}-{task}", mlflow_params(params), method=method, task=task):
        for name, shots in runs.items():
            predictions, metrics = evaluate(model, tokenizer, test, template, max_new_tokens(params, template),
                                            batch_size, shots)
            write_jsonl(f"eval/{name}/{task}/predictions.jsonl", predictions)
            write_json(f"metrics/eval/{name}/{task}.json", metrics)
            tracking.log_metrics({f"{name}.{k}": v for k, v in metrics.items()})
            print(f"{name} on {task}: accuracy {metrics['accuracy']:.3f} "
                  f"[{metrics['accuracy_ci_low']:.3f}, {metrics['accuracy_ci_high']:.3f}] n={metrics['n']}")


if __name__ == "__main__":
    main()
