"""Shared-prefix KV caching in batched generation (cotlab.evaluation.generate, `prefix_cache`) vs the same batches
without it, same prompts and model, in this process, alternating.

Two prompt sets, as the demo's stages build them: the student's drafts on hidden_fact (a chat template, one worked
draft exemplar, then the question: the drafts stage) and few-shot CoT prompts on GSM8K (two exemplars: the base's
few-shot evaluation). The prefix they share is run once and its cache copied into each batch; the rest of each
prompt and the generation cost the same either way, so the saving is the share of prefill the prefix is.

    python benchmarks/prefix_cache.py [--tiny] [--n 50] [--repeats 2]
"""
from __future__ import annotations

import json
import sys

from _common import CACHE, arg, base_model, examples, model_arg, timed
from cotlab.data.sources import load_task
from cotlab.evaluation.generate import generate, shared_prefix_length
from cotlab.evaluation.run import pick_shots
from cotlab.models import load_checkpoint
from cotlab.prompts import TEMPLATE_STOPS, render_messages, render_prompt
from cotlab.selfimprove.drafts import DRAFT_STOP, draft_messages


def prompt_sets(tokenizer, n: int) -> dict[str, tuple[list[str], int, str | None]]:
    """name -> (prompts, max_new_tokens, stop) as the stages generate them."""
    hidden = load_task("hidden_fact", {"source": "hidden_fact"}, n, n, seed=0)["test"]
    gsm8k = examples("gsm8k", n)
    shots = pick_shots(gsm8k["train"], 2, seed=0)
    return {"drafts (hidden_fact)": ([render_messages(tokenizer, draft_messages(ex)) for ex in hidden], 64, DRAFT_STOP),
            "few-shot CoT (gsm8k)": ([render_prompt(tokenizer, ex, "cot", shots=shots) for ex in gsm8k["test"]], 64,
                                     TEMPLATE_STOPS["cot"])}


def main(argv):
    name = model_arg(argv)
    n = int(arg(argv, "--n", "50"))
    repeats = int(arg(argv, "--repeats", "2"))
    model, tokenizer, _ = load_checkpoint(base_model(name), "cpu")
    generate(model, tokenizer, ["warm up", "warm up the model"], max_new_tokens=4)
    result = {"model": name, "n_prompts": n, "repeats": repeats, "sets": {}}
    for label, (prompts, max_new, stop) in prompt_sets(tokenizer, n).items():
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        times = {True: [], False: []}
        rows = {}
        for _ in range(repeats):
            for cached in (False, True):
                rows[cached], seconds, _ = timed(lambda: generate(model, tokenizer, prompts, max_new, batch_size=n,
                                                                   stop=stop, prefix_cache=cached))
                times[cached].append(seconds)
        best = {k: min(v) for k, v in times.items()}
        result["sets"][label] = {
            "prompt_tokens_mean": sum(map(len, ids)) / len(ids), "shared_prefix_tokens": shared_prefix_length(ids),
            "uncached_s": best[False], "cached_s": best[True], "speedup": best[False] / best[True],
            "identical_rows_share": sum(a == b for a, b in zip(rows[True], rows[False])) / len(prompts)}
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"prefix_cache-{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
