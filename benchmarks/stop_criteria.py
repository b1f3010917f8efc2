"""Generation with and without stop criteria, and the old path (fp32, no stop), on the demo's own CoT prompts:
Phase B (cot_distill, question + student draft) on StrategyQA and CoT-SFT on GSM8K, the checkpoints `dvc repro`
trained, every test question. New tokens per question, wall time, and accuracy paired on the same questions
(McNemar exact, scipy) against the default path (bf16 where native, stop at the answer line).

    python benchmarks/stop_criteria.py [--n 100] [--only strategyqa|gsm8k]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from _common import CACHE
from cotlab.schema import read_examples
from cotlab.evaluation.run import evaluate
from cotlab.evaluation.stats import mcnemar_exact
from cotlab.models import load_checkpoint
from cotlab.selfimprove.drafts import drafts_for

ROOT = Path(__file__).resolve().parents[1]
CASES = {  # task -> (checkpoint, test split, drafts shown)
    "strategyqa": ("models/cot_distill/strategyqa", "data/tasks/strategyqa/test.jsonl",
                   "data/drafts/strategyqa/test.jsonl"),
    "gsm8k": ("models/cot_sft/gsm8k", "data/codi/gsm8k/test.jsonl", None),
}
VARIANTS = {"default (stop, stored dtype)": (None, True), "no stop": (None, False),
            "old path (fp32, no stop)": ("float32", False)}


def main(argv):
    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 100
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    results = {}
    for task, (checkpoint, test_path, drafts_path) in CASES.items():
        if only and task != only:
            continue
        test = read_examples(ROOT / test_path)[:n]
        drafts = drafts_for(test, str(ROOT / drafts_path)) if drafts_path else None
        rows = {}
        for variant, (dtype, stop) in VARIANTS.items():
            model, tokenizer, manifest = load_checkpoint(ROOT / checkpoint, "cpu", dtype=dtype)
            started = time.perf_counter()
            predictions, metrics = evaluate(model, tokenizer, test, manifest["prompt"]["template"], 128, 50,
                                            drafts=drafts, stop_at_answer=stop, desc=f"{task} {variant}")
            seconds = time.perf_counter() - started
            rows[variant] = {"accuracy": metrics["accuracy"], "mean_new_tokens": metrics["mean_new_tokens"],
                             "truncation_rate": metrics["truncation_rate"], "invalid_rate": metrics["invalid_rate"],
                             "seconds": seconds, "correct": [p["correct"] for p in predictions]}
            del model
        default = rows["default (stop, stored dtype)"]
        for variant, row in rows.items():
            if row is not default:
                test_result = mcnemar_exact(default["correct"], row["correct"])
                row["vs_default"] = {"accuracy_diff": default["accuracy"] - row["accuracy"], **test_result,
                                     "speedup_of_default": row["seconds"] / default["seconds"]}
        results[task] = {"checkpoint": checkpoint, "n": len(test),
                         **{v: {k: x for k, x in r.items() if k != "correct"} for v, r in rows.items()}}
    CACHE.mkdir(exist_ok=True)
    (CACHE / "stop_criteria.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
