"""The teacher and judge stages against a real OpenAI-compatible server: llama-cpp-python's, serving the embedded
SmolLM2-135M-Instruct GGUF file as it is, on 127.0.0.1.

1. The server's own virtualenv (`--venv`, default .venv-llama): `pip install 'llama-cpp-python[server]'` builds
   llama.cpp from source, about 6 minutes on 2 cores, once.
2. A scratch copy of the project at a small size runs what judge@<task> needs (drafts, the oracle teacher, SFT,
   CoT distillation, DPO) as DVC would.
3. The teacher stage runs against the server with `teacher.backend: openai` at concurrency 1 and at `--concurrency`,
   each on an empty response cache, then once more on the filled cache; the judge stage runs with
   `judge.backend: openai`. The report gives requests, failures, tokens and wall time of each run, and the
   concurrency speed-up.

    python scripts/openai_server_check.py [--task strategyqa] [--concurrency 8] [--out openai_server_check.json]
    python scripts/openai_server_check.py --base-url http://127.0.0.1:8000/v1 --model NAME   # a server already up
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import ROOT, commands, deep_set, run_stage, scratch_project  # noqa: E402

LLAMA_CPP = "llama-cpp-python[server]==0.3.36"
# A portable x86-64 build (AVX2, no AVX-512/AMX): the native build's AMX kernels crash with SIGSEGV in
# ggml_backend_amx_mul_mat on this workplace's virtual machines, whose kernel does not grant the AMX tiles.
CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF "
              "-DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF")
SERVED_NAME = "smollm2-135m-instruct"


def server_python(venv: Path) -> Path:
    """The server's interpreter, installing llama-cpp-python into `venv` first when it is not there."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import llama_cpp.server"], capture_output=True).returncode == 0:
        return python
    print(f"openai_server_check: building {LLAMA_CPP} into {venv} (several minutes)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-cache-dir", LLAMA_CPP], check=True, env=env)
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(python: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """llama-cpp-python's server on the embedded GGUF file; returns once /v1/models answers."""
    from cotlab.models import embedded_gguf

    port = free_port()
    cmd = [str(python), "-m", "llama_cpp.server", "--model", os.path.join(*embedded_gguf()), "--model_alias",
           SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
           "--n_threads", str(os.cpu_count() or 1), "--verbose", "False"]
    process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return process, base_url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"the server did not answer on {base_url} within 120 s: {log.read_text()[-2000:]}")


def set_params(project: Path, settings: dict) -> None:
    yaml = YAML()
    params = yaml.load(project / "params.yaml")
    for dotted, value in settings.items():
        deep_set(params, dotted, value)
    yaml.dump(params, project / "params.yaml")


def run(project: Path, name: str, cmd: str, env: dict) -> dict:
    """gpu_check's run_stage, stopping the check at the first failure."""
    row, stderr = run_stage(project, name, cmd, env)
    if row["status"]:
        raise RuntimeError(f"{name} failed ({cmd}):\n{stderr[-3000:]}")
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="strategyqa", help="a yes/no task of the self-improving system")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight in the concurrent run")
    parser.add_argument("--scale", default="demo", choices=["tiny", "demo"],
                        help="the students' model (tiny: a random one, whose drafts ask no questions to judge)")
    parser.add_argument("--n-train", type=int, default=32, help="teacher requests (train questions)")
    parser.add_argument("--n-test", type=int, default=32, help="test questions (judged in both orders)")
    parser.add_argument("--max-tokens", type=int, default=150, help="teacher.max_tokens (the source write-up's: 150)")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-llama", help="the server's virtualenv")
    parser.add_argument("--base-url", help="a server already running: no llama-cpp-python")
    parser.add_argument("--model", default=SERVED_NAME, help="the served model's name, with --base-url")
    parser.add_argument("--out", type=Path, default=Path("openai_server_check.json"))
    args = parser.parse_args(argv)

    report: dict = {"task": args.task, "scale": args.scale, "server": args.base_url or LLAMA_CPP}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cotlab-openai-check-") as tmp:
        tmp = Path(tmp)
        server, base_url = None, args.base_url
        if base_url is None:
            server, base_url = start_server(server_python(args.venv), tmp / "server.log")
        try:
            project = scratch_project(tmp / "project", {
                "scale": args.scale, f"scales.{args.scale}": {"n_train": args.n_train, "n_test": args.n_test,
                                                               "n_pairs": 16, "eval_batch_size": 32},
                "tasks": [args.task], "dpo.tasks": [args.task], "teacher.backend": "oracle"})
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
            judge = f"judge@{args.task}"
            upstream = [(name, cmd) for name, cmd in commands(project, [judge]) if name != judge]
            report["upstream"] = [run(project, name, cmd, env) for name, cmd in upstream]
            served = {"base_url": base_url, "model": args.model, "api_key_env": None}
            set_params(project, {**{f"teacher.{k}": v for k, v in served.items()}, "teacher.backend": "openai",
                                 "teacher.max_tokens": args.max_tokens,
                                 **{f"judge.{k}": v for k, v in served.items()}, "judge.backend": "openai",
                                 "judge.concurrency": args.concurrency})
            teacher_cmd = f"python stages/teacher.py {args.task}"
            runs = {}
            for label, concurrency, cache in (("sequential", 1, "a"), ("concurrent", args.concurrency, "b"),
                                              ("cached", args.concurrency, "b")):
                set_params(project, {"teacher.concurrency": concurrency})
                row = run(project, f"teacher@{args.task}", teacher_cmd, {**env, "COTLAB_CACHE_DIR": str(tmp / cache)})
                metrics = json.loads((project / "metrics" / "teacher" / f"{args.task}.json").read_text())
                texts = [json.loads(line)["text"] or "" for line in
                         (project / "data" / "teacher" / args.task / "train.jsonl").read_text().splitlines()]
                runs[label] = {"concurrency": concurrency, "seconds": row["seconds"], **metrics,
                               "final_assessment_rate": sum("answer is" in t.lower() for t in texts) / len(texts),
                               "first_reply": texts[0][:300]}
            report["teacher"] = runs
            report["teacher_speedup"] = round(runs["sequential"]["usage.wall_s"] / runs["concurrent"]["usage.wall_s"], 2)
            row = run(project, judge, f"python stages/judge.py {args.task}", {**env, "COTLAB_CACHE_DIR": str(tmp / "j")})
            report["judge"] = {"seconds": row["seconds"],
                               **json.loads((project / "metrics" / "judge" / f"{args.task}.json").read_text())}
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2))
    keep = ("concurrency", "seconds", "usage.wall_s", "usage.requests", "usage.sent", "usage.answered",
            "usage.failed", "usage.cache_hits", "usage.completion_tokens", "final_assessment_rate")
    print(json.dumps({"teacher": {k: {f: v.get(f) for f in keep} for k, v in report["teacher"].items()},
                      "teacher_speedup": report["teacher_speedup"],
                      "judge": {k: report["judge"].get(k) for k in ("seconds", "n_compared", "wins", "losses", "ties",
                                                                    "win_rate", "position_consistency",
                                                                    "usage.requests", "usage.failed", "usage.wall_s")},
                      "seconds": report["seconds"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
