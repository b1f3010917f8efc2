"""Stage eval_base@<task> / evaluate@<method>-<task> / eval_dpo@<task>: predictions JSONL and metrics for one model
on one task.

The base model is evaluated zero-shot and few-shot; a trained checkpoint with the template in its manifest, and
with the student's test drafts in the prompt when it was trained on them (Phase B, C). Phase C is also evaluated
under the draft ablations (no draft, another question's draft, no reasoning), on the same questions.
"""
from cotlab import tracking
from cotlab.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.generate import load_generator
from cotlab.evaluation.run import evaluate, pick_shots
from cotlab.selfimprove.ablations import ABLATIONS, ablation_inputs
from cotlab.selfimprove.drafts import drafts_for
from cotlab.stage import data_dir, drafts_dir, max_new_tokens, mlflow_params, model_dir, stage_main


@stage_main("evaluate")
def main(params, method, task):
    test = read_examples(f"{data_dir(task)}/test.jsonl")
    batch_size = params.evaluate.batch_size or params.sizes.eval_batch_size
    model, tokenizer, manifest = load_generator(model_dir(method, task), params.model.device, params.generation)
    template = "direct" if method == "base" else manifest["prompt"]["template"]
    # name -> (few-shot exemplars, drafts shown, answer prefill)
    if method == "base":
        train = read_examples(f"{data_dir(task)}/train.jsonl")
        runs = {"base_zeroshot": ([], None, ""),
                "base_fewshot": (pick_shots(train, params.evaluate.few_shot, params.seed), None, "")}
    elif manifest["prompt"].get("with_draft"):
        drafts = drafts_for(test, f"{drafts_dir(task)}/test.jsonl")
        variants = ("full", *ABLATIONS) if method == "dpo" else ("full",)
        runs = {method if v == "full" else f"{method}_{v}": ([], *ablation_inputs(v, drafts, params.seed))
                for v in variants}
    else:
        runs = {method: ([], None, "")}
    with tracking.stage_run(f"evaluate@{method}-{task}", mlflow_params(params), method=method, task=task):
        for name, (shots, drafts, prefill) in runs.items():
            n_new = max_new_tokens(params, "direct" if prefill else template)
            forced = max_new_tokens(params, "direct") if params.evaluate.force_answer else 0  # budget forcing (s1)
            predictions, metrics = evaluate(model, tokenizer, test, template, n_new, batch_size, shots, drafts,
                                            prefill, params.evaluate.stop_at_answer, desc=name,
                                            force_answer_tokens=forced)
            write_jsonl(f"eval/{name}/{task}/predictions.jsonl", predictions)
            write_json(f"metrics/eval/{name}/{task}.json", metrics)
            tracking.log_metrics({f"{name}.{k}": v for k, v in metrics.items()})
            print(f"{name} on {task}: accuracy {metrics['accuracy']:.3f} "
                  f"[{metrics['accuracy_ci_low']:.3f}, {metrics['accuracy_ci_high']:.3f}] n={metrics['n']}")


if __name__ == "__main__":
    main()
