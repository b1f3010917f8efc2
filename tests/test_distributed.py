"""Training stages across processes (cotlab.distributed): with compute.num_processes = 2 a stage relaunches itself
under `accelerate launch`; the two processes (gloo on CPU) must end with the weights one process reaches with the
same global batch, and only the main process writes outputs and MLflow runs. One Trainer-based stage (sft, DDP
from transformers' Trainer) and one custom loop (transplant: batch shares, all-reduced gradients)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ruamel.yaml import YAML
from safetensors.torch import load_file

from cotlab.config import ComputeConfig, ConfigError, load_yaml
from cotlab.data.candidates import make_candidates, oracle_candidates
from cotlab.data.sources import load_task
from cotlab.distributed import Processes, launch_command
from cotlab.models import TINY, prepare_base
from cotlab.schema import Example, write_jsonl
from cotlab.teacher import Teacher, TeacherConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder a stage can run in: a float32 tiny base (bf16 rounding would swamp the comparison) and the inputs of
    sft@syllogism and transplant@svamp."""
    root = tmp_path_factory.mktemp("project")
    for folder in ("base", "base_transplant", "base_markovian", "base_codi"):  # sft reads models/base; the systems their own
        prepare_base(TINY, root / "models" / folder, dtype="float32", seed=0)
    examples = [Example(id=f"q{i}", question=f"Is {i} even?", answer="Yes" if i % 2 == 0 else "No",
                        answer_type="yes_no", reasoning=f"{i} mod 2 = {i % 2}.") for i in range(16)]
    write_jsonl(root / "data" / "filtered" / "syllogism" / "train.jsonl", examples)
    teacher = Teacher(TeacherConfig(), cache_dir=root / ".cache",
                      oracle=lambda r: oracle_candidates(r.example, r.context))
    splits = load_task("svamp", {"source": "svamp"}, 16, 8, seed=0)
    for split in ("train", "test"):
        rows = make_candidates(splits[split], teacher, 0, 0.5, "random", "svamp")[0]
        write_jsonl(root / "data" / "candidates" / "svamp" / f"{split}.jsonl", rows)
    relations = load_task("personal_relations", load_yaml(ROOT / "params.yaml")["task_specs"]["personal_relations"],
                          16, 4, seed=0)
    write_jsonl(root / "data" / "codi" / "personal_relations" / "train.jsonl", relations["train"])
    arithmetic = load_task("arithmetic", load_yaml(ROOT / "params.yaml")["task_specs"]["arithmetic"], 8, 4, seed=0)
    for split in ("train", "test"):
        write_jsonl(root / "data" / "markovian" / "arithmetic" / f"{split}.jsonl", arithmetic[split])
    return root


