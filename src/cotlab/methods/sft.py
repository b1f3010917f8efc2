"""Supervised fine-tuning (Phase A: question -> answer) with LoRA on TRL's SFTTrainer.

Loss, on completion tokens only (the prompt is context, not a target):

    L(theta) = - 1/|C| * sum_{t in C} log p_theta(y_t | x, y_<t)      C = completion positions

Batches are padding-free: the examples of a batch are concatenated into one row with per-example position_ids,
so no compute goes to pad tokens (transformers builds a block-diagonal causal mask from the position_ids; the
loss equals the padded one, see tests/test_methods.py).
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from transformers import TrainerCallback

from cotlab.config import LoraParams
from cotlab.schema import DataError, Example
from cotlab.errors import TrainingDivergedError
from cotlab.models import has_bf16_weights, on_cuda
from cotlab.progress import progress_disabled
from cotlab.prompts import render_training


@dataclass
class TrainConfig:
    """A supervised section of params.yaml: `sft` (Phase A), `cot_distill` (Phase B, methods/cot_distill.py) and
    `cot_sft` (CODI's explicit-CoT baseline). lr and epochs left null are the top-level lr and the scale's epochs
    (Params.resolve fills them before training)."""

    lr: float | None = None  # None = the top-level lr
    epochs: float | None = None  # None = the scale's epochs
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    padding_free: bool = True  # rows concatenated without padding (TRL's padding_free; flash-attention style)
    gradient_checkpointing: bool = False  # TRL turns it on by default; it recomputes activations, costing time
    # The loss from TRL's fused LM head (per-token log-probs in vocabulary chunks, never the full logits: saves GPU
    # memory on long rows) or from the model's own forward (full logits, transformers' causal-LM cross-entropy; the
    # same sum of token NLLs / num_items_in_batch). auto: fused on CUDA, full_logits on CPU, where the chunking is
    # Python-level tiling over the vocabulary: 1.5x slower on the embedded model, 3x on the tiny one
    # (benchmarks/sft_lm_head.py).
    lm_head: Literal["auto", "full_logits", "fused"] = "auto"
    logging_steps: int = 2
    quantization: Literal["none", "4bit"] = "none"  # 4bit: QLoRA (Dettmers et al. 2023), CUDA only
    lora: LoraParams = field(default_factory=LoraParams)
    init_from: Literal["base", "sft"] = "base"  # cot_distill: continue Phase A's adapter (the recipe) or start fresh
    with_draft: bool = False  # prompt = question + "Student draft: <draft>" (Phase B)


def build_dataset(examples: Sequence[Example], tokenizer, template: str, max_length: int, with_draft: bool = False):
    """Prompt-completion rows rendered by the shared template; rows over max_length tokens are dropped (counted),
    never silently truncated: a truncated target teaches the model to stop mid-answer."""
    from datasets import Dataset

    rows, weights, dropped = [], [], 0
    for ex in examples:
        pair = render_training(tokenizer, ex, template, draft=str(ex.metadata.get("draft", "")) if with_draft else None)
        n_tokens = len(tokenizer(pair["prompt"] + pair["completion"], add_special_tokens=False)["input_ids"])
        if n_tokens > max_length:
            dropped += 1
            continue
        rows.append(pair)
        weights.append(ex.weight)
    if not rows:
        raise DataError(
            f"no training example fits max_length={max_length} tokens ({dropped} dropped); raise the scale's max_length"
        )
    return Dataset.from_list(rows), weights, {"n_examples": len(rows), "n_dropped_too_long": dropped}


class LossCurve(TrainerCallback):
    """Records (step, loss, lr) for plots/ and stops with a clear message on a NaN loss."""

    def __init__(self):
        self.rows: list[dict[str, Any]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"training loss became {loss} at step {state.global_step} (lr={logs.get('learning_rate')}); "
                "lower the learning rate or check the data. No checkpoint was written."
            )
        self.rows.append({"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "loss": loss,
                          "learning_rate": logs.get("learning_rate", "")})


def train(model, tokenizer, examples: Sequence[Example], config: TrainConfig, *, template: str, max_length: int,
          seed: int, report_to: Sequence[str] = ()) -> tuple[Any, dict, list[dict]]:
    """Fine-tune `model` (a PEFT model) in place on the section `config` (lr and epochs resolved), rendering rows
    with `template`. Returns (model, metrics, loss curve rows)."""
    if config.lr is None or config.epochs is None:
        raise ValueError("sft.train: lr and epochs must be resolved (Params.resolve) before training")
    from trl import SFTConfig, SFTTrainer

    dataset, weights, data_stats = build_dataset(examples, tokenizer, template, max_length, config.with_draft)
    curve = LossCurve()
    with tempfile.TemporaryDirectory(prefix="cotlab-trainer-") as scratch:
        args = SFTConfig(
            output_dir=scratch,
            learning_rate=config.lr,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            gradient_accumulation_steps=config.grad_accum,
            warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the total steps
            weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm,
            lr_scheduler_type=config.lr_scheduler,
            logging_steps=config.logging_steps,
            logging_first_step=True,
            # The Trainer otherwise hides NaN/inf losses from the logs, and with them our divergence check.
            logging_nan_inf_filter=False,
            save_strategy="no",
            report_to=list(report_to),
            seed=seed,
            data_seed=seed,
            completion_only_loss=True,
            padding_free=config.padding_free,
            gradient_checkpointing=config.gradient_checkpointing,
            # Padding-free rows are concatenations, so max_length is enforced by build_dataset instead.
            max_length=None if config.padding_free else max_length,
            dataloader_num_workers=0,
            disable_tqdm=progress_disabled(),
            use_cpu=not on_cuda(model),
            bf16=on_cuda(model) and has_bf16_weights(model),
            # Liger's fused kernels (RMSNorm, SwiGLU, fused linear cross-entropy) where installed: CUDA only.
            use_liger_kernel=on_cuda(model) and importlib.util.find_spec("liger_kernel") is not None,
        )
        fused = config.lm_head == "fused" or (config.lm_head == "auto" and on_cuda(model))
        trainer_class = SFTTrainer if fused else _full_logits_trainer()
        if any(w != 1.0 for w in weights):
            trainer_class = _weighted_trainer(trainer_class, weights, seed)
        trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                callbacks=[curve])
        result = trainer.train()
    metrics = {
        **data_stats,
        "train_loss": float(result.training_loss),
        "train_steps": int(result.global_step),
        "processes": int(args.world_size),  # > 1 under accelerate: the batch above is per process
        "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
        "train_samples_per_s": float(result.metrics.get("train_samples_per_second", 0.0)),
        "final_loss": curve.rows[-1]["loss"] if curve.rows else float("nan"),
        "lm_head": "fused" if fused else "full_logits",
    }
    if not math.isfinite(metrics["train_loss"]):
        raise TrainingDivergedError(f"training loss is {metrics['train_loss']}; no checkpoint was written")
    return model, metrics, curve.rows


def _full_logits_trainer():
    """SFTTrainer whose loss is the model's own: full logits and transformers' causal-LM cross-entropy, as
    `Trainer.compute_loss` computes it (TRL's token entropy and accuracy metrics are not logged)."""
    from transformers import Trainer
    from trl import SFTTrainer

    class FullLogitsSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, return_outputs,
                                        num_items_in_batch)

    return FullLogitsSFTTrainer


def _weighted_trainer(trainer_class, weights: list[float], seed: int):
    """`trainer_class` drawing rows with probability proportional to their weight (filter's `rebalance: weights`).

    Sampling with replacement by weight w_i gives a gradient whose expectation is that of the weighted loss
    sum_i w_i * L_i / sum_i w_i, and keeps padding-free batches intact (a per-row loss scale would not).
    """
    import torch
    from torch.utils.data import WeightedRandomSampler

    class WeightedSFTTrainer(trainer_class):
        def _get_train_sampler(self, train_dataset=None):
            return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                         generator=torch.Generator().manual_seed(seed))

    return WeightedSFTTrainer
