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


def pytest_collection_modifyitems(config, items):
    """The tiny DAG (test_pipeline.py, the longest file by far) goes first: under `-n 2 --dist loadfile` (make test)
    one worker runs it from the start while the other runs every other file, so the suite takes about as long as
    the DAG alone."""
    items.sort(key=lambda item: item.path.name != "test_pipeline.py")
