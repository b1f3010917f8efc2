"""Stage codi_probe@<task>: what the continuous thoughts carry. For a seeded sample of test questions, the state each
thought is projected from, read through the LM head as its top-k tokens, next to the gold answer and the reasoning
the thoughts replace: reports/codi_probe/<task>/probe.md (readable) and probe.jsonl; and how often the thoughts'
top tokens name the reasoning's entities vs another question's (metrics/codi_probe/<task>.json)."""
import random
from pathlib import Path

from cotlab import tracking
from cotlab.schema import read_examples, write_json, write_jsonl
from cotlab.evaluation.probe import ProbeRecord, probe_markdown, probe_relevance
from cotlab.methods import codi
from cotlab.stage import codi_data_dir, mlflow_params, model_dir, stage_main


@stage_main("codi_probe")
def main(params, task):
    cfg = params.section("codi", codi.CODIConfig)
    test = read_examples(f"{codi_data_dir(task)}/test.jsonl")
    sample = random.Random(f"{params.seed}-codi-probe").sample(test, min(cfg.probe_questions, len(test)))
    with tracking.stage_run(f"codi_probe@{task}", mlflow_params(params), method="codi", task=task):
        model, tokenizer, manifest = codi.load(model_dir("codi", task), params.model.device)
        answers = codi.predict(model, tokenizer, sample, manifest["token_ids"], cfg.max_new_tokens, len(sample))
        records = [ProbeRecord(ex, answer.text, codi.probe(model, tokenizer, ex, manifest["token_ids"],
                                                           cfg.probe_top_k)) for ex, answer in zip(sample, answers)]
        report = probe_markdown(task, cfg.probe_top_k, model.codi_config.inf_latent_iterations, records)
        write_jsonl(f"reports/codi_probe/{task}/probe.jsonl", [r.row() for r in records])
        Path(f"reports/codi_probe/{task}/probe.md").write_text(report)
        metrics = {"n_questions": len(records), **probe_relevance(records)}
        write_json(f"metrics/codi_probe/{task}.json", metrics)
        tracking.log_metrics({k: v for k, v in metrics.items() if v is not None})
        tracking.log_text(report, "probe.md")
    print("\n".join(report.split("\n")[:40]))
    print(f"codi_probe@{task}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
