"""Per-stage overhead of a stage without model work (interpreter, imports, params, one MLflow run, outputs):
`python stages/<stage>.py <args>` from this tree against the same stage from another revision (default: the commit
before the speed work), alternating, each in a scratch copy with its own MLflow store.

    python benchmarks/stage_overhead.py [--before REV] [--runs 5] [--stage data] [--args strategyqa]
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CACHE, arg

ROOT = Path(__file__).resolve().parents[1]



def checkout(rev: str, dest: Path) -> Path:
    """The tracked files of `rev` (its src/ and stages/), unpacked into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "src", "stages", "params.yaml"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_once(tree: Path, workdir: Path, stage: str, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
           "COTLAB_PROGRESS": "0"}
    started = time.perf_counter()
    subprocess.run([sys.executable, str(tree / "stages" / f"{stage}.py"), *args], cwd=workdir, env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - started


def main(argv):
    before = arg(argv, "--before", "df43a8c")
    runs, stage = int(arg(argv, "--runs", "5")), arg(argv, "--stage", "data")
    args = arg(argv, "--args", "strategyqa").split()
    with tempfile.TemporaryDirectory(prefix="cotlab-overhead-") as scratch:
        scratch = Path(scratch)
        trees = {"before": checkout(before, (scratch / "before").resolve()), "after": ROOT}
        work = {}
        for name, tree in trees.items():
            work[name] = scratch / f"work-{name}"
            work[name].mkdir()
            shutil.copy(tree / "params.yaml", work[name] / "params.yaml")
        times = {name: [] for name in trees}
        for name, tree in trees.items():
            run_once(tree, work[name], stage, args)  # warm-up: file cache, a new MLflow store's tables
        for _ in range(runs):
            for name, tree in trees.items():
                times[name].append(run_once(tree, work[name], stage, args))
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = {"stage": f"{stage} {' '.join(args)}", "before_rev": before, "runs": runs, "times_s": times,
              "median_s": medians, "speedup": medians["before"] / medians["after"]}
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"stage_overhead-{stage}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
