"""Experiments on the tiny DAG (tests/dag.py), in a copy of it: `dvc exp run --temp` re-runs only what a param
touches, and queued experiments run in parallel into the same MLflow store that scripts/seeds.py reads."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dag import copy_dag, runs, sh, sh_env, shared_dag

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture
def repo(tmp_path_factory, worker_id, tmp_path):
    return {"root": copy_dag(shared_dag(tmp_path_factory, worker_id), tmp_path / "repo")}


def test_temp_and_queued_experiments_land_in_the_same_store(repo):
    root = repo["root"]
    # Phase C's learning rate: DPO, its evaluations, attribution, judge and the round re-run; earlier stages do not,
    # nor the Markovian stages, whose resume state lives outside DVC's outs (absent from the temp copy, it once
    # re-ran them). check_params reads every param, so it runs, and changes nothing downstream.
    out = sh(root, "dvc", "exp", "run", "--temp", "-S", "dpo.lr=1e-4")
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran == {"check_params", "dpo@strategyqa", "eval_dpo@strategyqa", "attribution@strategyqa",
                   "judge@strategyqa", "self_guided@round1", "compare"}, ran
    # Two queued experiments run at once (two workers), writing to the one SQLite store in parallel.
    sh(root, "dvc", "exp", "run", "--queue", "-S", "dpo.lr=3e-4")
    sh(root, "dvc", "exp", "run", "--queue", "-S", "dpo.lr=5e-4")
    # The workers are daemons that inherit the starter's stdout: a captured pipe would stay open until they exit,
    # and `subprocess.run` would wait on it. They write to a file; the test waits on `dvc queue status` alone.
    with open(root.parent / "queue_start.log", "w") as log:
        subprocess.run(("dvc", "queue", "start", "-j", "2"), cwd=root, stdout=log, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, check=True, timeout=120, env=sh_env())
    deadline = time.time() + 1800  # two DPO re-runs at once beside the other xdist worker: ~5-12 min on 2 cores
    while time.time() < deadline:
        status = sh(root, "dvc", "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") == 2, status
    lrs = {r.data.params.get("dpo.lr") for r in runs(root) if r.data.tags.get("stage") == "dpo@strategyqa"}
    assert {"0.0001", "0.0003", "0.0005"} <= lrs
    assert {r.data.params.get("dpo.lr") for r in runs(root) if r.data.tags.get("stage") == "sft@strategyqa"} == {"5e-05"}
    queued = {"0.0003", "0.0005"}
    by_exp: dict[str, set[str]] = {}
    for r in runs(root):
        if r.data.params.get("dpo.lr") in queued and r.data.tags["dvc_exp_name"] != "workspace":
            by_exp.setdefault(r.data.tags["dvc_exp_name"], set()).add(r.info.run_name)
    assert len(by_exp) == 2
    # Every stage each queued experiment re-ran has its run (the two experiments re-ran the same stages).
    first, second = by_exp.values()
    assert first == second and {"dpo@strategyqa", "eval_dpo@strategyqa"} <= first
    names = {r.data.tags["dvc_exp_name"] for r in runs(root) if r.data.params.get("dpo.lr") in ("0.0001", *queued)}
    assert "workspace" not in names and len(names) == 3
    assert not list(root.glob(".dvc/tmp/exps/**/mlflow.db"))
    shown = json.loads(sh(root, "dvc", "exp", "show", "--json"))
    text = json.dumps(shown)
    assert "0.0001" in text and "0.0003" in text and "0.0005" in text
    # The sweep report reads the same experiments: one column per value of the param, each headline's value and p
    # per column, and its mean and spread across them.
    table = sh(root, sys.executable, str(ROOT / "scripts" / "seeds.py"), "--by", "dpo.lr").splitlines()
    assert all(f"dpo.lr={v}" in table[0] for v in ("5e-05", "0.0001", "0.0003", "0.0005")), table[0]
    row = next(line for line in table if line.startswith("| self_improving."))
    assert row.count("p=") == 4 and "mean" in row and "sd" in row, row
    assert any(line.startswith("| check: ") for line in table)
