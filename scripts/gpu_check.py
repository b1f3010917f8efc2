"""The GPU check: every training stage for a few steps on one GPU, then the SFT throughput benchmark.

In a scratch copy of the project, at a small size: the commands DVC would run for TARGETS, in DVC's order, run
directly (no hashing, no cache: the check is of the code on the GPU, not of DVC). On CUDA: the embedded model in
bf16 with SDPA attention and padding-free batches, QLoRA 4-bit on sft, vLLM (when installed) for drafts,
evaluation and Markovian sampling, and `compute.num_processes` = the GPUs present. Writes a JSON report: the
environment, each stage's seconds, exit status and last log lines, and the benchmark's figures.

    python scripts/gpu_check.py [--out gpu_check.json] [--cpu]   # --cpu: a smoke run at tiny scale, no GPU needed

scripts/gpu_check.sh installs what it needs on a bare machine first; the two together are sized for 10 minutes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
# One task per system, each through training and evaluation.
TARGETS = ["eval_dpo@syllogism", "evaluate@sft-syllogism", "eval_codi@personal_relations",
           "eval_markovian@arithmetic", "transplant@transplant-svamp"]


def overrides(cuda: bool, gpus: int) -> dict:
    small = {"n_train": 32, "n_test": 16, "n_pairs": 16, "n_attribution": 4, "eval_batch_size": 16}
    return {
        "scale": "demo" if cuda else "tiny",
        f"scales.{'demo' if cuda else 'tiny'}": small,
        "tasks": ["syllogism"], "dpo.tasks": ["syllogism"], "codi.tasks": ["personal_relations"],
        "markovian.tasks": ["arithmetic"], "transplant.tasks": ["svamp"],
        "markovian.steps": 4, "markovian.eval_every": 2, "markovian.save_every": 2, "markovian.n_eval": 8,
        "markovian.questions_per_step": max(gpus, 1),
        "transplant.steps": 4, "transplant.eval_every": 2, "transplant.n_curve": 4,
        "transplant.batch_size": 2 * max(gpus, 1),
        "sft.quantization": "4bit" if cuda else "none",
        "generation.backend": "auto",
        "compute.num_processes": max(gpus, 1),
    }


def deep_set(params: dict, dotted: str, value) -> None:
    *parents, key = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    if isinstance(value, dict) and isinstance(node.get(key), dict):
        node[key].update(value)
    else:
        node[key] = value


def scratch_project(dest: Path, settings: dict) -> Path:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    yaml = YAML()
    params = yaml.load(dest / "params.yaml")
    for dotted, value in settings.items():
        deep_set(params, dotted, value)
    yaml.dump(params, dest / "params.yaml")
    return dest


def commands(project: Path, targets: list[str] = TARGETS) -> list[tuple[str, str]]:
    """(stage name, command) for `targets` and what they need, in an order DVC could run them."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(project), uninitialized=True) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        stages = {s.name: s for s in repo.index.stages}
        needed = set()
        for target in targets:
            needed |= {target} | {s.name for s in nx.descendants(graph, stages[target])}
        order = [s for s in reversed(list(nx.topological_sort(graph))) if s.name in needed]
        return [(s.name, s.cmd) for s in order]


def run_stage(project: Path, name: str, cmd: str, env: dict) -> tuple[dict, str]:
    """One stage's command as DVC runs it (cwd = the project, DVC_STAGE set): its report row and its stderr."""
    started = time.perf_counter()
    done = subprocess.run(cmd, shell=True, cwd=project, env={**env, "DVC_STAGE": name}, capture_output=True, text=True)
    row = {"stage": name, "seconds": round(time.perf_counter() - started, 1), "status": done.returncode,
           "log_tail": (done.stdout + done.stderr).strip().splitlines()[-3:]}
    print(f"{name}: exit {row['status']} in {row['seconds']} s", flush=True)
    return row, done.stderr


def environment() -> dict:
    import torch

    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "vllm", "bitsandbytes", "liger_kernel",
                 "flash_attn"):
        try:
            versions[name] = __import__(name).__version__ if importlib.util.find_spec(name) else None
        except Exception as e:  # an installed package that fails to import is a finding
            versions[name] = f"import failed: {e!r}"
    cuda = torch.cuda.is_available()
    return {"cuda": cuda, "gpus": torch.cuda.device_count() if cuda else 0,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu", "versions": versions}


def main(argv: list[str]) -> int:
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("gpu_check.json")
    env = environment()
    if not env["cuda"] and "--cpu" not in argv:
        print("gpu_check: no CUDA device; run with --cpu for a smoke run at tiny scale", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report: dict = {"environment": env, "targets": TARGETS, "stages": [], "ok": True}
    with tempfile.TemporaryDirectory(prefix="cotlab-gpu-check-") as tmp:
        project = scratch_project(Path(tmp), overrides(env["cuda"], env["gpus"]))
        report["params"] = overrides(env["cuda"], env["gpus"])
        stage_env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
                     "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        for name, cmd in commands(project):
            row, stderr = run_stage(project, name, cmd, stage_env)
            report["stages"].append(row)
            if row["status"]:
                report["ok"] = False
                print(stderr[-3000:], file=sys.stderr)
                break
        report["metrics"] = {str(p.relative_to(project)): json.loads(p.read_text())
                             for p in sorted((project / "metrics").rglob("*.json"))} if report["ok"] else {}
        report["manifests"] = {str(p.relative_to(project)): {k: json.loads(p.read_text()).get(k)
                                                             for k in ("method", "quantization", "dtype")}
                               for p in sorted((project / "models").rglob("manifest.json"))}
    bench = [sys.executable, str(ROOT / "benchmarks" / "sft_throughput.py"), "--n", "32", "--repeats", "1"]
    bench += ["--device", "cuda"] if env["cuda"] else ["--tiny"]
    t0 = time.perf_counter()
    done = subprocess.run(bench, cwd=ROOT / "benchmarks", capture_output=True, text=True)
    report["sft_throughput"] = {"status": done.returncode, "seconds": round(time.perf_counter() - t0, 1),
                                "result": _last_json(done.stdout), "log_tail": done.stderr.strip().splitlines()[-3:]}
    report["ok"] = report["ok"] and done.returncode == 0
    report["seconds"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in ("ok", "seconds")} | {"sft_throughput": report["sft_throughput"]["result"]},
                     indent=2, default=str))
    return 0 if report["ok"] else 1


def _last_json(text: str):
    start = text.rfind("\n{")
    try:
        return json.loads(text[start:] if start >= 0 else text)
    except json.JSONDecodeError:
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
