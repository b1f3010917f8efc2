"""The self-improving recipe's validations (DESIGN.md system 1): students' drafts, the draft ablations, the
attribution summary and the LLM judge of clarifying questions.

Ablations of a draft-conditioned model, each on the same test questions as the full model:

    full            question + its own student draft -> reasoning + answer
    no_draft        question only (does the model still need the draft?)
    shuffled_draft  question + a seeded other question's draft (does it read *this* draft, or any draft?)
    no_cot          question + its draft, the answer forced to start at once (what does the reasoning add?)
"""

from __future__ import annotations

import random
import re
from typing import Sequence

import numpy as np

from cotlab.data.schema import DataError, Example, read_jsonl
from cotlab.evaluation.stats import wilson_interval
from cotlab.formats import draft_records
from cotlab.prompts import DRAFT_STOP, draft_messages, judge_messages, render_messages

ABLATIONS = ("no_draft", "shuffled_draft", "no_cot")
NO_COT_PREFILL = "The answer is:"


def student_drafts(model, tokenizer, examples: Sequence[Example], max_new_tokens: int, batch_size: int,
                   stop_after_questions: bool = True) -> tuple[list[dict], dict]:
    """The model's draft for each example (the drafts stage's format) and how well it kept the format."""
    from cotlab.evaluation.generate import generate  # torch: only the stages that generate pay for it

    prompts = [render_messages(tokenizer, draft_messages(ex)) for ex in examples]
    return draft_records(examples, generate(model, tokenizer, prompts, max_new_tokens, batch_size,
                                            stop=DRAFT_STOP if stop_after_questions else None, desc="drafts"))


def drafts_for(examples: Sequence[Example], path: str) -> list[str]:
    """The draft of each example from a drafts JSONL; a missing one is an error naming the file and the ids."""
    by_id = {row["id"]: row["draft"] for row in read_jsonl(path)}
    missing = [ex.id for ex in examples if ex.id not in by_id]
    if missing:
        raise DataError(f"{path}: no draft for question(s) {missing[:5]}; re-run the stage that writes it")
    return [by_id[ex.id] for ex in examples]


def shuffled(drafts: Sequence[str], seed: int) -> list[str]:
    """Each position gets another position's draft (a seeded derangement; identity only for one draft)."""
    n = len(drafts)
    if n < 2:
        return list(drafts)
    order = list(range(n))
    random.Random(f"{seed}-shuffled-draft").shuffle(order)
    # Rotating a random permutation by one gives a derangement: position order[i] takes order[i+1]'s draft.
    out = [""] * n
    for i in range(n):
        out[order[i]] = drafts[order[(i + 1) % n]]
    return out


def ablation_inputs(variant: str, drafts: Sequence[str], seed: int) -> tuple[list[str] | None, str]:
    """(drafts shown, answer prefill) for one variant."""
    match variant:
        case "full":
            return list(drafts), ""
        case "no_draft":
            return None, ""
        case "shuffled_draft":
            return shuffled(drafts, seed), ""
        case "no_cot":
            return list(drafts), NO_COT_PREFILL
    raise ValueError(f"unknown ablation {variant!r}; expected full or one of {ABLATIONS}")


def mean_with_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean and its t-interval (scipy), for per-example scores such as attribution shares."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        mean = float(x.mean()) if x.size else float("nan")
        return {"mean": mean, "ci_low": float("nan"), "ci_high": float("nan"), "n": int(x.size)}
    low, high = stats.t.interval(confidence, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    return {"mean": float(x.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(x.size)}


# ---------------------------------------------------------------- judge

def judge_pairs(examples: Sequence[Example], challenger: dict[str, list[str]], incumbent: dict[str, list[str]],
                seed: int) -> list[dict]:
    """One comparison per question where both wrote questions; the challenger is shown first or second at random
    (seeded) so a judge's position bias cannot favour either side."""
    rng = random.Random(f"{seed}-judge-order")
    pairs = []
    for ex in examples:
        ours, theirs = challenger.get(ex.id) or [], incumbent.get(ex.id) or []
        if not ours or not theirs:
            continue
        challenger_first = rng.random() < 0.5
        a, b = (ours, theirs) if challenger_first else (theirs, ours)
        pairs.append({"id": ex.id, "challenger_label": "A" if challenger_first else "B",
                      "messages": judge_messages(ex, " ".join(a), " ".join(b)), "example": ex})
    return pairs


_VERDICT = re.compile(r"\b(?:student\s+)?([AB])\b")


def parse_verdict(text: str) -> str | None:
    """The first standalone A or B in the judge's reply; None when there is none."""
    match = _VERDICT.search(text or "")
    return match.group(1) if match else None


def win_rate(pairs: Sequence[dict], verdicts: Sequence[str | None], confidence: float = 0.95) -> dict:
    """Challenger wins / decided comparisons, with a Wilson interval; undecided replies are counted apart."""
    wins = sum(v == p["challenger_label"] for p, v in zip(pairs, verdicts) if v)
    decided = sum(v is not None for v in verdicts)
    low, high = wilson_interval(wins, decided, confidence)
    shown_first = [v == "A" for v in verdicts if v]
    return {"n_compared": len(pairs), "n_decided": decided, "undecided": len(pairs) - decided,
            "challenger_wins": wins, "win_rate": wins / decided if decided else float("nan"),
            "win_rate_ci_low": low, "win_rate_ci_high": high,
            "judge_picks_first": sum(shown_first) / len(shown_first) if shown_first else float("nan")}


# ---------------------------------------------------------------- Phase C, shared by dpo@<task> and the rounds

def pair_examples(examples: Sequence[Example], n_pairs: int | None, seed: int) -> list[Example]:
    """The examples pairs are built from: all, or a seeded sample of the scale's n_pairs."""
    if n_pairs is None or n_pairs >= len(examples):
        return list(examples)
    return random.Random(f"{seed}-pairs-subsample").sample(list(examples), n_pairs)


def train_dpo(params, task: str, start_dir: str, pairs: list[dict], out_dir: str) -> tuple[dict, list[dict]]:
    """DPO from the adapter in `start_dir` on `pairs`; writes the checkpoint; returns (metrics, curve)."""
    from dataclasses import asdict

    from cotlab.methods import dpo
    from cotlab.models import load_for_training, resolve_device, save_adapter
    from cotlab.stage import BASE_MODEL

    config = dpo.DPORunConfig.from_params(params, report_to=["mlflow"])
    model, tokenizer, _ = load_for_training(BASE_MODEL, resolve_device(params.model.device), "none",
                                            asdict(params.cot_distill.lora), start_dir)
    model, metrics, curve = dpo.train(model, tokenizer, pairs, config)
    save_adapter(model, tokenizer, out_dir, BASE_MODEL, "dpo", "cot", "none",
                 params={**asdict(config), "task": task}, extra={"task": task, "init_from": start_dir},
                 with_draft=True)
    return metrics, curve
