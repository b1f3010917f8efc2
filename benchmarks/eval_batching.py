"""Batched evaluation (cotlab.evaluation.generate) vs one-example-at-a-time `generate`, same prompts and model.

    python benchmarks/eval_batching.py [--tiny] [--n 32] [--max-new-tokens 64]
"""
from __future__ import annotations

import json
import sys

import torch

from _common import CACHE, arg, base_model, examples, model_arg, timed
from cotlab.evaluation.generate import generate
from cotlab.models import load_checkpoint
from cotlab.prompts import render_prompt


@torch.inference_mode()
def one_at_a_time(model, tokenizer, prompts, max_new_tokens):
    texts = []
    for prompt in prompts:
        batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        texts.append(tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True))
    return texts


def main(argv):
    name = model_arg(argv)
    n = int(arg(argv, "--n", "32"))
    max_new = int(arg(argv, "--max-new-tokens", "64"))
    model, tokenizer, _ = load_checkpoint(base_model(name), "cpu")
    prompts = [render_prompt(tokenizer, ex, "cot") for ex in examples("gsm8k", n)["test"]]
    generate(model, tokenizer, prompts[:2], max_new_tokens=4)  # warm-up
    single, single_s, single_mb = timed(lambda: one_at_a_time(model, tokenizer, prompts, max_new))
    batched, batched_s, batched_mb = timed(lambda: generate(model, tokenizer, prompts, max_new, batch_size=n))
    agree = sum(a == b.text for a, b in zip(single, batched)) / len(prompts)
    result = {
        "model": name, "n_prompts": len(prompts), "max_new_tokens": max_new,
        "one_at_a_time_s": single_s, "batched_s": batched_s, "speedup": single_s / batched_s, "target": ">= 3x",
        "peak_rss_mb": {"one_at_a_time": single_mb, "batched": batched_mb},
        "identical_outputs_share": agree,
    }
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"eval_batching-{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
