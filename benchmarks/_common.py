"""Shared by the benchmarks: the model under test, real data, a peak-RSS sampler and a timer."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from cotlab.data.sources import load_task
from cotlab.models import EMBEDDED, TINY, prepare_base

CACHE = Path(__file__).parent / "results"


def base_model(name: str, dtype: str = "float32") -> Path:
    """models/base for `name` (embedded or tiny-random), prepared once and cached under benchmarks/results/. Stored
    in float32 by default, so a bf16 copy is one cast away (load_checkpoint(..., dtype="bfloat16"))."""
    path = CACHE / f"base-{name}-{dtype}"
    if not (path / "manifest.json").is_file():
        prepare_base(name, path, dtype=dtype)
    return path


def arg(argv: list[str], name: str, default: str) -> str:
    """The value after `name` on the command line, or `default`."""
    return argv[argv.index(name) + 1] if name in argv else default


def model_arg(argv: list[str]) -> str:
    return TINY if "--tiny" in argv else EMBEDDED


def examples(task: str, n: int):
    specs = {"gsm8k": {"source": "gsm8k"}, "strategyqa": {"source": "strategyqa"}}
    return load_task(task, specs[task], n, n, seed=0)


class PeakRSS:
    """Samples this process's resident memory every 20 ms; `peak_mb` is the high-water mark inside the block."""

    def __enter__(self):
        self.peak = self.start = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn):
    """(fn(), its wall seconds, the peak RSS in MB while it ran)."""
    with PeakRSS() as mem:
        started = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - started, mem.peak_mb
