"""Stage compare: every evaluated model per task, paired against the reference (metrics, report, plot data)."""
from pathlib import Path

from cotlab import tracking
from cotlab.schema import write_json
from cotlab.evaluation.compare import (compare, compare_pairs, load_predictions, markdown, verification,
                                      write_accuracy_plot)
from cotlab.stage import mlflow_params, stage_main


CODI_MODELS = ("codi", "cot_sft", "base_fewshot_cot")  # eval_codi@<task>'s outs
MARKOVIAN_MODELS = ("markovian", "markovian_base", "non_markovian", "non_markovian_base")  # eval_markovian@<task>
TRANSPLANT_MODELS = ("transplant", "transplant_masked", "no_transplant")  # the transplant stages' evaluations


@stage_main("compare")
def main(params):
    cfg = params.compare
    with tracking.stage_run("compare", mlflow_params(params)):
        # CODI's, Markovian's and the transplant's tasks bring only their own models, and are optional: a pair whose
        # side was not evaluated is reported as such in the table.
        optional: dict[str, tuple[str, ...]] = {}
        for tasks, models in ((params.codi.tasks, CODI_MODELS), (params.markovian.tasks, MARKOVIAN_MODELS),
                              (params.transplant.tasks, TRANSPLANT_MODELS)):
            for t in tasks:
                optional[t] = optional.get(t, ()) + models
        table = load_predictions("eval", params.tasks, optional=optional)
        result = compare(table, cfg.reference, cfg.bootstrap_resamples, cfg.confidence, params.seed, cfg.ablations)
        pairs = compare_pairs(table, cfg.pairs, cfg.bootstrap_resamples, cfg.confidence, params.seed)
        verified = verification(table, TRANSPLANT_MODELS, cfg.bootstrap_resamples, cfg.confidence, params.seed)
        write_json("metrics/compare.json", {**result, "pairs": pairs, "transplant": verified})
        Path("reports").mkdir(exist_ok=True)
        report = markdown(result, cfg.reference, pairs, verified)
        Path("reports/compare.md").write_text(report)
        write_accuracy_plot(result, "plots/compare/accuracy.csv")
        tracking.log_metrics({f"{t}.{m}.{k}": v for t, ms in result.items() for m, r in ms.items() for k, v in r.items()})
    print(report)


if __name__ == "__main__":
    main()
