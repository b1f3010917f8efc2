"""DPO (Phase C): each calibration and robust variant equals a direct computation on hand-made log-ratios; the
beta schedule is applied per epoch (read back from the trainer's logs); training changes the LoRA weights."""
import math

import pytest
import torch

from conftest import LORA
from cotlab.methods.dpo import DEFAULT_DPO_SCHEDULE as DEFAULT_SCHEDULE
from cotlab.methods.dpo import DPOPhase, aggregate, pair_losses, phase_at, scheduled_trainer

R_W = [0.3, -1.2, 2.0, 0.1]  # chosen log-ratios  log pi(y_w|x) - log pi_ref(y_w|x)
R_L = [-0.5, 0.4, 1.0, 0.1]  # rejected log-ratios


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def tensors():
    return torch.tensor(R_W, dtype=torch.float64), torch.tensor(R_L, dtype=torch.float64)


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
def test_pair_losses_match_the_papers(beta):
    deltas = [w - l for w, l in zip(R_W, R_L)]
    mean = sum(deltas) / len(deltas)
    cal_term = 0.5 * (sum((w - 1 / (2 * beta)) ** 2 for w in R_W) / len(R_W)
                      + sum((l + 1 / (2 * beta)) ** 2 for l in R_L) / len(R_L))
    expected = {
        "none": [-log_sigmoid(beta * d) for d in deltas],
        "batch_mean": [-log_sigmoid(beta * (d - mean)) for d in deltas],
        "cal_dpo": [-log_sigmoid(w - l) + cal_term for w, l in zip(R_W, R_L)],  # one batch-level term
    }
    for calibration, values in expected.items():
        got = pair_losses(*tensors(), beta, calibration)
        assert got.tolist() == pytest.approx(values, rel=1e-12), calibration


def test_robust_aggregates_match_direct_computation():
    losses = torch.tensor([0.2, 1.5, 0.7, 3.0, 0.1, 0.9, 0.4], dtype=torch.float64, requires_grad=True)
    values = losses.tolist()
    assert aggregate(losses, "none")[0].item() == pytest.approx(sum(values) / 7)
    loss, dropped = aggregate(losses, "drop_top", drop_fraction=0.3)  # keeps int(0.7 * 7) = 4: 3 pairs out
    assert dropped == 3 and loss.item() == pytest.approx((0.2 + 0.7 + 0.1 + 0.4) / 4)
    loss.backward()
    assert [g != 0 for g in losses.grad.tolist()] == [True, False, True, False, True, False, True]  # 1.5, 3.0, 0.9
    for dr_beta in (0.5, 1.0, 4.0):
        expected = -dr_beta * math.log(sum(math.exp(-v / dr_beta) for v in values) / 7)
        assert aggregate(losses, "dr_dpo", dr_beta=dr_beta)[0].item() == pytest.approx(expected, rel=1e-12)


def test_unknown_variants_are_named():
    with pytest.raises(ValueError, match="calibration 'cal'"):
        pair_losses(*tensors(), 0.1, "cal")
    with pytest.raises(ValueError, match="robust 'drop'"):
        aggregate(torch.ones(3), "drop")


