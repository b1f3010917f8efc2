"""Teacher stage throughput against a local OpenAI-protocol server with 200 ms latency per request:
cotlab's async client at concurrency 16 vs a sequential loop with the sync client (the obvious script), and a
second run answered from the response cache.

    python benchmarks/teacher_concurrency.py [--n 200] [--cache-rows 1000]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import contextlib
import subprocess
import urllib.request

from _common import CACHE, examples
from cotlab.teacher import Request, Teacher, TeacherConfig, teacher_messages

SERVER = Path(__file__).resolve().parents[1] / "tests" / "openai_server.py"


@contextlib.contextmanager
def server_process(latency_s: float):
    """The test suite's OpenAI-protocol server in its own process, so it does not share our GIL."""
    process = subprocess.Popen([sys.executable, str(SERVER), "--latency-s", str(latency_s)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield process.stdout.readline().strip()
    finally:
        process.stdin.close()
        process.wait(timeout=10)


def attempts(base_url: str) -> int:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats") as response:
        return json.loads(response.read())["attempts"]


def requests(n: int, salt: str) -> list[Request]:
    train = examples("strategyqa", 10_000)["train"]
    rows = [train[i % len(train)] for i in range(n)]
    return [Request(f"{salt}-{i}", teacher_messages(ex, f"Answer: Yes - draft {salt} {i}")) for i, ex in enumerate(rows)]


def sequential_sync(base_url, reqs) -> float:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=4)
    start = time.perf_counter()
    for r in reqs:
        client.chat.completions.create(model="bench", messages=r.messages, temperature=0.0, max_tokens=512)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--cache-rows", type=int, default=1000)
    args = parser.parse_args()
    out = {"n": args.n, "latency_s": 0.2}
    tmp = tempfile.mkdtemp()

    def teacher(base_url: str, concurrency: int, cache: str) -> Teacher:
        return Teacher(TeacherConfig(backend="openai", model="bench", base_url=base_url, api_key_env=None,
                                     concurrency=concurrency), cache_dir=Path(tmp) / cache)

    with server_process(0.2) as base_url:
        out["sequential_sync_s"] = round(sequential_sync(base_url, requests(args.n, "sync")), 3)
        _, usage = teacher(base_url, 1, "c1").run(requests(args.n, "c1"))
        out["concurrency_1_s"] = usage.wall_s
        _, usage = teacher(base_url, 16, "c16").run(requests(args.n, "c16"))
        out["concurrency_16_s"] = usage.wall_s
        out["speedup_vs_sequential_sync"] = round(out["sequential_sync_s"] / out["concurrency_16_s"], 2)
        out["speedup_vs_concurrency_1"] = round(out["concurrency_1_s"] / out["concurrency_16_s"], 2)

    with server_process(0.0) as base_url:
        rows = requests(args.cache_rows, "cache")
        _, fill = teacher(base_url, 64, "cache").run(rows)
        sent_before = attempts(base_url)
        start = time.perf_counter()
        _, usage = teacher(base_url, 64, "cache").run(rows)
        out.update({"cache_rows": args.cache_rows, "cache_fill_s": fill.wall_s,
                    "cache_rerun_s": round(time.perf_counter() - start, 3),
                    "cache_rerun_requests_sent": attempts(base_url) - sent_before,
                    "cache_rerun_hits": usage.cache_hits})
    print(json.dumps(out, indent=2))
    CACHE.mkdir(exist_ok=True)
    (CACHE / "teacher_concurrency.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
