"""Stage compare: every evaluated model per task, paired against the reference (metrics, report, plot data)."""
from cotlab import tracking
from cotlab.schema import write_json
from cotlab.evaluation.compare import (TRANSPLANT_MODELS, CompareConfig, compare, compare_pairs, load_predictions, optional_models,
                                      verification, write_accuracy_plot, write_markdown)
from cotlab.stage import mlflow_params, stage_main


@stage_main("compare")
def main(params):
    cfg = params.section("compare", CompareConfig)
    with tracking.stage_run("compare", mlflow_params(params)):
        optional = optional_models(*(params.tasks_of(s) for s in ("codi", "markovian", "transplant")))
        table = load_predictions("eval", params.tasks, optional=optional)
        result = compare(table, cfg.reference, cfg.bootstrap_resamples, cfg.confidence, params.seed, cfg.ablations)
        pairs = compare_pairs(table, cfg.pairs, cfg.bootstrap_resamples, cfg.confidence, params.seed)
        verified = verification(table, TRANSPLANT_MODELS, cfg.bootstrap_resamples, cfg.confidence, params.seed)
        write_json("metrics/compare.json", {**result, "pairs": pairs, "transplant": verified})
        report = write_markdown("reports/compare.md", result, cfg.reference, pairs, verified)
        write_accuracy_plot(result, "plots/compare/accuracy.csv")
        tracking.log_metrics({f"{t}.{m}.{k}": v for t, ms in result.items() for m, r in ms.items() for k, v in r.items()})
    print(report)


if __name__ == "__main__":
    main()
