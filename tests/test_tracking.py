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
    """The stage records its run without importing MLflow (a subprocess shows it); the flush writes it: tags,
    flattened params, the training curve at its steps, the final metrics, start and end."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dvc").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("COTLAB_CACHE_DIR", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    monkeypatch.setattr(tracking, "start_flush", lambda: None)  # flushed below, in this process
    params = flatten(load_params(__import__("pathlib").Path(__file__).parents[1] / "params.yaml").as_dict())
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    with tracking.stage_run("sft@strategyqa", params, method="sft", task="strategyqa") as record:
        _, _, curve = sft.train(model, tokenizer, examples["train"],
                                sft.TrainConfig(lr=2e-4, epochs=1, batch_size=4, logging_steps=1),
                                template="direct", max_length=512, seed=0)
        tracking.log_curve(curve)
        tracking.log_metrics({"accuracy": 0.5, "ignored": "text"})
    assert not (tmp_path / "mlflow.db").exists() and len(list(tracking.pending_dir().glob("*.json"))) == 1
    assert tracking.flush() == 1 and not list(tracking.pending_dir().glob("*.json"))
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (stored,) = client.search_runs([client.get_experiment_by_name("cotlab").experiment_id])
    assert stored.info.run_name == "sft@strategyqa" and stored.info.status == "FINISHED"
    assert stored.info.start_time == record["start"] and stored.info.end_time == record["end"]
    tags = stored.data.tags
    assert tags["dvc_exp_name"] == "exp-test" and tags["dvc_exp_baseline_rev"] == "abc123"
    assert tags["stage"] == "sft@strategyqa" and tags["method"] == "sft" and tags["task"] == "strategyqa"
    assert "git_commit" in tags
    assert stored.data.params["lr"] == str(params["lr"]) and "sft.lora.r" in stored.data.params
    history = client.get_metric_history(stored.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 7))  # one point per optimizer step
    assert [m.value for m in history] == [row["loss"] for row in curve]
    assert stored.data.metrics["accuracy"] == pytest.approx(0.5)


def test_a_stage_records_its_run_without_importing_mlflow_and_a_refused_record_stays_pending(tmp_path):
    """The stage process never imports MLflow; its detached flush writes the run. A store that cannot be opened
    leaves the record pending, and the next flush writes it."""
    import subprocess
    import sys

    code = """
import sys
from cotlab import tracking
with tracking.stage_run("data@strategyqa", {"p": 1}, task="strategyqa"):
    tracking.log_metrics({"n": 3})
print("mlflow" in sys.modules)
"""
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder must be\n")  # refused at once (a folder there: ~3 min of retries)
    bad = blocker / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{bad}", "COTLAB_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("DVC_STAGE", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    pending = tmp_path / "cache" / "mlflow-pending"
    flushed = subprocess.run([sys.executable, "-m", "cotlab.tracking", "flush"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)  # waits for the detached one
    assert flushed.returncode == 0 and len(list(pending.glob("*.json"))) == 1  # refused, kept
    blocker.unlink()
    assert subprocess.run([sys.executable, "-m", "cotlab.tracking", "flush"], cwd=tmp_path, env=env,
                          timeout=300).returncode == 0
    assert not list(pending.glob("*.json"))
    client = mlflow.MlflowClient(f"sqlite:///{bad}")
    (run,) = client.search_runs([client.get_experiment_by_name("cotlab").experiment_id])
    assert run.info.run_name == "data@strategyqa" and run.data.metrics["n"] == 3.0


RACE = """
import sys
from cotlab import tracking
with tracking.stage_run(sys.argv[1], {"p": 1}, method="m", task="t"):
    for step in range(20):
        tracking.log_metrics({"x": step}, step=step)
"""


def test_parallel_stages_opening_a_fresh_store_all_land_in_one_experiment(tmp_path):
    """What `dvc queue start -j N` does to the store: N stages of N repositories (each its own pending folder) flush
    into one fresh store at the same moment. Without tracking._store_lock most of them fail on the schema
    migration or the experiment's creation."""
    import subprocess
    import sys

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    envs = [{**os.environ, "MLFLOW_TRACKING_URI": uri, "COTLAB_CACHE_DIR": str(tmp_path / f"cache{i}")}
            for i in range(4)]
    for env in envs:
        env.pop("DVC_STAGE", None)
    procs = [subprocess.Popen([sys.executable, "-c", RACE, f"stage{i}"], env=env, cwd=tmp_path, stderr=subprocess.PIPE,
                              text=True) for i, env in enumerate(envs)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)
    for env in envs:  # waits for that repository's detached flush, then writes whatever it left
        subprocess.run([sys.executable, "-m", "cotlab.tracking", "flush"], env=env, cwd=tmp_path, check=True,
                       timeout=300)
    logs = "".join((tmp_path / f"cache{i}" / "mlflow-pending" / "flush.log").read_text() for i in range(4))
    assert "stays pending" not in logs, logs[-2000:]  # each detached flush wrote its run at the first try
    client = mlflow.MlflowClient(uri)
    experiments = [e for e in client.search_experiments() if e.name == "cotlab"]
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"stage{i}" for i in range(4)]
    assert all(len(client.get_metric_history(r.info.run_id, "x")) == 20 for r in runs)