def run_stage(root: Path, tmp_path: Path, overrides: dict, *argv: str) -> subprocess.CompletedProcess:
    """The stage script run as DVC runs it (cwd = the project), params.yaml = the repository's with `overrides`."""
    params = load_yaml(ROOT / "params.yaml")
    params["scale"] = "tiny"
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[key] = value
    with (root / "params.yaml").open("w") as f:
        YAML(typ="safe").dump(params, f)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    env.pop("DVC_STAGE", None)
    done = subprocess.run([sys.executable, str(ROOT / "stages" / argv[0]), *argv[1:]], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    # The stage's run, in the store before the next run or the test reads it (waits for the detached flush).
    subprocess.run([sys.executable, "-m", "cotlab.tracking", "flush"], cwd=root, env=env, check=True, timeout=300)
    return done


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def mlflow_run_names(tmp_path: Path) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cotlab")
    return [r.info.run_name for r in client.search_runs([experiment.experiment_id])]


def assert_same_weights(one: dict, two: dict, init_zero_prefix: str = "lora_B") -> None:
    assert one.keys() == two.keys()
    # LoRA's B starts at zero: training moved it, so the comparison below is not of two untrained adapters.
    assert any(v.abs().max() > 1e-4 for k, v in one.items() if init_zero_prefix in k)
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    scale = max(float(v.abs().max()) for v in one.values())
    assert worst <= 1e-5 * max(scale, 1.0), f"largest difference {worst:.3g} (weights up to {scale:.3g})"


def test_sft_in_two_processes_gives_the_weights_of_one_with_the_same_global_batch(project, tmp_path):
    common = {"sft.epochs": 2, "sft.logging_steps": 1, "sft.warmup_ratio": 0.0}
    one = run_stage(project, tmp_path / "one", {**common, "sft.batch_size": 8}, "train.py", "sft", "syllogism")
    weights_one = adapter(project / "models" / "sft" / "syllogism")
    metrics_one = json.loads((project / "metrics" / "train" / "sft" / "syllogism.json").read_text())
    two = run_stage(project, tmp_path / "two", {**common, "sft.batch_size": 4, "compute.num_processes": 2},
                    "train.py", "sft", "syllogism")
    metrics_two = json.loads((project / "metrics" / "train" / "sft" / "syllogism.json").read_text())
    assert (metrics_one["processes"], metrics_two["processes"]) == (1, 2)
    assert metrics_one["train_steps"] == metrics_two["train_steps"] == 4  # 16 rows, global batch 8, 2 epochs
    assert_same_weights(weights_one, adapter(project / "models" / "sft" / "syllogism"))
    assert metrics_two["train_loss"] == pytest.approx(metrics_one["train_loss"], rel=1e-4)
    # One process wrote: one result line, one MLflow run.
    assert two.stdout.count("sft@syllogism: loss") == one.stdout.count("sft@syllogism: loss") == 1
    assert mlflow_run_names(tmp_path / "two") == ["sft@syllogism"]


def test_transplant_in_two_processes_gives_the_weights_of_one_with_the_same_global_batch(project, tmp_path):
    common = {"transplant.steps": 4, "transplant.eval_every": 4, "transplant.n_curve": 4, "transplant.lr": 5e-3}
    run_stage(project, tmp_path / "one", {**common, "transplant.batch_size": 4}, "transplant.py", "svamp")
    weights_one = adapter(project / "models" / "transplant" / "svamp")
    curve_one = (project / "plots" / "train" / "transplant" / "svamp.csv").read_text().splitlines()
    two = run_stage(project, tmp_path / "two", {**common, "transplant.batch_size": 4, "compute.num_processes": 2},
                    "transplant.py", "svamp")
    metrics_two = json.loads((project / "metrics" / "train" / "transplant" / "svamp.json").read_text())
    assert metrics_two["processes"] == 2
    assert_same_weights(weights_one, adapter(project / "models" / "transplant" / "svamp"))
    # The logged loss is the whole batch's, not one process's share.
    curve_two = (project / "plots" / "train" / "transplant" / "svamp.csv").read_text().splitlines()
    losses = lambda lines: [float(line.split(",")[1]) for line in lines[1:]]  # noqa: E731
    assert losses(curve_two) == pytest.approx(losses(curve_one), rel=1e-4)
    assert mlflow_run_names(tmp_path / "two") == ["transplant@transplant-svamp"]


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's safetensors files (CODI's: the adapter, the projection, the added token rows)."""
    return {f"{f.name}:{k}": v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_codi_in_two_processes_gives_the_weights_of_one_with_the_same_global_batch(project, tmp_path):
    """CODI's Trainer (teacher and student passes in one forward) under DDP: the gradients are all-reduced only when
    the Trainer calls the wrapped model's forward, so a loss computed beside it would train each process apart.
    CODI's loss is a mean over its batch (the distill term divided by the batch's teacher std, as the reference's), so
    DDP's global batch is the mean of two per-process losses: what one process computes by accumulating the gradients
    of the same two shares (batch 4 x grad_accum 2), not one batch of 8."""
    common = {"codi.epochs": 1, "codi.lora.r": 8, "codi.warmup_ratio": 0.0, "codi.logging_steps": 1}
    out = project / "models" / "codi" / "personal_relations"
    run_stage(project, tmp_path / "one", {**common, "codi.batch_size": 4, "codi.grad_accum": 2}, "codi.py",
              "personal_relations")
    weights_one = checkpoint_weights(out)
    run_stage(project, tmp_path / "two", {**common, "codi.batch_size": 4, "compute.num_processes": 2},
              "codi.py", "personal_relations")
    assert json.loads((out / "manifest.json").read_text())["method"] == "codi"
    metrics = json.loads((project / "metrics" / "train" / "codi" / "personal_relations.json").read_text())
    assert metrics["train_steps"] == 2  # 16 rows, 4 per process, 2 processes
    assert_same_weights(weights_one, checkpoint_weights(out))
    assert mlflow_run_names(tmp_path / "two") == ["codi@personal_relations"]


def test_markovian_in_two_processes_splits_the_questions_and_writes_once(project, tmp_path):
    """Each process samples its own question's CoTs (so the draws differ from one process's: no weight equality
    here); the step's monitors are over both questions and one process writes the curve, checkpoint and run."""
    overrides = {"markovian.steps": 2, "markovian.questions_per_step": 2, "markovian.group_size": 2,
                 "markovian.cot_length": 4, "markovian.answer_tokens": 2, "markovian.eval_every": 2,
                 "markovian.save_every": 2, "markovian.n_eval": 2, "compute.num_processes": 2}
    done = run_stage(project, tmp_path, overrides, "markovian.py", "arithmetic", "markovian")
    metrics = json.loads((project / "metrics" / "train" / "markovian" / "arithmetic.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2
    curve = (project / "plots" / "train" / "markovian" / "arithmetic.csv").read_text().splitlines()
    assert len(curve) == 3 and done.stdout.count("step 1: answer log-prob") == 1
    state = json.loads((project / ".cotlab-cache" / "checkpoints" / "markovian" / "arithmetic" / "latest" / "state.json").read_text())
    assert state["step"] == 2
    assert mlflow_run_names(tmp_path) == ["markovian@markovian-arithmetic"]


def test_a_batch_that_does_not_split_evenly_is_a_config_error():
    processes = Processes()
    processes.world = 2
    with pytest.raises(ConfigError, match="transplant.batch_size: 3 is not a multiple of compute.num_processes"):
        processes.share([1, 2, 3], "transplant.batch_size")


def test_the_launch_command_uses_the_accelerate_config_when_given(tmp_path):
    cmd = launch_command(ComputeConfig(num_processes=4, main_process_port=29555), ["stages/train.py", "sft", "x"])
    assert cmd[1:] == ["launch", "--num_processes", "4", "--main_process_port", "29555", "--multi_gpu",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                       "stages/train.py", "sft", "x"]
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\n")
    cmd = launch_command(ComputeConfig(num_processes=2, accelerate_config=str(config)), ["stages/codi.py", "t"])
    assert cmd[cmd.index("--config_file") + 1] == str(config) and "--multi_gpu" not in cmd
    with pytest.raises(ConfigError, match="compute.accelerate_config"):
        launch_command(ComputeConfig(num_processes=2, accelerate_config=str(tmp_path / "missing.yaml")), ["s.py"])
