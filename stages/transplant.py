"""Stage transplant@transplant-<task>, and its controls transplant@transplant_masked-<task> (every candidate identifier
in the argument replaced by "_") and transplant@no_transplant-<task> (the same prompts, pass 2 alone), one dvc.yaml
matrix: train the verdict (methods/transplant.py)
on data/candidates/<task>, then evaluate it on the whole test split. Writes the adapter (models/<variant>/<task>), the
loss per step (plots/train/<variant>/<task>.csv), the curves on train and test items every `eval_every` steps
(..._curves.csv: accuracy, the argument's own correctness rate, how often the verdict follows the argument), and the
test predictions (eval/<variant>/<task>) that compare pairs."""
from dataclasses import asdict, replace
from typing import Literal

from cotlab import tracking
from cotlab.distributed import is_main_process
from cotlab.schema import read_jsonl, write_csv, write_json, write_jsonl
from cotlab.methods import transplant
from cotlab.models import load_for_training, resolve_device, save_adapter
from cotlab.stage import base_dir, candidates_dir, mlflow_params, model_dir, stage_main

VARIANTS = {"transplant": {"masked": False, "transplant": True},
            "transplant_masked": {"masked": True, "transplant": True},
            "no_transplant": {"masked": False, "transplant": False}}


def progress(row: dict) -> None:
    print(f"step {row['step']}: " + ", ".join(
        f"{split} accuracy {row[f'{split}_accuracy']:.3f} (argument right {row[f'{split}_argument_correct_rate']:.3f}, "
        f"followed {row[f'{split}_follows_argument_rate']:.3f})" for split in ("train", "test")), flush=True)


@stage_main("transplant", trains=True)
def main(params, task, variant: Literal["transplant", "transplant_masked", "no_transplant"] = "transplant"):
    config = replace(params.section("transplant", transplant.TransplantConfig), **VARIANTS[variant])
    batch_size = params.evaluate.batch_size or params.sizes.eval_batch_size
    with tracking.stage_run(f"transplant@{variant}-{task}", mlflow_params(params), method=variant, task=task):
        model, tokenizer, _ = load_for_training(base_dir("transplant"), resolve_device(params.model.device), "none",
                                                asdict(config.lora), None)
        items = {split: [transplant.build_item(tokenizer, row, config.masked)
                         for row in read_jsonl(f"{candidates_dir(task)}/{split}.jsonl")] for split in ("train", "test")}
        curve_items = transplant.curve_sample(items, config.n_curve, params.seed)
        metrics, curve, curves = transplant.train(model, tokenizer, items["train"], curve_items, config, params.seed,
                                                  batch_size, on_point=progress)
        if not is_main_process():  # under accelerate every process trains; the main one evaluates and writes
            return
        predictions = transplant.predict(model, tokenizer, items["test"], config, batch_size)
        final = transplant.final_metrics(predictions)
        save_adapter(model, tokenizer, model_dir(variant, task), base_dir("transplant"), variant, "transplant", "none",
                     {**asdict(config), "seed": params.seed, "task": task},
                     extra={"transplant": asdict(config), "task": task})
        write_csv(f"plots/train/{variant}/{task}.csv", curve)
        write_csv(f"plots/train/{variant}/{task}_curves.csv", curves)
        write_json(f"metrics/train/{variant}/{task}.json", metrics)
        write_jsonl(f"eval/{variant}/{task}/predictions.jsonl", predictions)
        write_json(f"metrics/eval/{variant}/{task}.json", final)
        for row in curve:
            tracking.log_metrics(row, step=row["step"])
        for row in curves:
            tracking.log_metrics({f"curve.{k}": v for k, v in row.items() if k != "step"}, step=row["step"])
        tracking.log_metrics({**metrics, **{f"eval.{k}": v for k, v in final.items()}})
    print(f"{variant}@{task}: loss {metrics['loss_first_quarter']:.3f} -> {metrics['loss_last_quarter']:.3f} "
          f"(first/last quarter of {metrics['steps']} steps); test accuracy {final['accuracy']:.3f} "
          f"[{final['accuracy_ci_low']:.3f}, {final['accuracy_ci_high']:.3f}] n={final['n']}, the argument's own "
          f"{final['argument_correct_rate']:.3f}, follows it {final['follows_argument_rate']:.3f}")


if __name__ == "__main__":
    main()
