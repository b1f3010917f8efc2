"""The demo's headline accuracies now against a committed revision's, model by model (metrics/eval/**/*.json).

The earlier predictions are in no DVC cache (a fresh clone has no remote), so the two runs cannot be paired on
questions here; the test is Fisher's exact test on the two 2x2 counts (scipy), which is conservative next to a
paired test. benchmarks/stop_criteria.py pairs the new path against the old one on the same questions, for the
checkpoints the new run trained.

    python benchmarks/headline_before_after.py [--before REV]
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scipy.stats import fisher_exact

from _common import CACHE

ROOT = Path(__file__).resolve().parents[1]


def metrics_at(rev: str) -> dict[str, dict]:
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "metrics/eval"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    return {name: json.loads(subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, check=True,
                                            capture_output=True, text=True).stdout)
            for name in names if name.endswith(".json")}


def main(argv):
    before_rev = argv[argv.index("--before") + 1] if "--before" in argv else "df43a8c"
    before = metrics_at(before_rev)
    rows = []
    for name, old in sorted(before.items()):
        path = ROOT / name
        if not path.is_file() or "accuracy" not in old:
            continue
        new = json.loads(path.read_text())
        k_old, k_new = round(old["accuracy"] * old["n"]), round(new["accuracy"] * new["n"])
        p = fisher_exact([[k_old, old["n"] - k_old], [k_new, new["n"] - k_new]]).pvalue
        rows.append({"model": name.removeprefix("metrics/eval/").removesuffix(".json"), "n": new["n"],
                     "before": old["accuracy"], "after": new["accuracy"], "diff_pp": 100 * (new["accuracy"] - old["accuracy"]),
                     "fisher_p": float(p),
                     "mean_new_tokens_before": old.get("mean_new_tokens"), "mean_new_tokens_after": new.get("mean_new_tokens"),
                     "truncation_before": old.get("truncation_rate"), "truncation_after": new.get("truncation_rate")})
    CACHE.mkdir(exist_ok=True)
    (CACHE / "headline_before_after.json").write_text(json.dumps(rows, indent=2))
    print(f"{'model':42} {'n':>4} {'before':>7} {'after':>7} {'diff pp':>8} {'Fisher p':>9} {'tokens':>13} {'truncated':>13}")
    for r in rows:
        tokens = f"{r['mean_new_tokens_before'] or 0:.0f} -> {r['mean_new_tokens_after'] or 0:.0f}"
        trunc = f"{r['truncation_before'] or 0:.2f} -> {r['truncation_after'] or 0:.2f}"
        print(f"{r['model']:42} {r['n']:>4} {r['before']:>7.3f} {r['after']:>7.3f} {r['diff_pp']:>+8.1f} "
              f"{r['fisher_p']:>9.3f} {tokens:>13} {trunc:>13}")


if __name__ == "__main__":
    main(sys.argv[1:])
