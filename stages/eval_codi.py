"""Stage eval_codi@<task>: CODI with latent inference, the CoT-SFT baseline and the few-shot base (with CoT
exemplars) on the same test questions of CODI's data (data/codi/<task>); predictions and metrics per model.

CODI: question + <bot>, `codi.inf_latent_iterations` continuous thoughts, <eot>, then greedy decoding of
"The answer is: X"; the answer is extracted by its type (a name, a number). The checkpoint's manifest rebuilds the
model (projection, added tokens, adapter), so evaluation cannot differ from what was trained."""
from cotlab import tracking
from cotlab.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.generate import load_generator
from cotlab.evaluation.run import evaluate, pick_shots, score
from cotlab.methods import codi
from cotlab.prompts import question_block
from cotlab.stage import base_dir, codi_data_dir, max_new_tokens, mlflow_params, model_dir, stage_main


def record(name: str, task: str, predictions: list[dict], metrics: dict) -> None:
    write_jsonl(f"eval/{name}/{task}/predictions.jsonl", predictions)
    write_json(f"metrics/eval/{name}/{task}.json", metrics)
    tracking.log_metrics({f"{name}.{k}": v for k, v in metrics.items()})
    print(f"{name} on {task}: accuracy {metrics['accuracy']:.3f} "
          f"[{metrics['accuracy_ci_low']:.3f}, {metrics['accuracy_ci_high']:.3f}] n={metrics['n']}, "
          f"{metrics['mean_new_tokens']:.1f} new tokens")


@stage_main("eval_codi")
def main(params, task):
    config = params.section("codi", codi.CODIConfig)
    test = read_examples(f"{codi_data_dir(task)}/test.jsonl")
    batch_size = params.evaluate.batch_size or params.sizes.eval_batch_size
    with tracking.stage_run(f"eval_codi@{task}", mlflow_params(params), method="codi", task=task):
        model, tokenizer, manifest = codi.load(model_dir("codi", task), params.model.device)
        generations = codi.predict(model, tokenizer, test, manifest["token_ids"], config.max_new_tokens,
                                   batch_size)
        shown = [f"{question_block(ex)}\n<bot>[{model.codi_config.inf_latent_iterations} thoughts]<eot>" for ex in test]
        predictions, metrics = score(test, shown, generations)
        metrics["mean_new_tokens"] = sum(g.n_new_tokens for g in generations) / max(len(generations), 1)
        record("codi", task, predictions, metrics)
        del model

        model, tokenizer, _ = load_generator(model_dir("cot_sft", task), params.model.device, params.generation)
        record("cot_sft", task, *evaluate(model, tokenizer, test, "cot", max_new_tokens(params, "cot"), batch_size,
                                          stop_at_answer=params.evaluate.stop_at_answer, desc="cot_sft"))
        del model

        model, tokenizer, _ = load_generator(base_dir("codi"), params.model.device, params.generation)  # CODI's base
        shots = pick_shots(read_examples(f"{codi_data_dir(task)}/train.jsonl"), params.evaluate.few_shot, params.seed)
        record("base_fewshot_cot", task, *evaluate(model, tokenizer, test, "cot", max_new_tokens(params, "cot"),
                                                   batch_size, shots, stop_at_answer=params.evaluate.stop_at_answer,
                                                   desc="base_fewshot_cot"))


if __name__ == "__main__":
    main()
