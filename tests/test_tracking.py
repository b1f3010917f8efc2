"""MLflow: one run per stage, tagged and with flattened params, step metrics from the Trainer callback."""
import os

import mlflow
import pytest

from conftest import LORA
from cotlab import tracking
from cotlab.config import flatten, load_params
from cotlab.methods import sft
from cotlab.models import load_for_training


def test_experiment_copies_track_into_the_original_repository(tmp_path):
    (tmp_path / ".dvc").mkdir()
    exp_copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    exp_copy.mkdir(parents=True)
    assert tracking.repo_root(exp_copy) == tmp_path
    assert tracking.repo_root(tmp_path) == tmp_path


def test_stage_run_tags_params_and_trainer_step_metrics(tmp_path, monkeypatch, tiny_base, examples):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dvc").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    params = flatten(load_params(__import__("pathlib").Path(__file__).parents[1] / "params.yaml").as_dict())
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    with tracking.stage_run("sft@strategyqa", params, method="sft", task="strategyqa") as run:
        sft.train(model, tokenizer, examples["train"], sft.TrainConfig(lr=2e-4, epochs=1, batch_size=4, logging_steps=1),
                  template="direct", max_length=512, seed=0)
        tracking.log_metrics({"accuracy": 0.5, "ignored": "text"})
    assert (tmp_path / "mlflow.db").is_file()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    stored = client.get_run(run.info.run_id)
    assert stored.info.run_name == "sft@strategyqa"
    tags = stored.data.tags
    assert tags["dvc_exp_name"] == "exp-test" and tags["dvc_exp_baseline_rev"] == "abc123"
    assert tags["stage"] == "sft@strategyqa" and tags["method"] == "sft" and tags["task"] == "strategyqa"
    assert "git_commit" in tags
    assert stored.data.params["lr"] == str(params["lr"]) and "sft.lora.r" in stored.data.params
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 7))  # one point per optimizer step
    assert stored.data.metrics["accuracy"] == pytest.approx(0.5)


RACE = """
import sys
from cotlab import tracking
with tracking.stage_run(sys.argv[1], {"p": 1}, method="m", task="t"):
    for step in range(20):
        tracking.log_metrics({"x": step}, step=step)
"""


def test_parallel_stages_opening_a_fresh_store_all_land_in_one_experiment(tmp_path):
    """What `dvc queue start -j N` does to the store: N stages create it at the same moment. Without the lock in
    tracking._set_experiment most of them fail on the schema migration."""
    import subprocess
    import sys

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("DVC_STAGE", None)
    procs = [subprocess.Popen([sys.executable, "-c", RACE, f"stage{i}"], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)
    client = mlflow.MlflowClient(uri)
    experiments = [e for e in client.search_experiments() if e.name == "cotlab"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"stage{i}" for i in range(4)]
    assert all(len(client.get_metric_history(r.info.run_id, "x")) == 20 for r in runs)
