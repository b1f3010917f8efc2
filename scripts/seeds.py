"""Each headline across the experiments of a seed sweep: per-seed value and p, mean and spread.

    dvc exp run --queue -S 'seed=0,1,2' && dvc queue start   # one experiment per seed, the whole DAG each
    python scripts/seeds.py                                  # reads `dvc exp show --json`

The headlines are every system's comparisons (metrics/summary/<system>.json: the difference in points with its
McNemar p) and every mechanism check (metrics/mechanisms.json: p and whether it is shown). A check holds across
seeds when every seed shows it; a McNemar p covers the test questions of one run, not the training run, so an
effect that one seed shows and another does not is not an effect. `--by dpo.lr` groups by another param;
`--json FILE` reads a saved `dvc exp show --json` instead of running it. Entries with the same value of the
grouping param (the baseline commit and an experiment of its seed) are one column: a run is a function of its
params and seed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict

SUMMARIES = "metrics/summary/"
MECHANISMS = "metrics/mechanisms.json"


def entries(shown) -> list[dict]:
    """Every commit and experiment of `dvc exp show --json` as {name, params, metrics}: a walk of the nested
    output, so that its layout (commits, their experiments, each experiment's revs) may nest as it likes."""
    found, seen = [], set()

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and "params" in data and node.get("rev") not in seen:
                seen.add(node.get("rev"))
                files = lambda kind: {path: (value or {}).get("data") or {}  # noqa: E731
                                      for path, value in (data.get(kind) or {}).items()}
                params = files("params").get("params.yaml", {})
                found.append({"name": node.get("name") or node.get("rev"), "params": params,
                              "metrics": files("metrics")})
            for value in node.values():
                walk(value)

    walk(shown)
    return found


def param(params: dict, key: str):
    value = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def headlines(metrics: dict) -> dict[str, tuple[float | None, float | None, bool | None]]:
    """name -> (value, p, shown): each system's comparisons in points, then each mechanism check."""
    out = {}
    for path, data in sorted(metrics.items()):
        if path.startswith(SUMMARIES):
            system = path[len(SUMMARIES):].removesuffix(".json")
            for name, effect in sorted((data.get("effects") or {}).items()):
                if isinstance(effect, dict) and effect.get("diff") is not None:
                    out[f"{system}.{name} (pp)"] = (100 * effect["diff"], effect.get("mcnemar_p"), None)
    for check, row in sorted((metrics.get(MECHANISMS) or {}).items()):
        if isinstance(row, dict):
            out[f"check: {check}"] = (None, row.get("p"), row.get("shown"))
    return out


def sweep(shown, by: str = "seed") -> tuple[list, dict[str, dict]]:
    """(the grouping param's values, sorted; headline -> {value: (value, p, shown)}), one entry per value."""
    groups: dict = {}
    for entry in entries(shown):
        key = param(entry["params"], by)
        if key is not None and entry["metrics"] and key not in groups:
            groups[key] = headlines(entry["metrics"])
    values = sorted(groups, key=lambda v: (str(type(v)), v))
    table: dict[str, dict] = defaultdict(dict)
    for value in values:
        for name, result in groups[value].items():
            table[name][value] = result
    return values, dict(table)


def cell(result) -> str:
    if result is None:
        return "-"
    value, p, shown = result
    parts = [f"{value:+.1f}" if value is not None else None, f"p={p:.2g}" if isinstance(p, (int, float)) else None,
             {True: "shown", False: "not shown"}.get(shown)]
    return " ".join(part for part in parts if part)


def summary(results: dict, values: list) -> str:
    numbers = [results[v][0] for v in values if v in results and results[v][0] is not None]
    if len(numbers) >= 2:
        return f"mean {statistics.mean(numbers):+.1f}, sd {statistics.stdev(numbers):.1f}"
    shown = [results[v][2] for v in values if v in results and results[v][2] is not None]
    if shown:
        return f"shown in {sum(shown)} of {len(shown)}"
    return "-"


def render(values: list, table: dict[str, dict], by: str) -> str:
    header = ["headline", *(f"{by}={v}" for v in values), "across"]
    rows = [[name, *(cell(results.get(v)) for v in values), summary(results, values)]
            for name, results in table.items()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--by", default="seed", help="the param the experiments differ in (default: seed)")
    parser.add_argument("--json", help="a saved `dvc exp show --json` (default: run it here)")
    args = parser.parse_args(argv)
    if args.json:
        with open(args.json, encoding="utf-8") as f:
            shown = json.load(f)
    else:
        result = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
        if result.returncode:
            print(f"seeds: `dvc exp show --json` failed: {result.stderr.strip()}", file=sys.stderr)
            return 2
        shown = json.loads(result.stdout)
    values, table = sweep(shown, args.by)
    if len(values) < 2:
        print(f"seeds: {len(values)} value(s) of {args.by} among the experiments with metrics; a sweep needs two "
              f"or more (dvc exp run --queue -S '{args.by}=0,1,2' && dvc queue start)", file=sys.stderr)
        return 2
    print(render(values, table, args.by))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
