"""Stage self_guided@<round>: one self-guided round on every task of dpo.tasks. The round's starting model (dpo or
an earlier round) drafts anew for the train and test questions, pairs are rebuilt from those drafts and the
teacher's reasoning, DPO trains again from that model, and the new model is evaluated with the new test drafts."""
from cotlab import tracking
from cotlab.config import ConfigError
from cotlab.methods.dpo import DPOConfig
from cotlab.schema import read_examples, write_csv, write_json, write_jsonl
from cotlab.selfimprove.rounds import run_round
from cotlab.stage import BASE_MODEL, data_dir, filtered_dir, max_new_tokens, mlflow_params, model_dir, stage_main


@stage_main("self_guided")
def main(params, name):
    cfg = params.section("dpo", DPOConfig)
    if name not in cfg.rounds:
        raise ConfigError(f"dpo.rounds: no round named {name!r} (defined: {sorted(cfg.rounds)})")
    start = cfg.rounds[name].start
    summary = {}
    with tracking.stage_run(f"self_guided@{name}", mlflow_params(params), method=name):
        for task in cfg.tasks:
            with tracking.child_run(task, task=task):  # a nested run per task: each trains its own model
                out = run_round(params, task, BASE_MODEL, model_dir(start, task), model_dir(name, task),
                                read_examples(f"{filtered_dir(task)}/train.jsonl"),
                                read_examples(f"{data_dir(task)}/test.jsonl"), max_new_tokens(params, "cot"))
                for part in ("drafts_train", "drafts_test", "pairs"):
                    write_jsonl(f"data/rounds/{name}/{task}/{part}.jsonl", out[part])
                write_csv(f"plots/train/{name}/{task}.csv", out["curve"])
                tracking.log_curve(out["curve"])
                write_jsonl(f"eval/{name}/{task}/predictions.jsonl", out["predictions"])
                summary[task] = result = {"start": start, **out["summary"]}
                tracking.log_metrics({"accuracy": result["eval"]["accuracy"],
                                      "train_loss": result["train"]["train_loss"],
                                      "drafts_parse_rate": result["drafts_train"]["parse_rate"]})
            print(f"self_guided@{name} on {task}: drafts parse rate {result['drafts_train']['parse_rate']}, "
                  f"{result['pairs']['n_pairs']} pairs, accuracy {result['eval']['accuracy']:.3f}")
    write_json(f"metrics/rounds/{name}.json", summary)


if __name__ == "__main__":
    main()
