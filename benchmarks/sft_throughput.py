"""Training tokens/s of cotlab's sft stage vs TRL's SFTTrainer with default settings, same model and data.

The difference is padding: cotlab trains padding-free (a batch is one concatenated row with per-example
position ids), TRL's default pads every batch to its longest example. Tokens/s counts real (non-pad) tokens.
Both run in this process, alternating, on GSM8K CoT targets (Phase B data: lengths vary the most).

    python benchmarks/sft_throughput.py [--tiny] [--n 48]
"""
from __future__ import annotations

import json
import sys
import time

from _common import CACHE, PeakRSS, base_model, examples, model_arg
from cotlab.methods import sft
from cotlab.models import load_for_training

LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}


def real_tokens(dataset, tokenizer) -> int:
    return sum(len(tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"]) for r in dataset)


def run(path, train, padding_free: bool, defaults: bool) -> dict:
    model, tokenizer, _ = load_for_training(path, "cpu", "none", LORA, None)
    config = sft.SFTRunConfig(template="cot", epochs=1, batch_size=8, report_to=[], logging_steps=10,
                              padding_free=padding_free, max_length=1024)
    if defaults:
        # TRL's defaults: padded batches, max_length 1024, per_device_train_batch_size 8, linear schedule.
        config.lr_scheduler = "linear"
        config.warmup_ratio = 0.0
    dataset, _ = sft.build_dataset(train, tokenizer, "cot", 1024)
    with PeakRSS() as mem:
        started = time.perf_counter()
        sft.train(model, tokenizer, train, config)
        seconds = time.perf_counter() - started
    tokens = real_tokens(dataset, tokenizer)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "peak_rss_mb": mem.peak_mb}


def main(argv):
    name = model_arg(argv)
    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 48
    path = base_model(name)
    train = examples("gsm8k", n)["train"]
    run(path, train[:8], True, False)  # warm-up: allocator, kernels, imports
    ours, trl_default = [], []
    for _ in range(2):
        ours.append(run(path, train, padding_free=True, defaults=False))
        trl_default.append(run(path, train, padding_free=False, defaults=True))
    best = lambda rs: max(rs, key=lambda r: r["tokens_per_s"])
    result = {
        "model": name, "n_examples": len(train),
        "cotlab_sft": best(ours), "trl_sfttrainer_default": best(trl_default),
        "speedup_tokens_per_s": best(ours)["tokens_per_s"] / best(trl_default)["tokens_per_s"],
        "target": ">= 1.3x",
    }
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"sft_throughput-{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
