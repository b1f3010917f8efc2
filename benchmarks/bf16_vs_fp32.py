"""bf16 vs fp32 on the embedded model, in one process, alternating A B A B: a forward pass, a LoRA training step
(forward + backward + AdamW), and batched greedy `generate`. The training step is also timed with fp32 weights under
CPU autocast to bf16, the other way to get bf16 matmuls. Greedy outputs are compared for agreement.

    python benchmarks/bf16_vs_fp32.py [--tiny] [--repeats 3] [--batch 8] [--seq 256] [--new-tokens 48]
"""
from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time

import torch

from _common import CACHE, base_model, examples, model_arg
from cotlab.models import load_checkpoint


def arg(argv, name, default):
    return type(default)(argv[argv.index(name) + 1]) if name in argv else default


def windows(tokenizer, batch: int, seq: int) -> torch.Tensor:
    """`batch` windows of `seq` tokens of real text (GSM8K questions and solutions, concatenated)."""
    text = " ".join(f"{ex.question} {ex.reasoning}" for ex in examples("gsm8k", 200)["train"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= batch * seq, "not enough text for the requested windows"
    return torch.tensor(ids[: batch * seq]).view(batch, seq)


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))


def main(argv):
    name = model_arg(argv)
    repeats, batch, seq, new_tokens = (arg(argv, "--repeats", 3), arg(argv, "--batch", 8), arg(argv, "--seq", 256),
                                       arg(argv, "--new-tokens", 48))
    path = base_model(name)
    models = {dtype: load_checkpoint(path, "cpu", dtype=dtype)[0] for dtype in ("float32", "bfloat16")}
    tokenizer = load_checkpoint(path, "cpu")[1]
    ids = windows(tokenizer, batch, seq)
    prompts = [f"Question: {ex.question}\nAnswer step by step." for ex in examples("gsm8k", batch)["test"]]
    tokenizer.padding_side = "left"
    prompt_batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)

    @torch.inference_mode()
    def forward(model):
        return model(input_ids=ids).logits[:, -1].float()

    trainers = {dtype: with_lora(load_checkpoint(path, "cpu", dtype=dtype)[0]) for dtype in ("float32", "bfloat16")}
    optimizers = {dtype: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
                  for dtype, m in trainers.items()}
    optimizers["autocast"] = optimizers["float32"]
    trainers["autocast"] = trainers["float32"]

    def train_step(variant):
        model, optimizer = trainers[variant], optimizers[variant]
        context = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "autocast" else contextlib.nullcontext()
        with context:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    @torch.inference_mode()
    def generate(model):
        out = model.generate(**prompt_batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        return out[:, prompt_batch["input_ids"].shape[1]:]

    cases = {
        "forward": {v: (lambda v=v: forward(models[v])) for v in ("float32", "bfloat16")},
        "lora_train_step": {v: (lambda v=v: train_step(v)) for v in ("float32", "bfloat16", "autocast")},
        "generate": {v: (lambda v=v: generate(models[v])) for v in ("float32", "bfloat16")},
    }
    times: dict = {case: {v: [] for v in variants} for case, variants in cases.items()}
    outputs: dict = {}
    for case, variants in cases.items():
        for fn in variants.values():
            fn()  # warm-up
        for _ in range(repeats):
            for variant, fn in variants.items():  # alternating, so drift in the machine's speed hits both
                started = time.perf_counter()
                outputs[(case, variant)] = fn()
                times[case][variant].append(time.perf_counter() - started)
    median = {case: {v: statistics.median(t) for v, t in ts.items()} for case, ts in times.items()}
    fp32_logits, bf16_logits = outputs[("forward", "float32")], outputs[("forward", "bfloat16")]
    fp32_gen, bf16_gen = outputs[("generate", "float32")], outputs[("generate", "bfloat16")]
    result = {
        "model": name, "threads": torch.get_num_threads(), "batch": batch, "seq": seq, "new_tokens": new_tokens,
        "repeats": repeats, "median_s": median, "times_s": times,
        "speedup_bf16": {
            "forward": median["forward"]["float32"] / median["forward"]["bfloat16"],
            "lora_train_step": median["lora_train_step"]["float32"] / median["lora_train_step"]["bfloat16"],
            "lora_train_step_autocast": median["lora_train_step"]["float32"] / median["lora_train_step"]["autocast"],
            "generate": median["generate"]["float32"] / median["generate"]["bfloat16"],
        },
        "generate_new_tokens_per_s": {v: batch * new_tokens / median["generate"][v] for v in ("float32", "bfloat16")},
        "quality": {
            "next_token_top1_agreement": float((fp32_logits.argmax(-1) == bf16_logits.argmax(-1)).float().mean()),
            "greedy_token_agreement": float((fp32_gen == bf16_gen).float().mean()),
            "greedy_first_divergence_mean": float(
                ((fp32_gen != bf16_gen).cumsum(-1) == 0).sum(-1).float().mean()),
        },
    }
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"bf16_vs_fp32-{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("model", "threads", "median_s", "speedup_bf16",
                                             "generate_new_tokens_per_s", "quality")}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
