"""One self-guided round (the self-improving system, Phase C repeated): the round's starting model drafts anew for the
train and test questions, pairs are rebuilt from those drafts and the teacher's reasoning, DPO trains again from
that model, and the new model is evaluated on the test questions with its own new drafts."""

from __future__ import annotations

from dataclasses import replace

from cotlab.data.pairs import build_pairs, pair_examples
from cotlab.evaluation.generate import load_generator
from cotlab.evaluation.run import evaluate
from cotlab.methods.dpo import train_checkpoint
from cotlab.schema import Example
from cotlab.selfimprove.drafts import DraftsConfig, student_drafts


def run_round(params, task: str, base_dir: str, start_dir: str, out_dir: str, filtered: list[Example],
              test: list[Example], max_new_tokens: int) -> dict:
    """Train the round's model into `out_dir`; returns its rows (drafts, pairs, predictions), curve and summary."""
    drafts = params.section("drafts", DraftsConfig)
    batch_size = drafts.batch_size or params.sizes.eval_batch_size
    filtered = pair_examples(filtered, params.sizes.n_pairs, params.seed)
    model, tokenizer, _ = load_generator(start_dir, params.model.device, params.generation)
    unique = list({ex.id: ex for ex in filtered}.values())  # upsampled rows share one draft
    train_rows, train_drafts = student_drafts(model, tokenizer, unique, drafts.max_new_tokens, batch_size,
                                              drafts.stop_after_questions)
    test_rows, test_drafts = student_drafts(model, tokenizer, test, drafts.max_new_tokens, batch_size,
                                            drafts.stop_after_questions)
    del model
    new_draft = {row["id"]: row["draft"] for row in train_rows}
    pairs, pair_metrics = build_pairs([replace(ex, metadata={**ex.metadata, "draft": new_draft[ex.id]})
                                       for ex in filtered], tokenizer, params.seed)

    train_metrics, curve = train_checkpoint(params, task, base_dir, start_dir, pairs, out_dir)
    model, tokenizer, _ = load_generator(out_dir, params.model.device, params.generation)
    predictions, eval_metrics = evaluate(model, tokenizer, test, "cot", max_new_tokens,
                                         params.evaluate.batch_size or params.sizes.eval_batch_size,
                                         drafts=[row["draft"] for row in test_rows],
                                         stop_at_answer=params.evaluate.stop_at_answer)
    summary = {"drafts_train": train_drafts, "drafts_test": test_drafts, "pairs": pair_metrics,
               "train": train_metrics, "eval": {k: v for k, v in eval_metrics.items() if not k.startswith("pred_share")}}
    return {"drafts_train": train_rows, "drafts_test": test_rows, "pairs": pairs, "predictions": predictions,
            "curve": curve, "summary": summary}
