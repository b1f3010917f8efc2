import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests run tiny models, whose ops are too small to split across threads: on 2 cores a second thread only adds
# synchronisation (and, next to any other load, spin-waiting that made a tiny RL step 20x slower). Stages run by the
# tiny DAG inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_TRACKING_URI", "")  # each test that tracks sets its own store


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """models/base at tiny scale: a 2-layer random Llama on the embedded SmolLM2 tokenizer."""
    from cotlab.models import TINY, prepare_base

    path = tmp_path_factory.mktemp("models") / "base"
    prepare_base(TINY, path, seed=0)
    return path


@pytest.fixture(scope="session")
def tokenizer(tiny_base):
    from cotlab.models import load_tokenizer

    return load_tokenizer(tiny_base)


@pytest.fixture
def actor(tiny_base):
    """(model, tokenizer): the tiny base with a LoRA adapter, made non-zero (LoRA B starts at zero, which would hide
    gradient paths)."""
    import torch

    from cotlab.models import load_for_training

    torch.manual_seed(0)
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model, tokenizer


@pytest.fixture
def examples():
    from cotlab.data.sources import load_task

    return load_task("strategyqa", {"source": "strategyqa"}, 24, 8, seed=0)


LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def copy_project(dest: Path) -> Path:
    """The project's files as a fresh clone would have them (no outputs, no lock), into `dest`."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True).stdout.split()
    for name in listed:
        if (ROOT / name).is_file() and not name.startswith(("metrics/", "plots/", "reports/")) and name != "dvc.lock":
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


PIPELINE_FIRST, PIPELINE_LAST = ("test_pipeline.py",), ("test_pipeline_experiments.py",)


def pytest_collection_modifyitems(config, items):
    """The tiny DAG (tests/dag.py, built once per session by the first worker that asks) is the longest setup by
    far: test_pipeline.py goes first, so under `-n 2 --dist loadfile` (make test) one worker builds it from the start
    (then checks it and re-trains from it) while the other runs the other files, then the experiments on a copy of
    the DAG, last. xdist hands a worker a file only when it has two tests or fewer left, so the busy DAG worker
    would never take a separate file: the re-training stays in test_pipeline.py."""
    items.sort(key=lambda item: (item.path.name not in PIPELINE_FIRST) + (item.path.name in PIPELINE_LAST))
