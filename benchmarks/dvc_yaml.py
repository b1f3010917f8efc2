"""DVC's YAML work around a stage, with libyaml's C parser (ruamel.yaml.clib, a cotlab dependency) against ruamel's
pure-Python parser, in one process.

Around every stage `dvc repro` parses dvc.yaml and dvc.lock with ruamel's safe loader (libyaml's parser when
ruamel.yaml.clib is installed), then rewrites dvc.lock through a round-trip load and dump, which is pure Python
either way. Part 1 times each of these on a lock file (default: this checkout's dvc.lock; the tiny DAG's is larger);
part 2 (`--repro DIR STAGE`) alternates `dvc repro -f -s STAGE` in a finished project DIR with the C parser on and
forced off, so the ratio covers DVC's whole per-stage overhead for that stage.

    python benchmarks/dvc_yaml.py [--lock dvc.lock] [--runs 5] [--repro DIR STAGE]
"""
from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

from _common import CACHE, arg

ROOT = Path(__file__).resolve().parents[1]

# `dvc` with ruamel's C parser removed, as it runs without ruamel.yaml.clib
PURE_DVC = ("import sys, ruamel.yaml.main as m; m.CParser = None; from dvc.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
DVC = "import sys; from dvc.cli import main; sys.exit(main(sys.argv[1:]))"



def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def parse_times(text: str, runs: int) -> dict:
    c_parser, pure = YAML(typ="safe"), YAML(typ="safe", pure=True)
    if "CParser" not in c_parser.Parser.__name__:
        sys.exit("ruamel.yaml.clib is not installed: `make install` installs it")
    rt = YAML()
    data = rt.load(text)
    return {
        "safe_load_c_s": timed(lambda: c_parser.load(text), runs),
        "safe_load_pure_s": timed(lambda: pure.load(text), runs),
        "roundtrip_load_s": timed(lambda: rt.load(text), runs),
        "roundtrip_dump_s": timed(lambda: rt.dump(data, io.StringIO()), runs),
    }


def repro_times(project: Path, stage: str, runs: int) -> dict:
    times = {"c": [], "pure": []}
    for _ in range(runs + 1):  # the first pair warms the file cache and is dropped
        for name, code in (("c", DVC), ("pure", PURE_DVC)):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code, "repro", "-f", "-s", stage], cwd=project, check=True,
                           capture_output=True)
            times[name].append(time.perf_counter() - started)
    return {name: t[1:] for name, t in times.items()}


def main(argv):
    runs = int(arg(argv, "--runs", "5"))
    lock = Path(arg(argv, "--lock", str(ROOT / "dvc.lock")))
    text = lock.read_text()
    result = {"lock": str(lock), "lock_kb": round(len(text.encode()) / 1024, 1), "runs": runs,
              **parse_times(text, runs)}
    result["safe_load_speedup"] = result["safe_load_pure_s"] / result["safe_load_c_s"]
    if "--repro" in argv:
        project, stage = Path(argv[argv.index("--repro") + 1]), argv[argv.index("--repro") + 2]
        times = repro_times(project, stage, max(runs // 2, 2))
        result["repro_stage"] = stage
        result["repro_times_s"] = times
        result["repro_median_s"] = {name: statistics.median(t) for name, t in times.items()}
        result["repro_speedup"] = result["repro_median_s"]["pure"] / result["repro_median_s"]["c"]
    CACHE.mkdir(exist_ok=True)
    (CACHE / "dvc_yaml.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
