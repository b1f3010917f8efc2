"""MLflow: one run per stage execution, named as DVC names the stage, in one SQLite store at the repository root.

Under `dvc repro` / `dvc exp run` the run name is DVC's own address of the stage (DVC puts it in $DVC_STAGE for
every command it runs: `eval_base@gsm8k`, `markovian@non_markovian-arithmetic`), so MLflow and `dvc status` can never
disagree on a name; the script's own name applies only when it runs outside DVC. Every run of one `dvc exp` carries
its name in the tag `dvc_exp_name` (filter the runs table with `tags.dvc_exp_name = "<exp>"`).

`dvc exp run --queue` and `--temp` execute in a copy of the repository under `.dvc/tmp/exps/`; their runs must
land in the store of the repository the experiment came from, not in a throwaway copy.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from cotlab.distributed import is_main_process

_EXPS_MARKER = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


def repo_root(start: str | Path | None = None) -> Path:
    """The user's repository: for a DVC experiment running in .dvc/tmp/exps/<tmp>, the repository holding it."""
    here = str(Path(start or os.getcwd()).resolve()) + os.sep
    if _EXPS_MARKER in here:
        return Path(here.split(_EXPS_MARKER)[0])
    path = Path(here)
    for candidate in (path, *path.parents):
        if (candidate / ".dvc").is_dir() or (candidate / ".git").exists():
            return candidate
    return path


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


# MLflow 3's UI opens an experiment without this tag on its GenAI (traces) view, where cotlab's runs are not shown.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def stage_name(fallback: str) -> str:
    """The DVC address of the stage running this process, or `fallback` outside DVC."""
    return os.environ.get("DVC_STAGE") or fallback


def _set_experiment(mlflow, name: str) -> None:
    """The store and the experiment, created under a lock: stages of parallel experiments (`dvc queue start -j 2`)
    that open a fresh SQLite store at once otherwise race on its schema migration and on the experiment's creation
    (measured: 3 of 4 processes failed). Writes to an existing store need no lock (SQLite serialises them)."""
    uri = tracking_uri()
    lock = contextlib.nullcontext()
    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        lock = FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=300)
    with lock:
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.set_experiment(name)
        if KIND_TAG not in experiment.tags:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND)


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any], method: str | None = None, task: str | None = None,
              experiment: str = "cotlab") -> Iterator[Any]:
    """An MLflow run named as DVC names the stage (`stage` outside DVC), tagged with commit, DVC experiment, stage,
    method and task."""
    import mlflow

    if not is_main_process():  # under accelerate, the main process alone logs the stage
        yield None
        return
    stage = stage_name(stage)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _set_experiment(mlflow, experiment)
    tags = {
        "git_commit": git_commit(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "stage": stage,
        "method": method or "",
        "task": task or "",
    }
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        # MLflow caps a param value at 6000 characters; lists of names fit easily.
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
        yield run


@contextlib.contextmanager
def child_run(name: str, **tags: str) -> Iterator[Any]:
    """A run nested under the active stage run, for a stage that trains several models (self_guided: one per task);
    the stage stays one run named as DVC names it."""
    import mlflow

    if not is_main_process():
        yield None
        return
    parent = mlflow.active_run()
    with mlflow.start_run(run_name=f"{parent.info.run_name}/{name}", nested=True,
                          tags={**{k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")},
                                **tags}) as run:
        yield run


def log_text(text: str, name: str) -> None:
    """A text artifact of the active run (a report the stage also writes to its outs)."""
    import mlflow

    if is_main_process():
        mlflow.log_text(text, name)


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    import mlflow

    if not is_main_process():
        return
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        mlflow.log_metrics(numeric, step=step)
