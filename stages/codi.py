"""Stage codi@<task>: CODI (continuous thoughts by self-distillation) from the base model on CODI's data
(data/codi/<task>: the dataset's own reasoning is the teacher's CoT), a checkpoint under models/codi/<task> holding
the adapter, the projection and the added <bot>/<eot> tokens, and the loss parts per logging step."""
from dataclasses import asdict

from cotlab import tracking
from cotlab.schema import read_examples, write_json
from cotlab.methods import codi
from cotlab.methods.sft import write_curve
from cotlab.models import load_for_training, resolve_device
from cotlab.stage import BASE_MODEL, codi_data_dir, mlflow_params, model_dir, stage_main


def run_config(params) -> codi.CODIRunConfig:
    cfg = params.codi
    model_fields = {k: getattr(cfg, k) for k in codi.CODIConfig.__dataclass_fields__}
    return codi.CODIRunConfig(
        codi=codi.CODIConfig(**model_fields), lr=cfg.lr, epochs=cfg.epochs or params.sizes.epochs,
        batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, lr_scheduler=cfg.lr_scheduler,
        logging_steps=cfg.logging_steps, bf16=cfg.bf16, seed=params.seed, report_to=["mlflow"])


@stage_main("codi")
def main(params, task):
    config = run_config(params)
    examples = read_examples(f"{codi_data_dir(task)}/train.jsonl")
    with tracking.stage_run(f"codi@{task}", mlflow_params(params), method="codi", task=task):
        model, tokenizer, _ = load_for_training(BASE_MODEL, resolve_device(params.model.device), "none",
                                                asdict(params.codi.lora), None)
        n_base_vocab = len(tokenizer)
        token_ids = codi.add_codi_tokens(model, tokenizer)
        model_with_thoughts = codi.CODI(model, config.codi).to(next(model.parameters()).device)
        metrics, curve = codi.train(model_with_thoughts, tokenizer, examples, config, token_ids)
        codi.save(model_with_thoughts, tokenizer, model_dir("codi", task), BASE_MODEL,
                  {**asdict(config), "task": task}, n_base_vocab, extra={"task": task})
        write_curve(curve, f"plots/train/codi/{task}.csv")
        write_json(f"metrics/train/codi/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"codi@{task}: loss {metrics['train_loss']:.4f} over {metrics['train_steps']} steps; last "
          + ", ".join(f"{k} {curve[-1][k]:.4f}" for k in codi.LOGGED if curve and curve[-1].get(k) is not None))


if __name__ == "__main__":
    main()
