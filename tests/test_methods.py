"""SFT and CoT distillation on a tiny model: the loss is finite, LoRA weights change, NaN stops training."""
import math

import pytest
import torch

from conftest import LORA
from cotlab.methods import cot_distill, sft
from cotlab.models import load_for_training, save_adapter, read_manifest

FAST = sft.TrainConfig(epochs=1, batch_size=4, logging_steps=1, lr=5e-3)
RUN = dict(max_length=512, seed=0, report_to=[])  # what the stage passes beside the section


def lora_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("method", ["sft", "cot_distill"])
def test_training_changes_lora_weights_with_finite_loss(method, tiny_base, examples):
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    before = lora_weights(model)
    if method == "sft":
        model, metrics, curve = sft.train(model, tokenizer, examples["train"], FAST, template="direct", **RUN)
    else:
        model, metrics, curve = cot_distill.train(model, tokenizer, examples["train"], FAST, **RUN)
    after = lora_weights(model)
    assert math.isfinite(metrics["train_loss"]) and metrics["train_steps"] == 6
    assert curve and all(math.isfinite(r["loss"]) for r in curve)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) == len(before)  # every LoRA matrix received gradient
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert frozen == []


def test_padding_free_batch_has_the_padded_loss(tiny_base, tokenizer, examples):
    """Padding-free concatenation must not let examples attend to each other: same loss as padded batches."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from cotlab.models import load_checkpoint

    model, _, _ = load_checkpoint(tiny_base, "cpu")
    dataset, _, _ = sft.build_dataset(examples["train"][:4], tokenizer, "cot", 512)
    rows = []
    for r in dataset:
        prompt = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        completion = tokenizer(r["completion"], add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)})
    losses = {}
    for padding_free in (True, False):
        batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=padding_free)(rows)
        with torch.no_grad():
            # As in SFTTrainer.compute_loss: without a KV cache, transformers builds the block-diagonal mask
            # from position_ids (with a cache it would let packed examples attend to each other).
            losses[padding_free] = model(**batch, use_cache=False).loss.item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_full_logits_loss_is_trls_fused_lm_head_loss(tiny_base, examples):
    """`lm_head: full_logits` (the CPU default) trains on the loss TRL's fused LM head computes: the same per-step
    losses and the same LoRA weights after three steps, to float order."""
    from dataclasses import replace

    runs = {}
    for lm_head in ("fused", "full_logits"):
        model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
        config = replace(FAST, lm_head=lm_head)
        model, metrics, curve = sft.train(model, tokenizer, examples["train"][:12], config, template="cot", **RUN)
        assert metrics["lm_head"] == lm_head
        runs[lm_head] = ([r["loss"] for r in curve], lora_weights(model))
    (fused_losses, fused_weights), (full_losses, full_weights) = runs["fused"], runs["full_logits"]
    assert len(full_losses) == 3 and full_losses == pytest.approx(fused_losses, rel=1e-5)
    assert all(torch.allclose(full_weights[n], fused_weights[n], atol=1e-6) for n in fused_weights)


def test_cot_distill_continues_the_sft_adapter(tiny_base, examples, tmp_path):
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    model, _, _ = sft.train(model, tokenizer, examples["train"], FAST, template="direct", **RUN)
    save_adapter(model, tokenizer, tmp_path / "sft", tiny_base, "sft", "direct", "none", params={})
    phase_a = lora_weights(model)
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, str(tmp_path / "sft"))
    loaded = lora_weights(model)
    assert all(torch.equal(phase_a[n], loaded[n]) for n in phase_a)  # Phase B starts where Phase A ended
    model, metrics, _ = cot_distill.train(model, tokenizer, examples["train"], FAST, **RUN)
    manifest = save_adapter(model, tokenizer, tmp_path / "cot", tiny_base, "cot_distill", "cot", "none", params={},
                            extra={"init_from": str(tmp_path / "sft")})
    assert manifest["init_from"] == str(tmp_path / "sft")
    assert read_manifest(tmp_path / "cot")["prompt"]["template"] == "cot"
    assert any(not torch.equal(loaded[n], p) for n, p in lora_weights(model).items())


def test_nan_loss_stops_training_with_a_clear_error(tiny_base, examples):
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.fill_(float("nan"))
    with pytest.raises(sft.TrainingDivergedError, match="loss became nan at step 1"):
        sft.train(model, tokenizer, examples["train"], FAST, template="direct", **RUN)


def test_examples_longer_than_max_length_are_dropped_and_counted(tokenizer, examples):
    from cotlab.schema import DataError

    lengths = sorted(len(tokenizer("".join(sft.render_training(tokenizer, ex, "cot").values()))["input_ids"])
                     for ex in examples["train"])
    dataset, _, stats = sft.build_dataset(examples["train"], tokenizer, "cot", max_length=lengths[len(lengths) // 2])
    assert stats["n_dropped_too_long"] > 0 and len(dataset) == stats["n_examples"]
    with pytest.raises(DataError, match="max_length=16"):
        sft.build_dataset(examples["train"], tokenizer, "cot", max_length=16)


def test_rebalance_weights_are_consumed_by_training(tiny_base, examples):
    """filter's `rebalance: weights`: rows are drawn with probability proportional to their weight."""
    from collections import Counter
    from dataclasses import replace

    from trl import SFTConfig

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    weighted = [replace(ex, weight=3.0 if i % 4 == 0 else 1.0) for i, ex in enumerate(examples["train"])]
    before = lora_weights(model)
    model, metrics, _ = sft.train(model, tokenizer, weighted, FAST, template="direct", **RUN)
    assert math.isfinite(metrics["train_loss"]) and metrics["train_steps"] == 6
    assert all(not torch.equal(before[n], p) for n, p in lora_weights(model).items())

    dataset, weights, _ = sft.build_dataset(weighted, tokenizer, "direct", 512)
    trainer = sft._weighted_trainer(sft._full_logits_trainer(), weights, seed=0)(
        model=model, args=SFTConfig(output_dir="/tmp/unused", report_to=[], use_cpu=True), train_dataset=dataset,
        processing_class=tokenizer)
    draws, sampler = Counter(), trainer._get_train_sampler()
    for _ in range(200):  # 200 epochs' worth: the generator moves on between passes
        draws.update(i % 4 == 0 for i in sampler)
    share_heavy = draws[True] / sum(draws.values())
    assert share_heavy == pytest.approx(3 * 6 / (3 * 6 + 18), abs=0.03)  # 6 rows at weight 3, 18 at 1
