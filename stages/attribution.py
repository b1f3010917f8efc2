"""Stage attribution@<task>: how much of the answer rests on the student's draft, before DPO (Phase B) and after
(Phase C): integrated gradients (captum) on the input embeddings, the share of attribution mass on draft tokens vs
question tokens per test question (and per token, which does not reward long drafts), means with 95% CIs, the
median completeness error of IG, and the write-up's criterion (>= 20% of the mass after DPO)."""
import random

from cotlab import tracking
from cotlab.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.attribution import AttributionConfig, attribution_metrics, draft_attribution, summarize_attribution
from cotlab.models import load_checkpoint
from cotlab.progress import progress
from cotlab.selfimprove.drafts import drafts_for
from cotlab.stage import data_dir, drafts_dir, mlflow_params, model_dir, stage_main


@stage_main("attribution")
def main(params, task):
    cfg = params.section("attribution", AttributionConfig)
    test = read_examples(f"{data_dir(task)}/test.jsonl")
    drafts = dict(zip((ex.id for ex in test), drafts_for(test, f"{drafts_dir(task)}/test.jsonl")))
    sample = random.Random(f"{params.seed}-attribution").sample(test, min(params.sizes.n_attribution, len(test)))
    summaries, rows = [], []
    with tracking.stage_run(f"attribution@{task}", mlflow_params(params), task=task):
        for method in ("cot_distill", "dpo"):  # before DPO (Phase B), after it (Phase C)
            # float32 whatever the base's dtype: integrated gradients in bf16 miss IG's completeness check by far more
            model, tokenizer, _ = load_checkpoint(model_dir(method, task), params.model.device, dtype="float32")
            results = [draft_attribution(model, tokenizer, ex, drafts[ex.id], n_steps=cfg.n_steps,
                                         internal_batch_size=cfg.internal_batch_size)
                       for ex in progress(sample, desc=f"attribution {method}", unit="question")]
            rows += [{"id": ex.id, "model": method, **vars(a)} for ex, a in zip(sample, results)]
            summaries.append(summarize_attribution(results))
        criterion = cfg.criterion
        metrics = attribution_metrics(*summaries, criterion)
        write_jsonl(f"attribution/{task}/scores.jsonl", rows)
        write_json(f"metrics/attribution/{task}.json", metrics)
        tracking.log_metrics({f"{w}.{k}": v for w, m in metrics.items() if isinstance(m, dict) for k, v in m.items()})
    before, after = metrics["before_dpo"], metrics["after_dpo"]
    print(f"attribution@{task}: draft share {before['draft_share']:.3f} before DPO, {after['draft_share']:.3f} after "
          f"(per token {before['draft_share_per_token']:.3f} -> {after['draft_share_per_token']:.3f}); "
          f"criterion >= {criterion}: {metrics['criterion_met']}; median IG relative error "
          f"{before['median_relative_delta']:.2f} / {after['median_relative_delta']:.2f}")


if __name__ == "__main__":
    main()
