"""Stage self_guided@<round>: one self-guided round on every task of dpo.tasks. The round's starting model (dpo or
an earlier round) drafts anew for the train and test questions, pairs are rebuilt from those drafts and the
teacher's reasoning, DPO trains again from that model, and the new model is evaluated with the new test drafts."""
from dataclasses import replace

from cotlab import tracking
from cotlab.config import ConfigError
from cotlab.data.pairs import build_pairs
from cotlab.data.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.run import evaluate
from cotlab.methods.sft import write_curve
from cotlab.models import load_checkpoint
from cotlab.selfimprove import pair_examples, student_drafts, train_dpo
from cotlab.stage import data_dir, filtered_dir, max_new_tokens, mlflow_params, model_dir, stage_main


def run_round(params, name: str, start: str, task: str) -> dict:
    batch_size = params.drafts.batch_size or params.sizes.eval_batch_size
    filtered = pair_examples(read_examples(f"{filtered_dir(task)}/train.jsonl"), params.sizes.n_pairs, params.seed)
    test = read_examples(f"{data_dir(task)}/test.jsonl")
    model, tokenizer, _ = load_checkpoint(model_dir(start, task), params.model.device)
    unique = list({ex.id: ex for ex in filtered}.values())  # upsampled rows share one draft
    train_rows, train_drafts = student_drafts(model, tokenizer, unique, params.drafts.max_new_tokens, batch_size,
                                              params.drafts.stop_after_questions)
    test_rows, test_drafts = student_drafts(model, tokenizer, test, params.drafts.max_new_tokens, batch_size,
                                            params.drafts.stop_after_questions)
    del model
    new_draft = {row["id"]: row["draft"] for row in train_rows}
    pairs, pair_metrics = build_pairs([replace(ex, metadata={**ex.metadata, "draft": new_draft[ex.id]})
                                       for ex in filtered], tokenizer, params.seed)
    write_jsonl(f"data/rounds/{name}/{task}/drafts_train.jsonl", train_rows)
    write_jsonl(f"data/rounds/{name}/{task}/drafts_test.jsonl", test_rows)
    write_jsonl(f"data/rounds/{name}/{task}/pairs.jsonl", pairs)

    train_metrics, curve = train_dpo(params, task, model_dir(start, task), pairs, model_dir(name, task))
    write_curve(curve, f"plots/train/{name}/{task}.csv")
    model, tokenizer, _ = load_checkpoint(model_dir(name, task), params.model.device)
    predictions, eval_metrics = evaluate(model, tokenizer, test, "cot", max_new_tokens(params, "cot"),
                                         params.evaluate.batch_size or params.sizes.eval_batch_size,
                                         drafts=[row["draft"] for row in test_rows],
                                         stop_at_answer=params.evaluate.stop_at_answer)
    write_jsonl(f"eval/{name}/{task}/predictions.jsonl", predictions)
    return {"start": start, "drafts_train": train_drafts, "drafts_test": test_drafts, "pairs": pair_metrics,
            "train": train_metrics, "eval": {k: v for k, v in eval_metrics.items() if not k.startswith("pred_share")}}


@stage_main("self_guided")
def main(params, name):
    if name not in params.dpo.rounds:
        raise ConfigError(f"dpo.rounds: no round named {name!r} (defined: {sorted(params.dpo.rounds)})")
    start = params.dpo.rounds[name].start
    summary = {}
    for task in params.dpo.tasks:  # one MLflow run per task: each trains its own model
        with tracking.stage_run(f"self_guided@{name}-{task}", mlflow_params(params), method=name, task=task):
            summary[task] = result = run_round(params, name, start, task)
            tracking.log_metrics({"accuracy": result["eval"]["accuracy"], "train_loss": result["train"]["train_loss"],
                                  "drafts_parse_rate": result["drafts_train"]["parse_rate"]})
        print(f"self_guided@{name} on {task}: drafts parse rate {result['drafts_train']['parse_rate']}, "
              f"{result['pairs']['n_pairs']} pairs, accuracy {result['eval']['accuracy']:.3f}")
    write_json(f"metrics/rounds/{name}.json", summary)


if __name__ == "__main__":
    main()
