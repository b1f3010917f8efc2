"""What the transplant costs, in this process on the same model and oracle candidates, as ratios against the obvious
alternative, the same prompts without a transplant (no_transplant: pass 2 alone):

1. a training step (forward, backward, AdamW) of `transplant` with gradients into pass 1, with pass 1 detached, with
   the float64 residual stream, and with only the first half of the layers transplanted (pass 1 stops there);
2. a verdict at evaluation (no grad), transplant vs no_transplant;
3. the hooks alone: pass 2 with identity hooks on every layer vs no hooks.

    python benchmarks/transplant_cost.py [--tiny] [--task svamp|gsm8k] [--steps 3] [--batch 4]
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from _common import CACHE, base_model, model_arg
from cotlab.methods.transplant import TransplantConfig
from cotlab.data.candidates import make_candidates, oracle_candidates
from cotlab.data.sources import load_task
from cotlab.methods import transplant as T
from cotlab.models import load_for_training
from cotlab.teacher import Teacher, TeacherConfig

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def arg(argv, name, default):
    return type(default)(argv[argv.index(name) + 1]) if name in argv else default


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main(argv):
    name, task = model_arg(argv), arg(argv, "--task", "svamp")
    steps, batch = arg(argv, "--steps", 3), arg(argv, "--batch", 4)
    torch.manual_seed(0)
    model, tokenizer, _ = load_for_training(base_model(name), "cpu", "none", LORA, None)
    with tempfile.TemporaryDirectory() as cache:
        teacher = Teacher(TeacherConfig(), cache_dir=cache, oracle=lambda r: oracle_candidates(r.example, r.context))
        rows, _ = make_candidates(load_task(task, {"source": task}, 4 * batch, 1, seed=0)["train"], teacher, 0, 0.7,
                                  "random", task)
    items = [T.build_item(tokenizer, row) for row in rows[:batch]]
    labels = torch.tensor([it.correct for it in items])
    identifiers = T.identifier_ids(tokenizer)
    n_layers = len(T.decoder_layers(model))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(config):
        def run():
            loss = F.cross_entropy(T.verdict_logits(model, tokenizer, items, config, identifiers), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return run

    plain = TransplantConfig(transplant=False)
    configs = {"no_transplant": plain, "transplant": TransplantConfig(),
               "transplant_detach_pass1": TransplantConfig(detach_pass1=True),
               "transplant_residual_fp64": TransplantConfig(residual_fp64=True),
               "transplant_first_half": TransplantConfig(layers=list(range(n_layers // 2)))}
    model.train()
    step_s = {k: timed(step(c), steps) for k, c in configs.items()}
    model.eval()
    with torch.no_grad():
        verdict_s = {k: timed(lambda c=c: T.verdict_logits(model, tokenizer, items, c, identifiers), steps)
                     for k, c in (("no_transplant", plain), ("transplant", TransplantConfig()))}
        ids, mask = T._pad(tokenizer, [it.choice for it in items], "left", "cpu")
        every = list(range(n_layers))
        bare_s = timed(lambda: model(input_ids=ids, attention_mask=mask, logits_to_keep=1), steps)
        with T.hooked(model, every, lambda layer, hidden: hidden):
            hooked_s = timed(lambda: model(input_ids=ids, attention_mask=mask, logits_to_keep=1), steps)
    result = {
        "model": name, "task": task, "batch": batch, "layers": n_layers, "threads": torch.get_num_threads(),
        "choice_tokens_mean": sum(len(it.choice) for it in items) / batch,
        "solve_tokens_mean": sum(len(s) for it in items for s in it.solve) / (2 * batch),
        **{f"step_s.{k}": v for k, v in step_s.items()},
        **{f"step_ratio.{k}": v / step_s["no_transplant"] for k, v in step_s.items()},
        **{f"verdict_s_per_item.{k}": v / batch for k, v in verdict_s.items()},
        "verdict_ratio.transplant": verdict_s["transplant"] / verdict_s["no_transplant"],
        "identity_hooks_ratio": hooked_s / bare_s,
    }
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"transplant_cost-{name}-{task}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
