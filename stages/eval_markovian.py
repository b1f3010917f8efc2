"""Stage eval_markovian@<task>: the two-stage protocol on the test split of data/markovian/<task>, for each trained
actor and for the untrained base through the same protocol:
  1. a greedy CoT of `cot_length` tokens from the question;
  2. the answer decoded greedily after the CoT and " Answer:", from the CoT alone (markovian, markovian_base) or with
     the question (non_markovian, non_markovian_base: the ablation's protocol).
The answer is decoded by the model that scored the reward in training (the frozen base unless actor_reward_weight >
0), as the manifest records. Every prediction keeps both extraction variants and the gold answer's log-prob.
Scoring: `correct` / `accuracy` is the reference's own (the greedy answer); beside it, on tasks whose questions offer
candidates (lockers' codes), `answer_choice_correct` / `accuracy_candidate_choice`: the gold's summed log-prob is the
highest of the question's codes, so a CoT cut mid-number does not decide it. What the CoT carries: `cot_contains_answer`
(the gold code), `cot_singles_out` (the gold and no other candidate), `cot_multiple_candidates` (>= 2 candidates)."""
from cotlab import tracking
from cotlab.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.stats import paired_logprob_gain, two_stage_metrics, wilson_interval
from cotlab.methods import markovian
from cotlab.models import load_checkpoint
from cotlab.stage import markovian_data_dir, mlflow_params, model_dir, stage_main

VARIANTS = ("markovian", "non_markovian")


def metrics_of(rows: list[dict]) -> dict:
    """two_stage_metrics, plus what the CoT singles out and the candidate choice's accuracy, with Wilson intervals,
    and the gold's log-prob summed over its tokens."""
    metrics = two_stage_metrics(rows)
    for key, share in markovian.candidate_summary(rows).items():
        low, high = wilson_interval(round(share * len(rows)), len(rows))
        metrics.update({key: share, f"{key}_ci_low": low, f"{key}_ci_high": high})
    metrics["cot_n_candidates"] = sum(r["cot_n_candidates"] for r in rows) / len(rows)
    metrics["answer_logprob_gold"] = sum(r["answer_logprob_gold"] for r in rows) / len(rows)
    return metrics


def record(name: str, task: str, rows: list[dict], metrics: dict) -> None:
    write_jsonl(f"eval/{name}/{task}/predictions.jsonl", rows)
    write_json(f"metrics/eval/{name}/{task}.json", metrics)
    tracking.log_metrics({f"{name}.{k}": v for k, v in metrics.items()})
    print(f"{name} on {task}: accuracy {metrics['accuracy']:.3f} [{metrics['accuracy_ci_low']:.3f}, "
          f"{metrics['accuracy_ci_high']:.3f}] n={metrics['n']}, gold answer log-prob {metrics['answer_logprob']:.3f}; "
          f"CoT carries {metrics['cot_contains_answer']:.2f}, singles out {metrics['cot_singles_out']:.2f}, "
          f"names >= 2 candidates {metrics['cot_multiple_candidates']:.2f}")


@stage_main("eval_markovian")
def main(params, task):
    test = read_examples(f"{markovian_data_dir(task)}/test.jsonl")
    batch_size = params.evaluate.batch_size or params.sizes.eval_batch_size
    with tracking.stage_run(f"eval_markovian@{task}", mlflow_params(params), method="markovian", task=task):
        base_cots: dict[str, list[int]] = {}  # the base's greedy CoTs are the same under both protocols: made once
        for variant in VARIANTS:
            # the PeftModel itself: the base protocol switches its adapter off
            model, tokenizer, manifest = load_checkpoint(model_dir(variant, task), params.model.device,
                                                         merge_adapter=False)
            cfg = manifest["markovian"]
            protocol = dict(tokenizer=tokenizer, examples=test, cot_length=cfg["cot_length"],
                            markovian=cfg["markovian"], answer_tokens=cfg["answer_tokens"], batch_size=batch_size)
            trained = markovian.two_stage(model, cfg["actor_reward_weight"] > 0, **protocol)
            base = markovian.two_stage(model, False, cot_adapter=False, cot_cache=base_cots,  # adapters off: the base
                                       **protocol)
            trained_metrics = {**metrics_of(trained), **paired_logprob_gain(trained, base)}
            record(variant, task, trained, trained_metrics)
            record(f"{variant}_base", task, base, metrics_of(base))
            del model


if __name__ == "__main__":
    main()
