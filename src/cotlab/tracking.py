"""MLflow: one run per stage execution, named as DVC names the stage, in one SQLite store at the repository root.

Under `dvc repro` / `dvc exp run` the run name is DVC's own address of the stage (DVC puts it in $DVC_STAGE for
every command it runs: `eval_base@gsm8k`, `markovian@non_markovian-arithmetic`), so MLflow and `dvc status` can never
disagree on a name; the script's own name applies only when it runs outside DVC. Every run of one `dvc exp` carries
its name in the tag `dvc_exp_name` (filter the runs table with `tags.dvc_exp_name = "<exp>"`).

`dvc exp run --queue` and `--temp` execute in a copy of the repository under `.dvc/tmp/exps/`; their runs must
land in the store of the repository the experiment came from, not in a throwaway copy.

A stage never imports MLflow: its import, the store's schema check and the run's creation took ~5 s of every stage's
start-up on a 2-core CPU. The stage records its run (tags, params, metrics by step, texts, start and end) in a file
under `<repository>/.cotlab-cache/mlflow-pending/` and starts a detached `python -m cotlab.tracking flush`, which
writes every pending record to the store while DVC goes on with the next stage. A record the store refuses stays
pending for the next flush, so nothing is lost; `python -m cotlab.tracking flush` writes them now and waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
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


def pending_dir(root: Path | None = None) -> Path:
    cache = os.environ.get("COTLAB_CACHE_DIR")
    return (Path(cache) if cache else (root or repo_root()) / ".cotlab-cache") / "mlflow-pending"


_stack: list[dict] = []  # the open runs of this process: the stage's, then its child runs


def _now_ms() -> int:
    return int(time.time() * 1000)


def _open(run_name: str, tags: dict[str, str], params: dict[str, str]) -> dict:
    return {"run_name": run_name, "tags": tags, "params": params, "metrics": [], "texts": {}, "children": [],
            "start": _now_ms(), "end": None, "status": "RUNNING"}


@contextlib.contextmanager
def _running(record: dict) -> Iterator[dict]:
    _stack.append(record)
    try:
        yield record
        record["status"] = "FINISHED"
    except BaseException:
        record["status"] = "FAILED"
        raise
    finally:
        _stack.pop()
        record["end"] = _now_ms()


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any], method: str | None = None, task: str | None = None,
              experiment: str = "cotlab") -> Iterator[dict | None]:
    """The run of this stage, named as DVC names the stage (`stage` outside DVC), tagged with commit, DVC
    experiment, stage, method and task; written to the store by a detached flush when the stage ends (or fails)."""
    if not is_main_process():  # under accelerate, the main process alone logs the stage
        yield None
        return
    name = stage_name(stage)
    tags = {
        "git_commit": git_commit(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "workspace"),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "stage": name,
        "method": method or "",
        "task": task or "",
    }
    # MLflow caps a param value at 6000 characters; lists of names fit easily.
    record = _open(name, tags, {k: str(v)[:6000] for k, v in params.items()})
    record.update(experiment=experiment, uri=tracking_uri())
    try:
        with _running(record):
            yield record
    finally:
        save_pending(record)
        start_flush()


@contextlib.contextmanager
def child_run(name: str, **tags: str) -> Iterator[dict | None]:
    """A run nested under the active stage run, for a stage that trains several models (self_guided: one per task);
    the stage stays one run named as DVC names it."""
    if not is_main_process() or not _stack:
        yield None
        return
    parent = _stack[-1]
    record = _open(f"{parent['run_name']}/{name}", {**parent["tags"], **tags}, {})
    parent["children"].append(record)
    with _running(record):
        yield record


def log_text(text: str, name: str) -> None:
    """A text artifact of the active run (a report the stage also writes to its outs)."""
    if is_main_process() and _stack:
        _stack[-1]["texts"][name] = text


def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
    if not is_main_process() or not _stack:
        return
    t = _now_ms()
    _stack[-1]["metrics"].extend([k, float(v), step or 0, t] for k, v in metrics.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool))


def log_curve(rows: list[dict[str, Any]]) -> None:
    """A training curve (the rows a stage writes to plots/train/...), each numeric column at its row's step."""
    for row in rows:
        log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))


def save_pending(record: dict) -> Path:
    folder = pending_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['start']}-{uuid.uuid4().hex[:8]}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.rename(path)  # a flush never reads a half-written record
    return path


def start_flush() -> None:
    """A detached `python -m cotlab.tracking flush`: the stage exits while its run is written."""
    root = repo_root()
    log = pending_dir(root) / "flush.log"
    with open(log, "a") as out:
        subprocess.Popen([sys.executable, "-m", "cotlab.tracking", "flush"], cwd=root, stdin=subprocess.DEVNULL,
                         stdout=out, stderr=out, start_new_session=True)


def _store_lock(uri: str):
    """Stages of parallel experiments (`dvc queue start -j 2`) that open a fresh SQLite store at once otherwise
    race on its schema migration and on the experiment's creation (measured: 3 of 4 processes failed)."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=300)


def _write(client, experiment_id: str, record: dict, parent_id: str | None = None) -> None:
    from mlflow.entities import Metric, Param, RunTag

    tags = {**record["tags"], "mlflow.runName": record["run_name"],
            **({"mlflow.parentRunId": parent_id} if parent_id else {})}
    run = client.create_run(experiment_id, start_time=record["start"], tags=tags, run_name=record["run_name"])
    run_id = run.info.run_id
    params = [Param(k, v) for k, v in record["params"].items()]
    metrics = [Metric(k, v, t, step) for k, v, step, t in record["metrics"]]
    for i in range(0, len(params), 100):  # MLflow's log_batch limits: 100 params, 1000 metrics per call
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    for name, text in record["texts"].items():
        client.log_text(run_id, text, name)
    for child in record["children"]:
        _write(client, experiment_id, child, run_id)
    client.set_terminated(run_id, status=record["status"], end_time=record["end"])


def flush(root: Path | None = None) -> int:
    """Write every pending record to its store, oldest first, one flush at a time per repository; returns how many.
    A record the store refuses (locked, unreachable) stays pending, with the error on stderr."""
    folder = pending_dir(root)
    if not folder.is_dir() or not any(folder.glob("*.json")):
        return 0
    from filelock import FileLock

    written = 0
    with FileLock(folder / ".flush.lock", timeout=600):
        records = sorted(folder.glob("*.json"))
        if not records:
            return 0
        import mlflow

        for path in records:
            record = json.loads(path.read_text())
            try:
                with _store_lock(record["uri"]):
                    client = mlflow.MlflowClient(record["uri"])
                    experiment = client.get_experiment_by_name(record["experiment"])
                    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
                        record["experiment"], tags={KIND_TAG: KIND})
                    if experiment and KIND_TAG not in experiment.tags:
                        client.set_experiment_tag(experiment_id, KIND_TAG, KIND)
                _write(client, experiment_id, record)
            except Exception as e:  # kept for the next flush
                print(f"cotlab.tracking: {path.name} stays pending: {e!r}", file=sys.stderr)
                continue
            path.unlink()
            written += 1
    return written


if __name__ == "__main__":
    if sys.argv[1:] != ["flush"]:
        sys.exit("usage: python -m cotlab.tracking flush")
    flush()
