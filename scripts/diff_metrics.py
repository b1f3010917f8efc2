"""Diff two runs' metrics: every JSON file under metrics/ of run A against run B, key by key.

    python scripts/diff_metrics.py <run A>/metrics <run B>/metrics [--all]

Wall-clock figures (runtime, seconds, *_s, Markovian's share_* of its time, token throughput) differ between any two
runs and are left out unless --all. Exit status 1 when anything else differs, so a reproduction check can fail."""
import argparse
import json
import math
import re
import sys
from pathlib import Path

TIMING = re.compile(r"runtime|seconds|_s$|(^|\.)share_(sample|score|update)$|per_second|throughput")


def flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def diff(a_root: Path, b_root: Path, include_timing: bool = False) -> list[str]:
    lines = []
    files = sorted({p.relative_to(a_root) for p in a_root.rglob("*.json")} |
                   {p.relative_to(b_root) for p in b_root.rglob("*.json")})
    for rel in files:
        a_path, b_path = a_root / rel, b_root / rel
        if not a_path.exists() or not b_path.exists():
            lines.append(f"{rel}: only in {'B' if not a_path.exists() else 'A'}")
            continue
        a, b = flatten(json.loads(a_path.read_text())), flatten(json.loads(b_path.read_text()))
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:  # a key that vanished is a difference, timing or not
                lines.append(f"{rel}: {key} only in {'B' if key not in a else 'A'}")
            elif (include_timing or not TIMING.search(key)) and not same(a[key], b[key]):
                lines.append(f"{rel}: {key}: {a[key]!r} -> {b[key]!r}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--all", action="store_true", help="include wall-clock figures")
    args = parser.parse_args()
    lines = diff(args.a, args.b, args.all)
    n_files = len(list(args.a.rglob("*.json")))
    print("\n".join(lines) if lines else f"identical: {n_files} metrics files (wall-clock figures aside)")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
