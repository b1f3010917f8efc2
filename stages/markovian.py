"""Stage markovian@markovian-<task> (and markovian@non_markovian-<task>: the ablation, whose reward prompt shows the
question; one dvc.yaml matrix): RL of the
actor (base + LoRA) on CoTs scored by how well they predict the gold answer (methods/markovian.py), on
data/markovian/<task>. Writes the adapter (models/<variant>/<task>), every step's monitors
(plots/train/<variant>/<task>.csv), the held-out evaluation curve (..._eval.csv) and a checkpoint every `save_every`
steps under .cotlab-cache/checkpoints/<variant>/<task> (outside DVC's outs: a killed run resumes there)."""
import random
import tempfile
from dataclasses import asdict, replace
from typing import Literal

from cotlab import tracking
from cotlab.distributed import is_main_process
from cotlab.schema import read_examples, write_csv, write_json
from cotlab.methods import markovian
from cotlab.models import load_for_training, resolve_device, save_adapter
from cotlab.stage import base_dir, checkpoint_dir, markovian_data_dir, mlflow_params, model_dir, stage_main

VARIANTS = {"markovian": True, "non_markovian": False}


def held_out(test, n: int, seed: int):
    """The questions evaluated during training: a seeded sample of the test split (never trained on)."""
    return random.Random(f"{seed}-markovian-eval").sample(test, min(n, len(test)))


@stage_main("markovian", trains=True)
def main(params, task, variant: Literal["markovian", "non_markovian"] = "markovian"):
    config = replace(params.section("markovian", markovian.MarkovianConfig), markovian=VARIANTS[variant])
    train = read_examples(f"{markovian_data_dir(task)}/train.jsonl")
    test = read_examples(f"{markovian_data_dir(task)}/test.jsonl")
    with tracking.stage_run(f"markovian@{variant}-{task}", mlflow_params(params), method=variant, task=task), \
            tempfile.TemporaryDirectory(prefix="cotlab-markovian-") as scratch:
        base = base_dir("markovian")
        model, tokenizer, base_manifest = load_for_training(base, resolve_device(params.model.device), "none",
                                                            asdict(config.lora), None)
        sampler = markovian.make_sampler(params.generation, model, tokenizer, base, scratch)
        metrics, curve, eval_curve = markovian.train(
            model, tokenizer, train, held_out(test, config.n_eval, params.seed), config,
            checkpoint_dir(variant, task), sampler, params.sizes.eval_batch_size, seed=params.seed,
            base_fingerprint=base_manifest["fingerprint"])
        if not is_main_process():  # under accelerate every process trains; the main one writes
            return
        save_adapter(model, tokenizer, model_dir(variant, task), base, variant, "markovian", "none",
                     {**asdict(config), "seed": params.seed, "task": task},
                     extra={"markovian": asdict(config), "task": task})
        write_csv(f"plots/train/{variant}/{task}.csv", curve)
        write_csv(f"plots/train/{variant}/{task}_eval.csv", eval_curve)
        write_json(f"metrics/train/{variant}/{task}.json", metrics)
        for row in curve:
            tracking.log_metrics(row, step=row["step"])
        for row in eval_curve:
            tracking.log_metrics({f"eval.{k}": v for k, v in row.items() if k != "step"}, step=row["step"])
        tracking.log_metrics(metrics)
    print(f"{variant}@{task}: answer log-prob {metrics['answer_logprob_first_quarter']:.3f} -> "
          f"{metrics['answer_logprob_last_quarter']:.3f} (first/last quarter of {metrics['steps']} steps; Spearman "
          f"{metrics['answer_logprob_trend_spearman']:.2f}, p={metrics['answer_logprob_trend_p']:.3g}); held-out "
          f"accuracy {metrics['eval_accuracy_first']:.3f} -> {metrics['eval_accuracy_last']:.3f}")


if __name__ == "__main__":
    main()
