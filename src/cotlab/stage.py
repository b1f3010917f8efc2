"""What every stage script shares: params, the paths of dvc.yaml, and one clear message on a known failure."""

from __future__ import annotations

import functools
import inspect
import os
import random
import shutil
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import Callable, Literal, get_args, get_origin

from cotlab import distributed
from cotlab.config import SYSTEMS, ConfigError, Params, flatten, load_params
from cotlab.schema import DataError
from cotlab.errors import BackendFailedError, ModelLoadError, TrainingDivergedError
from cotlab.progress import quiet_bars_in_logs

# OSError: a path that cannot be read or written (permissions, a full disk); its message names the path.
KNOWN_FAILURES = (BackendFailedError, ConfigError, DataError, ModelLoadError, OSError, TrainingDivergedError)

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


def checkpoint_dir(variant: str, task: str) -> Path:
    """A training stage's resume state (markovian@), outside every DVC out like the teacher's response cache
    (`.cotlab-cache/`, or $COTLAB_CACHE_DIR): DVC neither removes it before a run nor misses it in a `dvc exp run
    --temp` copy, so the stage re-runs only when its deps or params change. The state's fingerprint (params,
    data, base weights, seed) decides whether a run may resume from it."""
    return Path(os.environ.get("COTLAB_CACHE_DIR") or ".cotlab-cache") / "checkpoints" / variant / task


def max_new_tokens(params: Params, template: str) -> int:
    sizes = params.sizes
    return sizes.max_new_tokens_cot if template == "cot" else sizes.max_new_tokens_direct


def mlflow_params(params: Params) -> dict:
    return flatten(params.as_dict())


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (CPU and every CUDA device), as transformers.set_seed does,
    but without importing transformers. Called before a stage creates anything, so LoRA's A matrices, CODI's
    projection and new token rows, dropout masks and sampled CoTs all follow `seed`. Torch is seeded when the
    stage's script has imported it (every stage that builds a model imports cotlab.models or a method at its top);
    a stage without model work does not pay torch's import (~3 s) for a seed it never draws from."""
    import numpy

    random.seed(seed)
    numpy.random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def declared_stage(argv: list[str]):
    """The DVC stage whose command runs the script argv[0] with argv[1:], read through DVC itself (so foreach and
    matrix expand exactly as `dvc repro` expands them); None when there is no dvc.yaml or no such stage."""
    if not Path("dvc.yaml").is_file():
        return None
    from dvc.repo import Repo

    with Repo(".", uninitialized=True) as repo:  # a copy without .dvc/ still declares its outputs
        for stage in repo.index.stages:
            words = stage.cmd.split()
            if len(words) >= 2 and Path(words[1]).name == Path(argv[0]).name and words[2:] == argv[1:]:
                return stage
    return None


def declared_outputs(argv: list[str], stage=None) -> list[Path]:
    """The outs, metrics and plots that dvc.yaml declares for the stage run by argv, persistent outs excepted:
    they exist to outlive a failed run (resume state). Empty when there is no such stage."""
    stage = stage or declared_stage(argv)
    return [] if stage is None else [Path(str(out.def_path)) for out in stage.outs if not out.persist]


def restore_command(stage) -> str | None:
    """The command that brings back a stage's last good outputs: its git-tracked ones (cache: false) from the last
    commit, its cached ones from dvc.lock. None when neither holds any."""
    import subprocess

    outs = [out for out in stage.outs if not out.persist]
    tracked = subprocess.run(["git", "ls-files", "--", *(str(out.def_path) for out in outs if not out.use_cache)],
                             capture_output=True, text=True).stdout.split()
    locked = any(out.use_cache for out in outs) and Path("dvc.lock").is_file() and \
        f"  {stage.addressing}:\n" in Path("dvc.lock").read_text()
    parts = ([f"git checkout HEAD -- {' '.join(tracked)}"] if tracked else []) + \
        ([f"dvc checkout {stage.addressing}"] if locked else [])
    return " && ".join(parts) or None


def written_since(path: Path, started: float) -> bool:
    if path.is_file():
        return path.stat().st_mtime >= started
    return path.is_dir() and any(f.stat().st_mtime >= started for f in path.rglob("*") if f.is_file())


def remove_partial_outputs(argv: list[str], started: float, stage=None) -> list[str]:
    """After a failure: remove each declared output the run wrote (a file, or a whole folder with any new file in
    it), so a failed stage leaves no output that looks complete beside the ones it never reached. Under `dvc repro`
    DVC has removed the stage's outputs before the command, so what remains is exactly the state before the run.
    Outputs the run never touched are left as they were."""
    removed = []
    for path in declared_outputs(argv, stage):
        if written_since(path, started):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path.as_posix())
    return removed


def aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.cotlab-previous")


def set_aside(outputs: list[Path]) -> list[Path]:
    """Run by hand (DVC removes a stage's outputs itself before running it): move each existing output next to
    itself, so that a failed run can put the previous one back and a good run drops it. A rename: no copy."""
    moved = []
    for path in outputs:
        if path.exists() or path.is_symlink():
            if aside(path).exists():
                shutil.rmtree(aside(path)) if aside(path).is_dir() else aside(path).unlink()
            path.rename(aside(path))
            moved.append(path)
    return moved


