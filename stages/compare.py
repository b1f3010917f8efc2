"""Stage compare: every evaluated model per task, paired against the reference (metrics, report, plot data)."""
from pathlib import Path

from cotlab import tracking
from cotlab.data.schema import write_json
from cotlab.evaluation.compare import compare, load_predictions, markdown, write_accuracy_plot
from cotlab.stage import mlflow_params, stage_main


@stage_main("compare")
def main(params):
    cfg = params.compare
    with tracking.stage_run("compare", mlflow_params(params)):
        result = compare(load_predictions("eval", params.tasks), cfg.reference, cfg.bootstrap_resamples, cfg.confidence,
                         params.seed, cfg.ablations)
        write_json("metrics/compare.json", result)
        Path("reports").mkdir(exist_ok=True)
        report = markdown(result, cfg.reference)
        Path("reports/compare.md").write_text(report)
        write_accuracy_plot(result, "plots/compare/accuracy.csv")
        tracking.log_metrics({f"{t}.{m}.{k}": v for t, ms in result.items() for m, r in ms.items() for k, v in r.items()})
    print(report)


if __name__ == "__main__":
    main()
