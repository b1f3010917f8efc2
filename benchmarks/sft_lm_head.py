"""SFT training time with TRL's fused LM head (`lm_head: fused`, the path before this option: SFTTrainer computes
per-token log-probs, entropy and top-1 in vocabulary chunks, never materialising the logits) against the model's own
forward with full logits and transformers' causal-LM cross-entropy (`lm_head: full_logits`, the CPU default), same
model, data and seed, alternating in this process.

The chunked head saves GPU memory on long sequences; on CPU it is Python-level tiling over a 49k vocabulary. The two
losses are the same quantity (the sum of token NLLs over num_items_in_batch); the first step's loss is printed for
both so the equivalence is checked, not assumed.

    python benchmarks/sft_lm_head.py [--tiny] [--n 32] [--repeats 2]
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

from _common import CACHE, PeakRSS, base_model, examples, model_arg
from cotlab.methods import sft
from cotlab.models import load_for_training

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
CONFIG = sft.TrainConfig(lr=2e-4, epochs=1, batch_size=8, logging_steps=1, padding_free=True)


def run(path, train, lm_head: str) -> dict:
    model, tokenizer, _ = load_for_training(path, "cpu", "none", LORA, None)
    with PeakRSS() as mem:
        started = time.perf_counter()
        _, metrics, curve = sft.train(model, tokenizer, train, replace(CONFIG, lm_head=lm_head), template="cot",
                                      max_length=1024, seed=0)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "steps": metrics["train_steps"], "first_loss": curve[0]["loss"],
            "train_loss": metrics["train_loss"], "peak_rss_mb": mem.peak_mb}


def main(argv):
    name = model_arg(argv)
    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 32
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 2
    path = base_model(name)
    train = examples("gsm8k", n)["train"]
    run(path, train[:8], "fused")  # warm-up: allocator, imports
    variants = {"trl_fused_lm_head": "fused", "full_logits": "full_logits"}
    runs = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant, lm_head in variants.items():
            runs[variant].append(run(path, train, lm_head))
    best = {variant: min(rs, key=lambda r: r["seconds"]) for variant, rs in runs.items()}
    result = {"model": name, "n_examples": len(train), "repeats": repeats, **best,
              "speedup_full_logits": best["trl_fused_lm_head"]["seconds"] / best["full_logits"]["seconds"],
              "first_loss_abs_diff": abs(best["trl_fused_lm_head"]["first_loss"] - best["full_logits"]["first_loss"])}
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"sft_lm_head-{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
