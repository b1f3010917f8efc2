"""Where a Markovian RL step spends its time, in this process on the same model and arithmetic questions:

1. the share of step time in sampling (the group's CoTs), scoring (the rewards and the frozen baseline) and the update
   (actor and frozen passes over the CoTs, backward, optimizer);
2. sampling throughput: the group's CoTs sampled in one batched call against the obvious alternative, one CoT per
   call, in CoT tokens/s.

    python benchmarks/markovian_steps.py [--tiny] [--steps 4] [--group 8] [--cot 48]
"""
from __future__ import annotations

import json
import sys
import time

import torch

from _common import CACHE, base_model, model_arg
from cotlab.data.sources import load_task
from cotlab.methods import markovian as M
from cotlab.methods.markovian import MarkovianConfig
from cotlab.models import load_for_training

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def arg(argv, name, default):
    return int(argv[argv.index(name) + 1]) if name in argv else default


def main(argv):
    name = model_arg(argv)
    steps, group, cot = arg(argv, "--steps", 4), arg(argv, "--group", 8), arg(argv, "--cot", 48)
    spec = {"source": "reasoning_gym", "dataset": "chain_sum",
            "config": {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2}}
    questions = load_task("arithmetic", spec, steps + 1, 1, seed=0)["train"]
    torch.manual_seed(0)
    model, tokenizer, _ = load_for_training(base_model(name), "cpu", "none", LORA, None)
    config = MarkovianConfig(group_size=group, cot_length=cot)
    sampler = M.TransformersSampler(model, tokenizer)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    state, baselines = {"ema": None, "history": []}, {}
    M.rl_step(model, tokenizer, sampler, questions[:1], config, optimizer, baselines, state)  # warm-up
    rows = [M.rl_step(model, tokenizer, sampler, [q], config, optimizer, baselines, state) for q in questions[1:]]
    parts = {k: sum(r[k] for r in rows) / len(rows) for k in ("t_sample", "t_score", "t_update")}
    step_s = sum(parts.values())

    prompt = [M.cot_prompt_ids(tokenizer, questions[0], cot)]
    started = time.perf_counter()
    sampler.sample(prompt, group, cot, 1.0)
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(group):
        sampler.sample(prompt, 1, cot, 1.0)
    sequential_s = time.perf_counter() - started
    result = {
        "model": name, "steps": len(rows), "group_size": group, "cot_length": cot, "threads": torch.get_num_threads(),
        "step_s": step_s, **{f"share_{k[2:]}": v / step_s for k, v in parts.items()},
        **{f"{k[2:]}_s": v for k, v in parts.items()},
        "sampling_tokens_per_s_batched": group * cot / batched_s,
        "sampling_tokens_per_s_one_at_a_time": group * cot / sequential_s,
        "batched_speedup": sequential_s / batched_s,
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"markovian_steps-{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
