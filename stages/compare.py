"""Stage compare: each system's mechanism checks (metrics/mechanisms.json, the report's first section), every
evaluated model per task, paired against the reference (metrics, report, plot data), one
small headline file per research system (metrics/summary/<system>.json), and the report's figures rendered offline
(reports/figures/*.png, from eval/ and the training curves under plots/train/)."""
from cotlab import tracking
from cotlab.schema import write_json
from cotlab.evaluation.compare import (TRANSPLANT_MODELS, CompareConfig, baselines, compare, compare_pairs,
                                      load_predictions, optional_models, summaries, train_answers, verification,
                                      write_accuracy_plot, write_markdown)
from cotlab.evaluation.figures import report_figures
from cotlab.evaluation.mechanisms import mechanism_checks, mechanisms_markdown, needed_pairs
from cotlab.stage import candidates_dir, codi_data_dir, data_dir, markovian_data_dir, mlflow_params, stage_main


@stage_main("compare")
def main(params):
    cfg = params.section("compare", CompareConfig)
    with tracking.stage_run("compare", mlflow_params(params)):
        systems = {s: params.tasks_of(s) for s in ("codi", "markovian", "transplant")}
        optional = optional_models(systems["codi"], systems["markovian"], systems["transplant"])
        table = load_predictions("eval", params.tasks, optional=optional)
        # each task's train split, for its majority class (a task in several systems: the first one's split)
        splits = {**{t: candidates_dir(t) for t in systems["transplant"]},
                  **{t: markovian_data_dir(t) for t in systems["markovian"]},
                  **{t: codi_data_dir(t) for t in systems["codi"]}, **{t: data_dir(t) for t in params.tasks}}
        trivial = baselines(table, {t: train_answers(f"{d}/train.jsonl") for t, d in splits.items() if t in table})
        result = compare(table, cfg.reference, cfg.bootstrap_resamples, cfg.confidence, params.seed, cfg.ablations,
                         trivial)
        pairs = compare_pairs(table, cfg.pairs, cfg.bootstrap_resamples, cfg.confidence, params.seed)
        verified = verification(table, TRANSPLANT_MODELS, cfg.bootstrap_resamples, cfg.confidence, params.seed)
        checked = compare_pairs(table, needed_pairs(systems["codi"], systems["markovian"], systems["transplant"]),
                                cfg.bootstrap_resamples, cfg.confidence, params.seed)
        mechanisms = mechanism_checks(".", result, checked, verified, table, params.tasks_of("dpo"), systems["codi"],
                                      systems["markovian"], systems["transplant"], trivial)
        mechanisms = [{**r, "scale_needed": cfg.scale_needed.get(r["system"])} for r in mechanisms]
        write_json("metrics/mechanisms.json", {f"{r['system']}.{r['check']}": r for r in mechanisms})
        write_json("metrics/compare.json", {**result, "pairs": pairs, "transplant": verified, "baselines": trivial})
        for system, summary in summaries(result, cfg.headline, cfg.bootstrap_resamples, cfg.confidence, params.seed,
                                         table, verified, trivial).items():
            write_json(f"metrics/summary/{system}.json", summary)
        trained = {"sft": params.tasks, "cot_distill": params.tasks, "dpo": params.tasks,
                   "codi": systems["codi"], "cot_sft": systems["codi"], "markovian": systems["markovian"],
                   "non_markovian": systems["markovian"],
                   **{variant: systems["transplant"] for variant in TRANSPLANT_MODELS}}
        figures = report_figures(result, "plots/train", "reports/figures", trained, trivial)
        report = write_markdown("reports/compare.md", result, cfg.reference, pairs, verified,
                                [(title, f"figures/{name}") for title, name in figures],
                                mechanisms_markdown(mechanisms, cfg.scale_needed), trivial)
        write_accuracy_plot(result, "plots/compare/accuracy.csv")
        tracking.log_metrics({f"{t}.{m}.{k}": float(v) for t, ms in result.items() for m, r in ms.items()
                              for k, v in r.items() if isinstance(v, (int, float))})
    print(report)


if __name__ == "__main__":
    main()
