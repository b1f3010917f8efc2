"""What every stage script shares: params, the paths of dvc.yaml, and one clear message on a known failure."""

from __future__ import annotations

import functools
import random
import sys
import textwrap
import time
from typing import Callable

from cotlab.config import ConfigError, Params, flatten, load_params
from cotlab.schema import DataError
from cotlab.errors import ModelLoadError, TrainingDivergedError
from cotlab.progress import quiet_bars_in_logs

KNOWN_FAILURES = (ConfigError, DataError, ModelLoadError, TrainingDivergedError)

BASE_MODEL = "models/base"


def data_dir(task: str) -> str:
    return f"data/tasks/{task}"


def codi_data_dir(task: str) -> str:
    return f"data/codi/{task}"


def markovian_data_dir(task: str) -> str:
    return f"data/markovian/{task}"


def candidates_dir(task: str) -> str:
    return f"data/candidates/{task}"


def drafts_dir(task: str) -> str:
    return f"data/drafts/{task}"


def teacher_dir(task: str) -> str:
    return f"data/teacher/{task}"


def filtered_dir(task: str) -> str:
    return f"data/filtered/{task}"


def pairs_dir(task: str) -> str:
    return f"data/pairs/{task}"


def model_dir(method: str, task: str) -> str:
    return BASE_MODEL if method == "base" else f"models/{method}/{task}"


def max_new_tokens(params: Params, template: str) -> int:
    sizes = params.sizes
    return sizes.max_new_tokens_cot if template == "cot" else sizes.max_new_tokens_direct


def mlflow_params(params: Params) -> dict:
    return flatten(params)


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (CPU and every CUDA device), as transformers.set_seed does,
    but without importing transformers. Called before a stage creates anything, so LoRA's A matrices, CODI's
    projection and new token rows, dropout masks and sampled CoTs all follow `seed`."""
    import numpy
    import torch

    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def stage_main(name: str) -> Callable:
    """Run a stage's main(); a known failure becomes one paragraph on stderr and exit status 2."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run() -> None:
            started = time.perf_counter()
            quiet_bars_in_logs()
            try:
                params = load_params("params.yaml")
                seed_everything(params.seed)
                fn(params, *sys.argv[1:])
            except KNOWN_FAILURES as e:
                message = f"cotlab: stage {name} failed ({type(e).__name__}): {e}"
                print(textwrap.fill(message, width=110), file=sys.stderr)
                sys.exit(2)
            stage = " ".join([name, *sys.argv[1:]])
            print(f"cotlab: {stage} done in {time.perf_counter() - started:.1f} s", file=sys.stderr)

        return run

    return wrap
