"""A LoRA adapter merged into the base weights (what load_checkpoint does for inference) against PEFT's separate
adapter matmuls (merge_adapter=False), in one process, on checkpoints `dvc repro` trained:
- generation: Phase C (dpo, question + student draft) on StrategyQA and CoT-SFT on GSM8K, every test question,
  new tokens per second and accuracy paired on the same questions (McNemar exact, scipy);
- integrated gradients (the attribution stage, fp32): seconds per question and the draft share's largest change.
The two paths alternate, merged first in odd repeats, so a drifting machine load hits both alike.

    python benchmarks/merge_lora.py [--n 100] [--attribution 4] [--repeats 2]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from _common import CACHE
from cotlab.schema import read_examples
from cotlab.evaluation.attribution import draft_attribution
from cotlab.evaluation.run import evaluate
from cotlab.evaluation.stats import mcnemar_exact
from cotlab.models import load_checkpoint
from cotlab.selfimprove.drafts import drafts_for

ROOT = Path(__file__).resolve().parents[1]
GENERATION = {  # task -> (checkpoint, test split, drafts shown)
    "strategyqa": ("models/dpo/strategyqa", "data/tasks/strategyqa/test.jsonl", "data/drafts/strategyqa/test.jsonl"),
    "gsm8k": ("models/cot_sft/gsm8k", "data/codi/gsm8k/test.jsonl", None),
}
ATTRIBUTION = ("models/dpo/syllogism", "data/tasks/syllogism/test.jsonl", "data/drafts/syllogism/test.jsonl")
PATHS = {"merged": True, "separate adapter": False}


def order(repeat: int) -> list[str]:
    names = list(PATHS)
    return names if repeat % 2 == 0 else names[::-1]


def generation(n: int, repeats: int) -> dict:
    results = {}
    for task, (checkpoint, test_path, drafts_path) in GENERATION.items():
        test = read_examples(ROOT / test_path)[:n]
        drafts = drafts_for(test, str(ROOT / drafts_path)) if drafts_path else None
        models = {name: load_checkpoint(ROOT / checkpoint, "cpu", merge_adapter=merge) for name, merge in PATHS.items()}
        seconds = {name: [] for name in PATHS}
        rows = {}
        for repeat in range(repeats):
            for name in order(repeat):
                model, tokenizer, manifest = models[name]
                started = time.perf_counter()
                predictions, metrics = evaluate(model, tokenizer, test, manifest["prompt"]["template"], 128, 50,
                                                drafts=drafts, desc=f"{task} {name}")
                seconds[name].append(time.perf_counter() - started)
                rows[name] = {"accuracy": metrics["accuracy"], "mean_new_tokens": metrics["mean_new_tokens"],
                              "correct": [p["correct"] for p in predictions],
                              "tokens": sum(p["n_new_tokens"] for p in predictions)}
        merged, separate = rows["merged"], rows["separate adapter"]
        results[task] = {
            "checkpoint": checkpoint, "n": len(test), "dtype": str(models["merged"][0].dtype),
            **{name: {"accuracy": r["accuracy"], "mean_new_tokens": r["mean_new_tokens"],
                      "seconds_min": min(seconds[name]), "new_tokens_per_s": r["tokens"] / min(seconds[name])}
               for name, r in rows.items()},
            "speedup_of_merged": min(seconds["separate adapter"]) / min(seconds["merged"]),
            "same_answer_rate": sum(a == b for a, b in zip(merged["correct"], separate["correct"])) / len(test),
            "paired": mcnemar_exact(merged["correct"], separate["correct"]),
        }
        del models
    return results


def attribution(n: int, repeats: int) -> dict:
    checkpoint, test_path, drafts_path = ATTRIBUTION
    test = read_examples(ROOT / test_path)[:n]
    drafts = drafts_for(test, str(ROOT / drafts_path))
    models = {name: load_checkpoint(ROOT / checkpoint, "cpu", dtype="float32", merge_adapter=merge)[:2]
              for name, merge in PATHS.items()}
    seconds, shares = {name: [] for name in PATHS}, {}
    for repeat in range(repeats):
        for name in order(repeat):
            model, tokenizer = models[name]
            started = time.perf_counter()
            shares[name] = [draft_attribution(model, tokenizer, ex, d, n_steps=16).draft_share
                            for ex, d in zip(test, drafts)]
            seconds[name].append((time.perf_counter() - started) / len(test))
    return {"checkpoint": checkpoint, "n": len(test), "n_steps": 16,
            **{name: {"seconds_per_question_min": min(s)} for name, s in seconds.items()},
            "speedup_of_merged": min(seconds["separate adapter"]) / min(seconds["merged"]),
            "max_abs_draft_share_diff": max(abs(a - b) for a, b in zip(shares["merged"], shares["separate adapter"]))}


def main(argv):
    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 100
    n_attr = int(argv[argv.index("--attribution") + 1]) if "--attribution" in argv else 4
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 2
    results = {"generation": generation(n, repeats), "attribution": attribution(n_attr, repeats)}
    CACHE.mkdir(exist_ok=True)
    (CACHE / "merge_lora.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
