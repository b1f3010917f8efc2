"""Integrated gradients batched over path points (cotlab.evaluation.attribution, `attribution.internal_batch_size`)
vs captum's default (all n_steps points in one forward/backward) and vs one point per pass, same model, questions
and drafts, in this process. The attributions must agree: batching only splits the same sum.

    python benchmarks/ig_batching.py [--tiny] [--n 2] [--steps 128]
"""
from __future__ import annotations

import json
import sys
import time

from _common import CACHE, PeakRSS, base_model, model_arg
from cotlab.data.sources import load_task
from cotlab.evaluation.attribution import draft_attribution
from cotlab.models import load_checkpoint


def main(argv):
    name = model_arg(argv)
    n = int(argv[argv.index("--n") + 1]) if "--n" in argv else 2
    steps = int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 128
    model, tokenizer, _ = load_checkpoint(base_model(name), "cpu")
    questions = load_task("hidden_fact", {"source": "hidden_fact"}, n, n, seed=0)["test"]
    drafts = [f"Answer: No - {ex.draft_context} Questions: Is that so?" for ex in questions]
    result = {"model": name, "n_questions": n, "n_steps": steps, "runs": {}}
    shares = {}
    for batch in (steps, 16, 1):
        with PeakRSS() as mem:
            started = time.perf_counter()
            out = [draft_attribution(model, tokenizer, ex, d, n_steps=steps, internal_batch_size=batch)
                   for ex, d in zip(questions, drafts)]
            seconds = time.perf_counter() - started
        shares[batch] = [a.draft_share for a in out]
        result["runs"][f"internal_batch_size={batch}"] = {"seconds": seconds, "peak_rss_mb": mem.peak_mb}
    runs = result["runs"]
    result["speedup_16_vs_all_at_once"] = runs[f"internal_batch_size={steps}"]["seconds"] / runs[
        "internal_batch_size=16"]["seconds"]
    result["speedup_16_vs_one_at_a_time"] = runs["internal_batch_size=1"]["seconds"] / runs[
        "internal_batch_size=16"]["seconds"]
    result["max_share_difference"] = max(abs(a - b) for batch in shares for a, b in zip(shares[batch], shares[16]))
    CACHE.mkdir(exist_ok=True)
    (CACHE / f"ig_batching-{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
