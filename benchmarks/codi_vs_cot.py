"""CODI against explicit chain-of-thought, in this process on the same model and GSM8K data:

1. training step time: one CODI step (teacher CE pass + no-grad target pass + question, K continuous thoughts and
   the answer on the KV cache, backward) relative to one CoT-SFT step (the teacher sequence's CE, backward) on the
   same batch and the same LoRA;
2. inference throughput: latent inference (question + <bot>, K thoughts, <eot>, the answer) against explicit-CoT
   greedy generation (the cot prompt, up to --cot-tokens new tokens) on the same test questions, in examples/s
   and generated tokens per example.

    python benchmarks/codi_vs_cot.py [--tiny] [--n 32] [--batch 8] [--steps 4] [--cot-tokens 128]
"""
from __future__ import annotations

import json
import sys
import time

import torch

from _common import CACHE, base_model, examples, model_arg
from cotlab.evaluation.generate import generate
from cotlab.methods import codi as C
from cotlab.models import load_for_training
from cotlab.prompts import render_prompt

LORA = {"r": 128, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}  # CODI's reference LoRA


def arg(argv, name, default):
    return int(argv[argv.index(name) + 1]) if name in argv else default


def step_seconds(step, steps: int) -> float:
    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main(argv):
    name = model_arg(argv)
    n, batch_size, steps, cot_tokens = (arg(argv, "--n", 32), arg(argv, "--batch", 8), arg(argv, "--steps", 4),
                                        arg(argv, "--cot-tokens", 128))
    torch.manual_seed(0)
    data = examples("gsm8k", n)
    model, tokenizer, _ = load_for_training(base_model(name), "cpu", "none", LORA, None)
    ids = C.add_codi_tokens(model, tokenizer)
    codi = C.CODI(model, C.CODIConfig())
    batch = C.collate([C.encode(tokenizer, ex) for ex in data["train"][:batch_size]], ids["pad"], ids["bot"],
                      ids["eot"])

    def codi_step():
        codi.zero_grad(set_to_none=True)
        codi.losses(batch)["loss"].backward()

    def cot_sft_step():
        codi.zero_grad(set_to_none=True)
        model(input_ids=batch["teacher_ids"], attention_mask=batch["teacher_mask"],
              labels=batch["teacher_labels"]).loss.backward()

    codi.train()
    train = {"codi_step_s": step_seconds(codi_step, steps), "cot_sft_step_s": step_seconds(cot_sft_step, steps)}
    train["codi_vs_cot_sft_step"] = train["codi_step_s"] / train["cot_sft_step_s"]

    codi.eval()
    test = data["test"]
    started = time.perf_counter()
    latent = C.predict(codi, tokenizer, test, ids, 16, batch_size)
    latent_s = time.perf_counter() - started
    prompts = [render_prompt(tokenizer, ex, "cot") for ex in test]
    started = time.perf_counter()
    with model.disable_adapter():
        explicit = generate(model, tokenizer, prompts, cot_tokens, batch_size)
    explicit_s = time.perf_counter() - started
    infer = {
        "n_test": len(test), "num_latent": codi.codi_config.inf_latent_iterations,
        "latent_examples_per_s": len(test) / latent_s, "explicit_cot_examples_per_s": len(test) / explicit_s,
        "latent_new_tokens_mean": sum(g.n_new_tokens for g in latent) / len(test),
        "explicit_cot_new_tokens_mean": sum(g.n_new_tokens for g in explicit) / len(test),
    }
    infer["latent_speedup"] = infer["latent_examples_per_s"] / infer["explicit_cot_examples_per_s"]
    result = {"model": name, "batch_size": batch_size, "steps": steps, "cot_max_new_tokens": cot_tokens,
              "train": train, "inference": infer}
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"codi_vs_cot-{name.replace('/', '_')}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv)
