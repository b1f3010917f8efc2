"""MLflow: one run per stage execution, in one SQLite store at the repository root.

`dvc exp run --queue` and `--temp` execute in a copy of the repository under `.dvc/tmp/exps/`; their runs must
land in the store of the repository the experiment came from, not in a throwaway copy.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

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


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any], method: str | None = None, task: str | None = None,
              experiment: str = "cotlab") -> Iterator[Any]:
    """An MLflow run named after the DVC stage, tagged with commit, DVC experiment, stage, method and task."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
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


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    import mlflow

    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        mlflow.log_metrics(numeric, step=step)
