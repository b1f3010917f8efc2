"""What every stage script shares: params, the paths of dvc.yaml, and one clear message on a known failure."""

from __future__ import annotations

import functools
import random
import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

from cotlab import distributed
from cotlab.config import SYSTEMS, ConfigError, Params, flatten, load_params
from cotlab.schema import DataError
from cotlab.errors import ModelLoadError, TrainingDivergedError
from cotlab.progress import quiet_bars_in_logs

KNOWN_FAILURES = (ConfigError, DataError, ModelLoadError, TrainingDivergedError)

BASE_MODEL = "models/base"


def base_dir(system: str | None = None) -> str:
    """The base model folder a system's stages read. None (the self-improving system): models/base, written by
    prepare_model from model.name. codi, markovian, transplant: models/base_<system>, written by
    prepare_system_model@<system> from `<system>.model` (or, when null, the shared model), so one system's model
    never changes another's outputs."""
    if system is None:
        return BASE_MODEL
    if system not in SYSTEMS:
        raise ValueError(f"{system!r}: not a system with a base model of its own ({', '.join(SYSTEMS)})")
    return f"{BASE_MODEL}_{system}"


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
    return flatten(params.as_dict())


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (CPU and every CUDA device), as transformers.set_seed does,
    but without importing transformers. Called before a stage creates anything, so LoRA's A matrices, CODI's
    projection and new token rows, dropout masks and sampled CoTs all follow `seed`."""
    import numpy
    import torch

    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def declared_outputs(argv: list[str]) -> list[Path]:
    """The outs, metrics and plots that dvc.yaml (in the working directory) declares for the stage whose command
    runs the script argv[0] with argv[1:], persistent outs excepted: they exist to outlive a failed run (resume
    state). Empty when there is no dvc.yaml or no such stage. Reads the pipeline through DVC itself, so foreach and
    matrix expand exactly as `dvc repro` expands them."""
    if not Path("dvc.yaml").is_file():
        return []
    from dvc.repo import Repo

    with Repo(".", uninitialized=True) as repo:  # a copy without .dvc/ still declares its outputs
        for stage in repo.index.stages:
            words = stage.cmd.split()
            if len(words) >= 2 and Path(words[1]).name == Path(argv[0]).name and words[2:] == argv[1:]:
                return [Path(str(out.def_path)) for out in stage.outs if not out.persist]
    return []


def written_since(path: Path, started: float) -> bool:
    if path.is_file():
        return path.stat().st_mtime >= started
    return path.is_dir() and any(f.stat().st_mtime >= started for f in path.rglob("*") if f.is_file())


def remove_partial_outputs(argv: list[str], started: float) -> list[str]:
    """After a failure: remove each declared output the run wrote (a file, or a whole folder with any new file in
    it), so a failed stage leaves no output that looks complete beside the ones it never reached. Under `dvc repro`
    DVC has removed the stage's outputs before the command, so what remains is exactly the state before the run.
    Outputs the run never touched are left as they were."""
    removed = []
    for path in declared_outputs(argv):
        if written_since(path, started):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path.as_posix())
    return removed


def stage_main(name: str, trains: bool = False) -> Callable:
    """Run a stage's main(); a known failure becomes one paragraph on stderr and exit status 2. Any failure
    (an error, Ctrl-C) first removes what the run had written of the stage's outputs. A training stage (`trains`)
    with compute.num_processes > 1 runs its main() in that many processes under `accelerate launch`
    (cotlab.distributed); this process waits for them and cleans up if they fail."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run() -> None:
            started, started_wall = time.perf_counter(), time.time()
            stage = " ".join([name, *sys.argv[1:]])
            quiet_bars_in_logs()
            try:
                params = load_params("params.yaml")
                if trains and params.compute.num_processes > 1 and not distributed.launched():
                    status = distributed.relaunch(params.compute, sys.argv)
                    if status:
                        raise SystemExit(status)
                else:
                    distributed.pin_device()
                    seed_everything(params.seed)  # the same seed in every process: adapters start alike
                    fn(params, *sys.argv[1:])
            except BaseException as e:
                if isinstance(e, SystemExit) and not e.code:
                    raise
                try:
                    # Under accelerate the launching process cleans up, once every process has stopped.
                    removed = [] if distributed.launched() else remove_partial_outputs(sys.argv, started_wall)
                except Exception as cleanup_error:  # never hide the stage's own error behind the cleanup's
                    print(f"cotlab: stage {stage}: could not remove its partial outputs: {cleanup_error!r}",
                          file=sys.stderr)
                    removed = []
                if removed:
                    print(f"cotlab: stage {stage} failed; removed the outputs it had written: {', '.join(removed)}",
                          file=sys.stderr)
                if isinstance(e, KNOWN_FAILURES):
                    message = f"cotlab: stage {name} failed ({type(e).__name__}): {e}"
                    print(textwrap.fill(message, width=110), file=sys.stderr)
                    sys.exit(2)
                raise
            if distributed.is_main_process():
                print(f"cotlab: {stage} done in {time.perf_counter() - started:.1f} s", file=sys.stderr)

        return run

    return wrap
