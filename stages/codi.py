"""Stage codi@<task>: CODI (continuous thoughts by self-distillation) from CODI's base (models/base_codi) on CODI's data
(data/codi/<task>: the dataset's own reasoning is the teacher's CoT), a checkpoint under models/codi/<task> holding
the adapter, the projection and the added <bot>/<eot> tokens, and the loss parts per logging step."""
from dataclasses import asdict

from cotlab import tracking
from cotlab.distributed import is_main_process
from cotlab.schema import read_examples, write_csv, write_json
from cotlab.methods import codi
from cotlab.models import load_for_training, resolve_device
from cotlab.stage import base_dir, codi_data_dir, mlflow_params, model_dir, stage_main


@stage_main("codi", trains=True)
def main(params, task):
    config = params.resolve(params.section("codi", codi.CODIConfig))
    examples = read_examples(f"{codi_data_dir(task)}/train.jsonl")
    with tracking.stage_run(f"codi@{task}", mlflow_params(params), method="codi", task=task):
        model, tokenizer, _ = load_for_training(base_dir("codi"), resolve_device(params.model.device), "none",
                                                asdict(config.lora), None)
        n_base_vocab = len(tokenizer)
        token_ids = codi.add_codi_tokens(model, tokenizer)
        model_with_thoughts = codi.CODI(model, config).to(next(model.parameters()).device)
        metrics, curve = codi.train(model_with_thoughts, tokenizer, examples, config, token_ids,
                                    seed=params.seed)
        if not is_main_process():  # under accelerate every process trains; the main one writes
            return
        codi.save(model_with_thoughts, tokenizer, model_dir("codi", task), base_dir("codi"),
                  {**asdict(config), "seed": params.seed, "task": task}, n_base_vocab, extra={"task": task})
        write_csv(f"plots/train/codi/{task}.csv", curve)
        tracking.log_curve(curve)
        write_json(f"metrics/train/codi/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"codi@{task}: loss {metrics['train_loss']:.4f} over {metrics['train_steps']} steps; last "
          + ", ".join(f"{k} {curve[-1][k]:.4f}" for k in codi.LOGGED if curve and curve[-1].get(k) is not None))


if __name__ == "__main__":
    main()
