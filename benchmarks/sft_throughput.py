"""Training tokens/s of cotlab's sft stage vs TRL's SFTTrainer with default settings, same model and data.

Two differences: cotlab trains padding-free (a batch is one concatenated row with per-example position ids)
where TRL's default pads every batch to its longest example, and cotlab leaves gradient checkpointing off on
small models where TRL turns it on. A third run (padded, no checkpointing) separates the two effects.
Tokens/s counts real (non-pad) tokens.
Both run in this process, alternating, on GSM8K CoT targets (Phase B data: lengths vary the most).

    python benchmarks/sft_throughput.py [--tiny] [--n 48] [--repeats 2] [--device cuda]

On a GPU (`--device cuda`) the base is bf16 and cotlab's run adds Liger's kernels where liger-kernel is installed
(TRL's default leaves them off); the target there is >= 2x.
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


def run(path, train, padding_free: bool, checkpointing: bool, device: str = "cpu") -> dict:
    model, tokenizer, _ = load_for_training(path, device, "none", LORA, None)
    config = sft.TrainConfig(lr=2e-4, epochs=1, batch_size=8, logging_steps=10, padding_free=padding_free,
                             gradient_checkpointing=checkpointing)
    dataset, _, _ = sft.build_dataset(train, tokenizer, "cot", 1024)
    with PeakRSS() as mem:
        started = time.perf_counter()
        sft.train(model, tokenizer, train, config, template="cot", max_length=1024, seed=0, report_to=[])
        seconds = time.perf_counter() - started
    tokens = real_tokens(dataset, tokenizer)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "peak_rss_mb": mem.peak_mb}


def main(argv):
    name = model_arg(argv)
    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 48
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 2
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    path = base_model(name, "bfloat16" if device == "cuda" else "float32")
    train = examples("gsm8k", n)["train"]
    run(path, train[:8], True, False, device)  # warm-up: allocator, kernels, imports
    variants = {  # name: (padding_free, gradient_checkpointing)
        "cotlab_sft": (True, False),
        "trl_default": (False, True),  # SFTConfig defaults: padded batches, gradient checkpointing on
        "trl_padded_no_checkpointing": (False, False),
    }
    runs = {name: [] for name in variants}
    for _ in range(repeats):
        for variant, (padding_free, checkpointing) in variants.items():
            runs[variant].append(run(path, train, padding_free, checkpointing, device))
    best = {variant: max(rs, key=lambda r: r["tokens_per_s"]) for variant, rs in runs.items()}
    result = {
        "model": name, "n_examples": len(train), **best,
        "speedup_vs_trl_default": best["cotlab_sft"]["tokens_per_s"] / best["trl_default"]["tokens_per_s"],
        "speedup_from_padding_free_alone": best["cotlab_sft"]["tokens_per_s"]
        / best["trl_padded_no_checkpointing"]["tokens_per_s"],
        "device": device,
        "target": ">= 2x vs trl_default" if device == "cuda" else ">= 1.3x vs trl_default",
    }
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"sft_throughput-{name}{'-cuda' if device == 'cuda' else ''}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