def put_back(moved: list[Path], outputs: list[Path]) -> list[str]:
    """After a failed run by hand: whatever the run wrote goes, and each output set aside comes back."""
    for path in outputs:
        if path.exists():
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for path in moved:
        aside(path).rename(path)
    return [path.as_posix() for path in moved]


def drop_aside(moved: list[Path]) -> None:
    for path in moved:
        shutil.rmtree(aside(path)) if aside(path).is_dir() else aside(path).unlink()


def check_arguments(fn: Callable, params: Params, args: list[str]) -> None:
    """The command line against the stage's main(params, ...): how many arguments, a `task` that task_specs
    defines, and a Literal-annotated argument among its values. A ConfigError naming the argument, not a
    KeyError or TypeError from inside the stage."""
    signature = inspect.signature(fn)
    names = list(signature.parameters.values())[1:]
    usage = " ".join(p.name.upper() if p.default is p.empty else f"[{p.name.upper()}]" for p in names)
    try:
        bound = signature.bind(params, *args)
    except TypeError:
        raise ConfigError(f"arguments: {Path(sys.argv[0]).name} takes {usage or 'no arguments'}, got "
                          f"{' '.join(args) or 'none'}") from None
    for p in names:
        if p.name not in bound.arguments:
            continue
        value = bound.arguments[p.name]
        allowed = get_args(p.annotation) if get_origin(p.annotation) is Literal else None
        if p.name == "task" and value not in params.task_specs:
            raise ConfigError(f"argument TASK: {value!r} is not a task (task_specs defines: "
                              f"{', '.join(sorted(params.task_specs))})")
        if allowed and value not in allowed:
            raise ConfigError(f"argument {p.name.upper()}: {value!r} is not one of {', '.join(allowed)}")


def stage_main(name: str, trains: bool = False) -> Callable:
    """Run a stage's main(); a known failure becomes one paragraph on stderr and exit status 2. A failure (an error,
    Ctrl-C) loses nothing: run by hand, the outputs it replaced come back (report_failure); under DVC, what it
    wrote goes and the message ends with the command that restores the last good outputs. A training stage (`trains`)
    with compute.num_processes > 1 runs its main() in that many processes under `accelerate launch`
    (cotlab.distributed); this process waits for them and cleans up if they fail."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run() -> None:
            started, started_wall = time.perf_counter(), time.time()
            stage = " ".join([name, *sys.argv[1:]])
            by_hand = "DVC_STAGE" not in os.environ and not distributed.launched()
            declared, outputs, moved = None, [], []
            quiet_bars_in_logs()
            try:
                params = load_params("params.yaml")
                check_arguments(fn, params, sys.argv[1:])
                if by_hand:
                    declared = declared_stage(sys.argv)
                    outputs = declared_outputs(sys.argv, declared)
                    moved = set_aside(outputs)
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
                    drop_aside(moved)
                    raise
                report_failure(e, stage, name, by_hand, declared, outputs, moved, started_wall)
            drop_aside(moved)
            if distributed.is_main_process():
                print(f"cotlab: {stage} done in {time.perf_counter() - started:.1f} s", file=sys.stderr)

        return run

    return wrap


def report_failure(error: BaseException, stage: str, name: str, by_hand: bool, declared, outputs: list[Path],
                   moved: list[Path], started_wall: float) -> None:
    """Clean up after a failed run and say so: by hand, the previous outputs come back; under DVC (which removed
    them before the run), what the run wrote goes and the message ends with the command that restores the last
    good outputs. A known failure (a bad param, file, row or model, an unwritable path) is one paragraph and exit
    status 2; anything else keeps its traceback."""
    notes = []
    try:
        if by_hand:
            restored = put_back(moved, outputs)
            if restored:
                notes.append(f"its previous outputs are back as they were: {', '.join(restored)}")
        elif not distributed.launched():  # under accelerate the launching process cleans up
            declared = declared_stage(sys.argv)
            removed = remove_partial_outputs(sys.argv, started_wall, declared)
            if removed:
                notes.append(f"removed the outputs it had written: {', '.join(removed)}")
            command = declared and restore_command(declared)
            if command:
                notes.append(f"to get its last good outputs back, run: {command}")
    except Exception as cleanup_error:  # never hide the stage's own error behind the cleanup's
        notes.append(f"could not clean up its outputs: {cleanup_error!r}")
    if isinstance(error, KNOWN_FAILURES):
        message = f"cotlab: stage {name} failed ({type(error).__name__}): {error}"
        print(textwrap.fill(message, width=110), file=sys.stderr)
    elif isinstance(error, KeyboardInterrupt):
        print(f"cotlab: stage {stage} interrupted", file=sys.stderr)
    elif not isinstance(error, SystemExit):
        traceback.print_exception(error)
    for note in notes:
        print(textwrap.fill(f"cotlab: stage {stage} failed; {note}", width=110), file=sys.stderr)
    if isinstance(error, KNOWN_FAILURES):
        sys.exit(2)
    sys.exit(error.code if isinstance(error, SystemExit) else 130 if isinstance(error, KeyboardInterrupt) else 1)
