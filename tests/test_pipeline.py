"""The whole DAG through DVC at tiny scale, re-runs, and experiments (temp and queued) tracked in one store."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from ruamel.yaml import YAML

from conftest import copy_project

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(cwd, *cmd, timeout=600):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": ""}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fresh clone of the project at tiny scale on one task, after one `dvc repro`."""
    root = copy_project(tmp_path_factory.mktemp("repo"))
    yaml = YAML()
    params = yaml.load(root / "params.yaml")
    params["scale"] = "tiny"
    params["tasks"] = ["strategyqa"]
    yaml.dump(params, root / "params.yaml")
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline")
    started = time.time()
    out = sh(root, "dvc", "repro")
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny run")
    return {"root": root, "repro_log": out, "repro_s": time.time() - started}


def runs(root):
    client = mlflow.tracking.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cotlab")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_whole_dag_at_tiny_scale(repo):
    root = repo["root"]
    compare = json.loads((root / "metrics" / "compare.json").read_text())
    assert set(compare["strategyqa"]) == {"base_zeroshot", "base_fewshot", "sft", "cot_distill"}
    assert 0 <= compare["strategyqa"]["sft"]["mcnemar_p"] <= 1
    predictions = (root / "eval" / "sft" / "strategyqa" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == compare["strategyqa"]["sft"]["n"]
    manifest = json.loads((root / "models" / "cot_distill" / "strategyqa" / "manifest.json").read_text())
    assert manifest["init_from"] == "models/sft/strategyqa" and manifest["prompt"]["template"] == "cot"
    assert (root / "reports" / "compare.md").read_text().count("| strategyqa |") == 4
    stages = {r.data.tags["stage"] for r in runs(root)}
    assert {"prepare_model", "data@strategyqa", "drafts@strategyqa", "teacher@strategyqa", "filter@strategyqa",
            "candidates", "sft@strategyqa", "cot_distill@strategyqa", "compare"} <= stages
    assert repo["repro_s"] < 300


def test_training_consumes_the_filtered_teacher_data(repo):
    root = repo["root"]
    filtered = json.loads((root / "metrics/filter/strategyqa.json").read_text())
    assert filtered["teacher_agreement_rate"] == 1.0  # the oracle is exact
    assert filtered["share_after.yes"] == filtered["share_after.no"] == 0.5  # upsampled by default
    assert filtered["share_before.yes"] != 0.5 and filtered["n_out"] > filtered["kept"]
    for method in ("sft", "cot_distill"):
        trained = json.loads((root / f"metrics/train/{method}/strategyqa.json").read_text())
        assert trained["n_examples"] + trained["n_dropped_too_long"] == filtered["n_out"]
    rows = [json.loads(line) for line in (root / "data/filtered/strategyqa/train.jsonl").read_text().splitlines()]
    assert all(r["metadata"]["teacher_answer"] == r["answer"] and r["reasoning"] for r in rows)
    teacher = json.loads((root / "metrics/teacher/strategyqa.json").read_text())
    assert teacher["usage.answered"] + teacher["usage.failed"] == teacher["usage.requests"] > 0
    shown = sh(root, "dvc", "metrics", "show")
    assert "share_after.yes" in shown and "usage.requests" in shown and "teacher_agreement_rate" in shown
    candidates = json.loads((root / "metrics/candidates.json").read_text())  # gsm8k, though tasks lists strategyqa
    assert candidates["train.kept"] > 0 and candidates["test.kept"] > 0


def test_repro_after_a_finished_run_does_nothing(repo):
    started = time.time()
    out = sh(repo["root"], "dvc", "repro")
    assert "Data and pipelines are up to date" in out
    assert time.time() - started < 30


def test_temp_and_queued_experiments_land_in_the_same_store(repo):
    root = repo["root"]
    sh(root, "dvc", "exp", "run", "--temp", "-S", "lr=5e-5")
    sh(root, "dvc", "exp", "run", "--queue", "-S", "lr=3e-4")
    sh(root, "dvc", "queue", "start", "-j", "1")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = sh(root, "dvc", "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Success" in status, status
    lrs = {r.data.params.get("lr") for r in runs(root) if r.data.tags.get("stage") == "sft@strategyqa"}
    assert {"5e-05", "0.0003"} <= lrs
    names = {r.data.tags["dvc_exp_name"] for r in runs(root) if r.data.params.get("lr") in ("5e-05", "0.0003")}
    assert "workspace" not in names and len(names) == 2
    assert not list(root.glob(".dvc/tmp/exps/**/mlflow.db"))
    shown = json.loads(sh(root, "dvc", "exp", "show", "--json"))
    text = json.dumps(shown)
    assert "5e-05" in text and "0.0003" in text