def test_schedule_by_epoch():
    betas = [phase_at(DEFAULT_SCHEDULE, e) for e in (0.0, 0.99, 1.0, 2.5, 3.0, 3.9, 7.0)]
    assert [p.beta for p in betas] == [0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert [p.calibration for p in betas] == ["none", "none", "batch_mean", "batch_mean", "batch_mean",
                                              "batch_mean", "batch_mean"]
    assert [p.robust for p in betas] == ["none"] * 4 + ["drop_top"] * 3


@pytest.mark.parametrize("calibration,robust", [("none", "none"), ("batch_mean", "drop_top"),
                                                ("cal_dpo", "dr_dpo")])
def test_training_follows_the_schedule_and_changes_lora(tiny_base, examples, calibration, robust, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig

    from cotlab.models import load_for_training
    from cotlab.prompts import render_prompt

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    rows = [{"prompt": render_prompt(tokenizer, ex, "direct"),
             "chosen": f"The answer is: {ex.answer.capitalize()}{tokenizer.eos_token}",
             "rejected": f"The answer is: {'No' if ex.answer == 'yes' else 'Yes'}{tokenizer.eos_token}"}
            for ex in examples["train"][:16]]
    schedule = [DPOPhase(1, 0.05, "none", "none"), DPOPhase(1, 0.2, calibration, robust)]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    args = DPOConfig(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=5e-3,
                     logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                     gradient_checkpointing=False)
    trainer = scheduled_trainer(schedule)(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                          processing_class=tokenizer)
    trainer.train()
    logs = [r for r in trainer.state.log_history if "beta" in r]
    assert [r["beta"] for r in logs] == [0.05, 0.05, 0.2, 0.2]  # 2 steps per epoch
    assert all(math.isfinite(r["loss"]) for r in logs)
    assert [r["pairs_dropped"] for r in logs] == [0, 0, *([2, 2] if robust == "drop_top" else [0, 0])]  # 8 - int(6.8)
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every trained LoRA matrix moved
    # TRL keeps the starting adapter as a frozen "ref" copy: the reference never moves.
    ref = {n: p for n, p in after.items() if ".ref." in n}
    assert ref and all(not p.requires_grad for p in ref.values())
    assert all(torch.equal(p, before[n.replace(".ref.", ".default.")]) for n, p in ref.items())


def test_dpo_train_on_pairs_from_filtered_examples(tiny_base, examples):
    from dataclasses import replace

    from cotlab.data.pairs import build_pairs
    from cotlab.methods.dpo import DPOConfig, train
    from cotlab.models import load_for_training

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    drafts = ["Answer: Yes - it is.", "Answer: No - it is not.", "hmm, unsure"]
    filtered = [replace(ex, metadata={**ex.metadata, "draft": drafts[i % 3]}) for i, ex in enumerate(examples["train"][:12])]
    pairs, metrics = build_pairs(filtered, tokenizer, seed=0)
    assert metrics["n_pairs"] == 12 and metrics["made.draft_wrong"] + metrics["made.flipped"] == 12
    wrong_drafts = [p for p in pairs if p["made"] == "draft_wrong"]
    assert wrong_drafts and all(p["rejected"].startswith("Answer: ") for p in wrong_drafts)
    assert all("Student draft: " in p["prompt"] and p["chosen"] != p["rejected"] for p in pairs)
    config = DPOConfig(schedule=[DPOPhase(1, 0.1, "none", "none"), DPOPhase(1, 0.1, "cal_dpo", "dr_dpo")],
                       lr=5e-3, batch_size=6)
    model, metrics, curve = train(model, tokenizer, pairs, config, max_length=512, seed=0)
    assert metrics["train_steps"] == 4 and math.isfinite(metrics["train_loss"])
    assert [row["beta"] for row in curve] == [0.1] * 4 and [row["step"] for row in curve] == [1, 2, 3, 4]


def _trainer(tiny_base, examples, tmp_path, reference="start"):
    from datasets import Dataset
    from trl import DPOConfig

    from cotlab.models import load_for_training
    from cotlab.prompts import render_prompt

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    rows = [{"prompt": render_prompt(tokenizer, ex, "direct"),
             "chosen": f"The answer is: {ex.answer.capitalize()}{tokenizer.eos_token}",
             "rejected": f"Well, maybe. The answer is: {'No' if ex.answer == 'yes' else 'Yes'}{tokenizer.eos_token}"}
            for ex in examples["train"][:4]]
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                     save_strategy="no", disable_tqdm=True, gradient_checkpointing=False)
    trainer = scheduled_trainer([DPOPhase()])(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                              processing_class=tokenizer)
    return model, trainer


def test_sequence_logps_equal_a_direct_computation(tiny_base, examples, tmp_path):
    model, trainer = _trainer(tiny_base, examples, tmp_path)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a non-zero adapter, so the policy differs from the base
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        chosen, rejected = trainer._sequence_logps(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    direct = (logprobs * batch["completion_mask"][:, 1:]).sum(dim=1)
    assert torch.allclose(torch.cat([chosen, rejected]), direct, atol=1e-4)
    assert batch["completion_mask"][:, 1:].sum(dim=1).min() > 0


@pytest.mark.parametrize("reference", ["start", "base"])
def test_the_reference_is_the_starting_adapter_or_the_base(tiny_base, examples, tmp_path, reference):
    """`start` keeps a frozen copy of the adapter DPO starts from (log-ratios start at 0); `base` disables it."""
    from dataclasses import replace

    from cotlab.data.pairs import build_pairs
    from cotlab.methods.dpo import DPOConfig, train
    from cotlab.models import load_for_training

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained-looking starting adapter (fresh LoRA B is zero: policy == base)
                p.add_(0.05 * torch.randn_like(p))
    filtered = [replace(ex, metadata={**ex.metadata, "draft": "Answer: Yes - sure."}) for ex in examples["train"][:8]]
    pairs, _ = build_pairs(filtered, tokenizer, seed=0)
    config = DPOConfig(schedule=[DPOPhase(1, 0.1)], lr=1e-3, batch_size=8, reference=reference)
    model, metrics, curve = train(model, tokenizer, pairs, config, max_length=512, seed=0)
    first_margin = curve[0]["reward_margin"]
    if reference == "start":
        assert first_margin == pytest.approx(0.0, abs=1e-6) and curve[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    else:
        assert abs(first_margin) > 1e-4
    assert "ref" not in model.peft_config  # the checkpoint holds the trained adapter only
