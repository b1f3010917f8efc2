"""Stage attribution@<task>: how much of the answer rests on the student's draft, before DPO (Phase B) and after
(Phase C): integrated gradients (captum) on the input embeddings, the share of attribution mass on draft tokens vs
question tokens per test question, its mean with a 95% CI, and the write-up's criterion (>= 20% after DPO)."""
import random

from cotlab import tracking
from cotlab.data.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.attribution import draft_attribution
from cotlab.models import load_checkpoint
from cotlab.selfimprove import drafts_for, mean_with_ci
from cotlab.stage import data_dir, drafts_dir, mlflow_params, model_dir, stage_main


@stage_main("attribution")
def main(params, task):
    test = read_examples(f"{data_dir(task)}/test.jsonl")
    drafts = dict(zip((ex.id for ex in test), drafts_for(test, f"{drafts_dir(task)}/test.jsonl")))
    sample = random.Random(f"{params.seed}-attribution").sample(test, min(params.sizes.n_attribution, len(test)))
    metrics, rows = {}, []
    with tracking.stage_run(f"attribution@{task}", mlflow_params(params), task=task):
        for when, method in (("before_dpo", "cot_distill"), ("after_dpo", "dpo")):
            model, tokenizer, _ = load_checkpoint(model_dir(method, task), params.model.device)
            shares = []
            for ex in sample:
                a = draft_attribution(model, tokenizer, ex, drafts[ex.id], n_steps=params.attribution.n_steps)
                shares.append(a.draft_share)
                rows.append({"id": ex.id, "model": method, **vars(a)})
            summary = mean_with_ci(shares)
            metrics[when] = {"draft_share": summary["mean"], "draft_share_ci_low": summary["ci_low"],
                             "draft_share_ci_high": summary["ci_high"], "n": summary["n"]}
        criterion = params.attribution.criterion
        metrics["criterion"] = criterion
        metrics["criterion_met"] = metrics["after_dpo"]["draft_share"] >= criterion
        metrics["change"] = metrics["after_dpo"]["draft_share"] - metrics["before_dpo"]["draft_share"]
        write_jsonl(f"attribution/{task}/scores.jsonl", rows)
        write_json(f"metrics/attribution/{task}.json", metrics)
        tracking.log_metrics({f"{w}.{k}": v for w, m in metrics.items() if isinstance(m, dict) for k, v in m.items()})
    print(f"attribution@{task}: draft share {metrics['before_dpo']['draft_share']:.3f} before DPO, "
          f"{metrics['after_dpo']['draft_share']:.3f} after; criterion >= {criterion}: {metrics['criterion_met']}")


if __name__ == "__main__":
    main()
