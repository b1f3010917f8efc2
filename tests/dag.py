"""The tiny DAG that the pipeline tests share: a fresh clone of the project at tiny scale on one task, after one
`dvc repro`, built once per test session and shared by the xdist workers (the first to ask builds it under a file
lock; the others wait, then read it). Tests that change the project work on a copy (`copy_dag`)."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from filelock import FileLock
from ruamel.yaml import YAML

from conftest import copy_project


def sh_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": ""}


def sh(cwd, *cmd, timeout=600):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=sh_env())
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def runs(root):
    sh(root, sys.executable, "-m", "cotlab.tracking", "flush")  # waits for the stages' detached flushes
    client = mlflow.tracking.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cotlab")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def build(root: Path) -> dict:
    copy_project(root)
    yaml = YAML()
    params = yaml.load(root / "params.yaml")
    params["scale"] = "tiny"
    params["tasks"] = ["strategyqa"]
    params["dpo"]["tasks"] = ["strategyqa"]
    params["dpo"]["rounds"] = {"round1": {"start": "dpo"}}
    params["compare"]["headline"]["dpo_sqa"] = "dpo@strategyqa vs base_zeroshot@strategyqa"
    params["compare"]["pairs"].append("codi@gsm8k vs cot_sft@gsm8k")  # codi.tasks has no gsm8k: not evaluated
    params["transplant"].update({"steps": 4, "batch_size": 2, "eval_every": 2, "n_curve": 4})
    params["markovian"].update({"steps": 4, "group_size": 4, "cot_length": 8, "answer_tokens": 4, "eval_every": 2,
                                "save_every": 2, "n_eval": 4})
    yaml.dump(params, root / "params.yaml")
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
    started = time.time()
    out = sh(root, "dvc", "repro", timeout=1500)  # the whole tiny DAG
    repro_s = time.time() - started
    sh(root, sys.executable, "-m", "cotlab.tracking", "flush")  # the pending records name this store: write them
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny run")
    return {"root": str(root), "repro_log": out, "repro_s": repro_s}


def shared_dag(tmp_path_factory, worker_id: str) -> dict:
    """The session's tiny DAG: {"root": Path, "repro_log": str, "repro_s": float}. A build that failed is reported
    to every worker that asks, not retried."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if worker_id != "master" else base  # under xdist, the workers' temp dirs share a parent
    done, failed = shared / "tiny_dag.json", shared / "tiny_dag.failed"
    with FileLock(str(shared / "tiny_dag.lock")):
        if failed.exists():
            raise AssertionError(f"the tiny DAG failed to build in another worker:\n{failed.read_text()}")
        if not done.exists():
            try:
                done.write_text(json.dumps(build(shared / "tiny_dag")))
            except BaseException as error:
                failed.write_text(str(error)[-6000:])
                raise
    info = json.loads(done.read_text())
    return {**info, "root": Path(info["root"])}


def copy_dag(dag: dict, dest: Path) -> Path:
    """A writable copy of the shared DAG (git history, DVC cache, MLflow store and all). DVC's read-write lock is not
    copied: taken while another worker ran `dvc repro` in the original, it would name that live process."""
    copy = Path(shutil.copytree(dag["root"], dest, symlinks=True))
    (copy / ".dvc" / "tmp" / "rwlock").unlink(missing_ok=True)
    return copy
