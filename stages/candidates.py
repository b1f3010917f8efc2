"""Stage candidates@<task> (on transplant.tasks): per math problem, a correct and an incorrect explained answer and an
argument that picks one (the correct one at `argument_correct_rate`), for transplant verification."""
from cotlab import tracking
from cotlab.data.candidates import CandidatesConfig, make_candidates, oracle_candidates
from cotlab.schema import write_json, write_jsonl
from cotlab.data.sources import load_task
from cotlab.stage import candidates_dir, mlflow_params, stage_main
from cotlab.teacher import Teacher, TeacherConfig


@stage_main("candidates")
def main(params, task):
    cfg = params.section("candidates", CandidatesConfig)
    teacher = Teacher(params.section("teacher", TeacherConfig), oracle=lambda r: oracle_candidates(r.example, r.context))
    # Loaded here, not from data@<task>, so the stage works whatever `tasks` lists (same seed: same split).
    size = params.split_sizes(task)
    splits = load_task(task, params.task_specs[task], size.n_train, size.n_test, params.seed)
    with tracking.stage_run(f"candidates@{task}", mlflow_params(params), task=task):
        made = {split: make_candidates(splits[split], teacher, params.seed, cfg.argument_correct_rate,
                                       cfg.corrupt_step, f"candidates ({task}/{split})")
                for split in ("train", "test")}
        # Written only once both splits succeeded: a failure leaves no half of the output behind.
        for split, (rows, _) in made.items():
            write_jsonl(f"{candidates_dir(task)}/{split}.jsonl", rows)
        metrics = {f"{split}.{k}": v for split, (_, m) in made.items() for k, v in m.items()}
        write_json(f"metrics/candidates/{task}.json", metrics)
        tracking.log_metrics(metrics)
    print(f"candidates@{task}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
