"""Stage dpo@<task> (Phase C): DPO from the Phase B adapter on data/pairs/<task>, with the beta schedule and the
calibrated and robust variants of params `dpo`; heldout.* metrics: preference accuracy on the test pairs."""
from cotlab import tracking
from cotlab.distributed import is_main_process
from cotlab.schema import read_jsonl, write_csv, write_json
from cotlab.methods.dpo import train_checkpoint
from cotlab.stage import BASE_MODEL, mlflow_params, model_dir, pairs_dir, stage_main


@stage_main("dpo", trains=True)
def main(params, task):
    pairs = read_jsonl(f"{pairs_dir(task)}/train.jsonl")
    heldout = read_jsonl(f"{pairs_dir(task)}/test.jsonl")
    with tracking.stage_run(f"dpo@{task}", mlflow_params(params), method="dpo", task=task):
        metrics, curve = train_checkpoint(params, task, BASE_MODEL, model_dir("cot_distill", task), pairs,
                                   model_dir("dpo", task), heldout_pairs=heldout)
        if not is_main_process():  # under accelerate every process trains; the main one writes
            return
        write_csv(f"plots/train/dpo/{task}.csv", curve)
        tracking.log_curve(curve)
        write_json(f"metrics/train/dpo/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"dpo@{task}: loss {metrics['train_loss']:.4f} over {metrics['train_steps']} steps, "
          f"final reward accuracy {metrics['final_reward_accuracy']}, held-out preference accuracy "
          f"{metrics.get('heldout.preference_accuracy')} on {metrics.get('heldout.n_pairs', 0)} test pairs")


if __name__ == "__main__":
    main()
