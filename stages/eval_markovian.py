"""Stage eval_markovian@<task>: the two-stage protocol on the test split of data/markovian/<task>, for each trained
actor and for the untrained base through the same protocol:
  1. a greedy CoT of `cot_length` tokens from the question;
  2. the answer decoded greedily after the CoT and " Answer:", from the CoT alone (markovian, markovian_base) or with
     the question (non_markovian, non_markovian_base: the ablation's protocol).
The answer is decoded by the model that scored the reward in training (the frozen base unless actor_reward_weight >
0), as the manifest records. Every prediction keeps both extraction variants and the gold answer's log-prob."""
from scipy.stats import ttest_1samp, wilcoxon

from cotlab import tracking
from cotlab.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.stats import summarize, wilson_interval
from cotlab.methods import markovian
from cotlab.models import load_checkpoint
from cotlab.stage import markovian_data_dir, mlflow_params, model_dir, stage_main

VARIANTS = ("markovian", "non_markovian")


def metrics_of(rows: list[dict]) -> dict:
    metrics = summarize(rows)
    n = len(rows)
    for key in sorted({k[len("correct_"):] for r in rows for k in r if k.startswith("correct_")} - {"strict"}):
        k = sum(r[f"correct_{key}"] for r in rows)
        low, high = wilson_interval(k, n)
        metrics.update({f"accuracy_{key}": k / n, f"accuracy_{key}_ci_low": low, f"accuracy_{key}_ci_high": high})
    logprobs = [r["answer_logprob"] for r in rows]
    metrics["answer_logprob"] = sum(logprobs) / n
    interval = ttest_1samp(logprobs, 0.0).confidence_interval(0.95)  # t interval of the mean
    metrics["answer_logprob_ci_low"], metrics["answer_logprob_ci_high"] = float(interval.low), float(interval.high)
    metrics["cot_repetition_rate"] = sum(r["cot_repetition"] > 0.5 for r in rows) / n
    return metrics


def record(name: str, task: str, rows: list[dict], metrics: dict) -> None:
    write_jsonl(f"eval/{name}/{task}/predictions.jsonl", rows)
    write_json(f"metrics/eval/{name}/{task}.json", metrics)
    tracking.log_metrics({f"{name}.{k}": v for k, v in metrics.items()})
    print(f"{name} on {task}: accuracy {metrics['accuracy']:.3f} [{metrics['accuracy_ci_low']:.3f}, "
          f"{metrics['accuracy_ci_high']:.3f}] n={metrics['n']}, gold answer log-prob {metrics['answer_logprob']:.3f}")


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
            trained_metrics, base_metrics = metrics_of(trained), metrics_of(base)
            # The reward itself, paired per question: the gold answer's log-prob after the trained vs the base CoT.
            diffs = [t["answer_logprob"] - b["answer_logprob"] for t, b in zip(trained, base)]
            trained_metrics["answer_logprob_vs_base"] = sum(diffs) / len(diffs)
            interval = ttest_1samp(diffs, 0.0).confidence_interval(0.95)  # paired: t interval of the mean difference
            trained_metrics["answer_logprob_vs_base_ci_low"] = float(interval.low)
            trained_metrics["answer_logprob_vs_base_ci_high"] = float(interval.high)
            trained_metrics["answer_logprob_vs_base_wilcoxon_p"] = (
                float(wilcoxon(diffs).pvalue) if any(d != 0 for d in diffs) else 1.0)
            record(variant, task, trained, trained_metrics)
            record(f"{variant}_base", task, base, base_metrics)
            del model


if __name__ == "__main__":
    main()
