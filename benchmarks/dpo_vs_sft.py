"""DPO time per preference pair relative to an SFT step on the same sequences, with and without precomputed
reference log-probs; same model, same StrategyQA Phase C pairs (question + draft prompt, teacher reasoning vs a
flipped answer), all in this process.

A DPO pair costs a forward and backward over chosen and rejected plus a reference forward over both (or, with
precompute_ref, one reference pass over the data up front, counted in its time). SFT runs on the chosen
sequences alone (one example per pair) and on chosen + rejected (the same tokens DPO trains on).

    python benchmarks/dpo_vs_sft.py [--tiny] [--n 32] [--repeats 2] [--epochs 1]

--epochs 4 is the demo's DPO schedule length: per-step reference passes cost 4 passes over the data, a precomputed
reference one, so that is where precompute_ref saves (at one epoch both make one pass).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace

from _common import CACHE, PeakRSS, base_model, examples, model_arg
from cotlab.data.pairs import build_pairs
from cotlab.schema import Example
from cotlab.formats import parse_teacher
from cotlab.teacher import oracle_teacher
from cotlab.methods import dpo, sft
from cotlab.models import load_for_training

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def phase_c_examples(n: int) -> list[Example]:
    """StrategyQA train rows as the filter stage leaves them: oracle teacher reasoning and a (wrong) draft."""
    rows = []
    for ex in examples("strategyqa", n)["train"]:
        draft = f"Answer: {'No' if ex.answer == 'yes' else 'Yes'} - it seems unlikely. Questions: What is known?"
        teacher = parse_teacher(oracle_teacher(ex, draft), ex.answer_type)
        rows.append(replace(ex, reasoning=teacher.reasoning, metadata={**ex.metadata, "draft": draft}))
    return rows


def time_dpo(path, pairs, precompute: bool, epochs: int = 1) -> dict:
    model, tokenizer, _ = load_for_training(path, "cpu", "none", LORA, None)
    config = dpo.DPOConfig(schedule=[dpo.DPOPhase(epochs, 0.1)], batch_size=8, logging_steps=100,
                           precompute_ref=precompute)
    with PeakRSS() as mem:
        started = time.perf_counter()
        dpo.train(model, tokenizer, pairs, config, max_length=1024, seed=0)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "per_pair_s": seconds / len(pairs), "peak_rss_mb": mem.peak_mb}


def time_sft(path, rows: list[Example], with_rejected: list[Example] | None, epochs: int = 1) -> dict:
    model, tokenizer, _ = load_for_training(path, "cpu", "none", LORA, None)
    train = rows + (with_rejected or [])
    config = sft.TrainConfig(lr=2e-4, epochs=epochs, with_draft=True, batch_size=8, logging_steps=100,
                             padding_free=False)
    with PeakRSS() as mem:
        started = time.perf_counter()
        sft.train(model, tokenizer, train, config, template="cot", max_length=1024, seed=0, report_to=[])
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "per_pair_s": seconds / len(rows), "peak_rss_mb": mem.peak_mb}


def main(argv):
    name = model_arg(argv)
    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 32
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 2
    epochs = int(argv[argv.index("--epochs") + 1]) if "--epochs" in argv else 1
    path = base_model(name)
    rows = phase_c_examples(n)
    _, tokenizer, _ = load_for_training(path, "cpu", "none", LORA, None)
    pairs, _ = build_pairs(rows, tokenizer, seed=0)
    # The rejected side as SFT rows: the same prompt, the flipped-answer reasoning as the target.
    rejected_rows = [replace(ex, reasoning=p["rejected"].removesuffix(tokenizer.eos_token).rsplit("\n", 1)[0])
                     for ex, p in zip(rows, pairs)]
    time_dpo(path, pairs[:8], False)  # warm-up: allocator, kernels, imports
    variants = {
        "dpo": lambda: time_dpo(path, pairs, False, epochs),
        "dpo_precomputed_ref": lambda: time_dpo(path, pairs, True, epochs),
        "sft_chosen": lambda: time_sft(path, rows, None, epochs),
        "sft_chosen_and_rejected": lambda: time_sft(path, rows, rejected_rows, epochs),
    }
    runs = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            runs[k].append(fn())
    best = {k: min(rs, key=lambda r: r["seconds"]) for k, rs in runs.items()}
    sft_step = best["sft_chosen"]["per_pair_s"]
    result = {
        "model": name, "n_pairs": len(pairs), "epochs": epochs, **best,
        "dpo_precomputed_vs_per_step_ref": best["dpo_precomputed_ref"]["seconds"] / best["dpo"]["seconds"],
        "dpo_per_pair_vs_sft_example": best["dpo"]["per_pair_s"] / sft_step,
        "dpo_precomputed_per_pair_vs_sft_example": best["dpo_precomputed_ref"]["per_pair_s"] / sft_step,
        "dpo_vs_sft_same_tokens": best["dpo"]["seconds"] / best["sft_chosen_and_rejected"]["seconds"],
        "dpo_precomputed_vs_sft_same_tokens": best["dpo_precomputed_ref"]["seconds"]
                                              / best["sft_chosen_and_rejected"]["seconds"],
    }
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"dpo_vs_sft-{name.replace('/', '_')}-{epochs}ep.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv)
