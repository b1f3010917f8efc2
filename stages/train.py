"""Stage <method>@<task> for method in {sft, cot_distill, cot_sft}: a LoRA adapter under models/<method>/<task>/.
sft and cot_distill (Phase A, B) train on the filtered teacher data (data/filtered/<task>: gold answers, teacher
reasoning, rebalance weights); cot_sft, the CoT-SFT baseline of CODI, on CODI's own data (data/codi/<task>, the
dataset's reasoning), from CODI's base model (models/base_codi)."""
from dataclasses import asdict
from typing import Literal

from cotlab import tracking
from cotlab.distributed import is_main_process
from cotlab.config import ConfigError
from cotlab.schema import read_examples, write_csv, write_json
from cotlab.methods import cot_distill, sft
from cotlab.models import load_for_training, resolve_device, save_adapter
from cotlab.prompts import template_for
from cotlab.stage import base_dir, codi_data_dir, filtered_dir, mlflow_params, model_dir, stage_main


@stage_main("train", trains=True)
def main(params, method: Literal["sft", "cot_distill", "cot_sft"], task):
    cfg = params.resolve(params.section(method, sft.TrainConfig))
    template = template_for(method)
    if method != "cot_distill" and cfg.init_from != "base":
        raise ConfigError(f"{method}.init_from: {cfg.init_from!r}; only cot_distill continues another adapter (base)")
    init_from = model_dir("sft", task) if method == "cot_distill" and cfg.init_from == "sft" else None
    run = {"max_length": params.sizes.max_length, "seed": params.seed}
    base = base_dir("codi" if method == "cot_sft" else None)  # cot_sft: CODI's baseline, on CODI's base
    examples = read_examples(f"{codi_data_dir(task) if method == 'cot_sft' else filtered_dir(task)}/train.jsonl")
    with tracking.stage_run(f"{method}@{task}", mlflow_params(params), method=method, task=task):
        model, tokenizer, _ = load_for_training(base, resolve_device(params.model.device), cfg.quantization,
                                                asdict(cfg.lora), init_from)
        if method == "sft":
            model, metrics, curve = sft.train(model, tokenizer, examples, cfg, template=template, **run)
        else:
            model, metrics, curve = cot_distill.train(model, tokenizer, examples, cfg, **run)
        if not is_main_process():  # under accelerate every process trains; the main one writes
            return
        save_adapter(model, tokenizer, model_dir(method, task), base, method, template, cfg.quantization,
                     params={**asdict(cfg), **run, "template": template, "task": task},
                     extra={"task": task, "init_from": init_from}, with_draft=cfg.with_draft)
        write_csv(f"plots/train/{method}/{task}.csv", curve)
        tracking.log_curve(curve)
        write_json(f"metrics/train/{method}/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"{method}@{task}: loss {metrics['train_loss']:.4f} over {metrics['train_steps']} steps")


if __name__ == "__main__":
    main()
