"""DPO variants against their reference code: each test transcribes the reference's lines (cited by repository,
file, line and commit) and checks cotlab's loss equals it on the same inputs; and the precomputed reference
log-probs equal the per-step ones for either reference (the starting adapter or the base model)."""
import contextlib
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import LORA
from cotlab.methods import dpo
from cotlab.methods.dpo import DPOPhase, aggregate, pair_losses


def logratios(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=torch.float64) * 3,
            torch.randn(n, generator=g, dtype=torch.float64) * 3)


def official_cal_dpo(chosen_rewards, rejected_rewards, beta):
    """tengxiao1/Cal-DPO scripts/dpo_trainer.py L1204-1216 (commit 646a7545273060d17ee28796a018bfc3d472fa67),
    with chosen_rewards = policy_chosen_logps - reference_chosen_logps (L1204), likewise rejected (L1205).
    F.mse_loss reduces by the mean, so Cal_loss is one number per batch, added to every pair's DPO term."""
    DPO_loss = -F.logsigmoid((chosen_rewards - rejected_rewards))
    with warnings.catch_warnings():  # mse_loss warns that the 0-d target broadcasts; the reference relies on it
        warnings.simplefilter("ignore", UserWarning)
        Cal_loss = F.mse_loss(chosen_rewards,
                              torch.tensor(1.0 / (2.0 * beta)).to(chosen_rewards)) + F.mse_loss(
            rejected_rewards, torch.tensor(-1.0 / (2.0 * beta)).to(rejected_rewards))
    losses = DPO_loss + 0.5*Cal_loss
    return losses


@pytest.mark.parametrize("beta", [0.001, 0.05, 0.1, 1.0])  # 0.001: the official run/beta001_sametokenize.sh
@pytest.mark.parametrize("n", [1, 4, 8, 33])
def test_cal_dpo_equals_the_official_loss(beta, n):
    r_w, r_l = logratios(n, seed=n)
    expected = official_cal_dpo(r_w, r_l, beta)
    assert torch.allclose(pair_losses(r_w, r_l, beta, "cal_dpo"), expected, rtol=1e-12, atol=0)
    # The trainer's loss is losses.mean() (L1386): same value and same gradient through the log-ratios.
    ours_w, ours_l = r_w.clone().requires_grad_(), r_l.clone().requires_grad_()
    ref_w, ref_l = r_w.clone().requires_grad_(), r_l.clone().requires_grad_()
    ours = aggregate(pair_losses(ours_w, ours_l, beta, "cal_dpo"), "none")[0]
    ref = official_cal_dpo(ref_w, ref_l, beta).mean()
    ours.backward(), ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(ours_w.grad, ref_w.grad, rtol=1e-10) and torch.allclose(ours_l.grad, ref_l.grad, rtol=1e-10)


def official_dr_dpo(losses, mode_weight):
    """junkangwu/Dr_DPO trainers.py L269-272 (commit b980ad08c8068abc4cf529b3c4bb7caec225a9aa), mode_loss "DrDPO";
    `losses` are preference_loss's per-pair DPO losses (L82, label_smoothing 0: -logsigmoid(beta * logits))."""
    return - mode_weight * torch.log(torch.mean(torch.exp( - losses / mode_weight)))


@pytest.mark.parametrize("dr_beta", [0.1, 0.5, 1.0, 4.0])  # 1.0: the reference's default (config/loss/dpo.yaml)
def test_dr_dpo_equals_the_official_loss(dr_beta):
    r_w, r_l = logratios(16, seed=1)
    beta = 0.1
    # the reference's per-pair loss (L76, L82): logits = pi_logratios - ref_logratios = r_w - r_l
    reference_losses = -F.logsigmoid(beta * (r_w - r_l)) * (1 - 0) - F.logsigmoid(-beta * (r_w - r_l)) * 0
    losses = pair_losses(r_w, r_l, beta, "none")
    assert torch.allclose(losses, reference_losses, rtol=1e-12, atol=0)
    a = losses.clone().requires_grad_()
    b = losses.clone().requires_grad_()
    ours, n_dropped = aggregate(a, "dr_dpo", dr_beta=dr_beta)
    ref = official_dr_dpo(b, dr_beta)
    ours.backward(), ref.backward()
    assert n_dropped == 0 and ours.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(a.grad, b.grad, rtol=1e-10)


def official_co_teaching(loss_1, loss_2, forget_rate):
    """bhanML/Co-teaching loss.py L8-29, loss_coteaching (commit 03f0c453f964ea4cbf8149260498d7ac0ff5e3fa, the file
    unchanged at 7c7fbe23e15e517db76a0882b6d108e4508e09d6), with each network's per-sample cross-entropy given (L9,
    L13: reduce=False) and F.cross_entropy's default mean over a subset written as .mean() (L26-27); the pure_ratio
    diagnostics (L20-21, the share of clean labels kept) left out. Returns L29's losses and the two selections."""
    ind_1_sorted = np.argsort(loss_1.data.numpy())  # L10 (.numpy() for NumPy 2, .cuda() dropped)
    loss_1_sorted = loss_1[ind_1_sorted]  # L11
    ind_2_sorted = np.argsort(loss_2.data.numpy())  # L14
    loss_2_sorted = loss_2[ind_2_sorted]  # L15
    remember_rate = 1 - forget_rate  # L17
    num_remember = int(remember_rate * len(loss_1_sorted))  # L18
    ind_1_update = ind_1_sorted[:num_remember]  # L23: network 1's small-loss samples
    ind_2_update = ind_2_sorted[:num_remember]  # L24
    # exchange
    loss_1_update = loss_1[ind_2_update].mean()  # L26: network 1 is updated on network 2's selection
    loss_2_update = loss_2[ind_1_update].mean()  # L27
    return torch.sum(loss_1_update)/num_remember, torch.sum(loss_2_update)/num_remember, ind_1_update, ind_2_update


@pytest.mark.parametrize("fraction", [0.05, 0.15, 0.3, 0.5])
@pytest.mark.parametrize("n", [2, 3, 4, 6, 7, 8, 16, 33])
def test_drop_top_keeps_the_small_loss_pairs_like_co_teaching(fraction, n):
    """drop_top is Co-teaching's small-loss selection (L10-11, L17-18, L23) for one network, an adaptation: Co-teaching
    trains two networks and updates each on the samples its peer ranks small-loss (the exchange, L26-27); one network
    keeps its own. That is the reference with the peer the same network (loss_2 = loss_1), where the exchange hands each
    its own selection. Two differences, named: L29 divides the already averaged loss (L26) by num_remember once more,
    drop_top takes the plain mean of the kept losses; and drop_top keeps at least one pair where L18 would keep 0."""
    g = torch.Generator().manual_seed(n)
    losses = (torch.rand(n, generator=g, dtype=torch.float64) * 3).requires_grad_()
    returned, _, ind_1_update, ind_2_update = official_co_teaching(losses, losses, fraction)
    num_remember = len(ind_1_update)
    assert np.array_equal(ind_1_update, ind_2_update)  # one network: its peer's selection is its own
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # n >= 2 always drops something: no too-small warning
        loss, dropped = aggregate(losses, "drop_top", drop_fraction=fraction)
    assert dropped == n - num_remember >= 1
    assert loss.item() == pytest.approx(returned.item() * num_remember, rel=1e-12)  # the mean L26 takes, before L29
    loss.backward()
    assert set(torch.nonzero(losses.grad).flatten().tolist()) == set(ind_1_update.tolist())  # trained on those only


def test_drop_top_examples():
    """The default 0.15 drops one pair of 2..6 (int(0.15 * n) dropped none), two of 8, five of 33."""
    for n, dropped in [(2, 1), (4, 1), (6, 1), (7, 2), (8, 2), (33, 5)]:
        assert aggregate(torch.arange(n, dtype=torch.float64), "drop_top", drop_fraction=0.15)[1] == dropped, n
    assert aggregate(torch.arange(8.0), "drop_top", drop_fraction=0.0)[1] == 0  # 0 is no filter, and no warning


def test_drop_top_warns_once_when_the_batch_is_too_small(monkeypatch):
    monkeypatch.setattr(dpo, "_warned_too_small", False)
    with pytest.warns(UserWarning, match="drop_top.*1 pair"):
        loss, dropped = aggregate(torch.tensor([2.5]), "drop_top", drop_fraction=0.15)
    assert dropped == 0 and loss.item() == 2.5  # a lone pair is kept (Co-teaching would divide by 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aggregate(torch.tensor([2.5]), "drop_top", drop_fraction=0.15)  # once only


# --- precomputed reference log-probs -----------------------------------------------------------------------------


def _pairs_and_model(tiny_base, examples, seed=0):
    from cotlab.models import load_for_training
    from cotlab.prompts import render_prompt

    torch.manual_seed(seed)  # LoRA A's initialisation too: the same starting policy each call
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained-looking starting adapter, so start and base references differ
                p.add_(0.05 * torch.randn_like(p))
    rows = [{"prompt": render_prompt(tokenizer, ex, "direct"),
             "chosen": f"The answer is: {ex.answer.capitalize()}{tokenizer.eos_token}",
             "rejected": f"Well, maybe. The answer is: {'No' if ex.answer == 'yes' else 'Yes'}{tokenizer.eos_token}"}
            for ex in examples["train"][:6]]
    return model, tokenizer, rows


@pytest.mark.parametrize("reference", ["start", "base"])
def test_precomputed_reference_logps_are_the_reference_s(tiny_base, examples, tmp_path, reference):
    """TRL (trl 1.16.0 trl/trainer/dpo_trainer.py L666-689) adds the "ref" copy of the starting adapter in
    DPOTrainer.__init__ and, with precompute_ref_log_probs, runs the reference pass there too (L1013-1018, through
    compute_ref_log_probs, L1243-1258): so the reference must be chosen by the time the trainer is built. Each
    precomputed column must equal the reference computed directly: the untouched starting adapter, or the base."""
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from trl import DPOConfig

    model, tokenizer, rows = _pairs_and_model(tiny_base, examples)
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                     save_strategy="no", disable_tqdm=True, gradient_checkpointing=False,
                     precompute_ref_log_probs=True)
    trainer = dpo.scheduled_trainer([DPOPhase()], reference=reference)(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    data = trainer.train_dataset
    pre_chosen, pre_rejected = torch.tensor(data["ref_chosen_logps"]), torch.tensor(data["ref_rejected_logps"])
    batches = DataLoader(data, batch_size=3, collate_fn=trainer.data_collator, shuffle=False)  # other padding

    autocast = trainer.accelerator.autocast  # TRL's default bf16 applies on CPU too: training steps run under it

    def logps(adapter_on: bool):
        with torch.no_grad(), autocast(), contextlib.nullcontext() if adapter_on else model.disable_adapter():
            return [trainer._sequence_logps(model, b) for b in batches]

    # No training step yet: the trained adapter is still the starting one.
    start, base = logps(True), logps(False)
    direct, other = (start, base) if reference == "start" else (base, start)
    with autocast():
        per_step = [trainer._reference_logps(model, b) for b in batches]  # what the non-precomputed path uses
    for got in (direct, per_step):
        assert torch.allclose(torch.cat([c for c, _ in got]), pre_chosen, atol=1e-4)
        assert torch.allclose(torch.cat([r for _, r in got]), pre_rejected, atol=1e-4)
    assert not torch.allclose(torch.cat([c for c, _ in other]), pre_chosen, atol=1e-2)  # the other reference differs


def test_the_precompute_cache_tells_the_references_apart(tiny_base, examples, tmp_path):
    """TRL caches the precomputed columns under a hash of the data and the weights (trl 1.16.0 dpo_trainer.py L980-982,
    L1174-1181), the same for both references: in one process the second would read the first's cache."""
    from datasets import Dataset
    from trl import DPOConfig

    columns = {}
    for reference in ("start", "base", "start"):
        model, tokenizer, rows = _pairs_and_model(tiny_base, examples)
        args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=6, report_to=[], use_cpu=True,
                         save_strategy="no", disable_tqdm=True, gradient_checkpointing=False,
                         precompute_ref_log_probs=True)
        trainer = dpo.scheduled_trainer([DPOPhase()], reference=reference)(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        got = torch.tensor(trainer.train_dataset["ref_chosen_logps"])
        if reference in columns:
            assert torch.equal(got, columns[reference])  # the same reference still reuses its cache
        columns[reference] = got
    assert not torch.allclose(columns["start"], columns["base"], atol=1e-2)


@pytest.mark.parametrize("reference", ["start", "base"])
def test_train_with_precomputed_reference_takes_the_same_first_step(tiny_base, examples, reference):
    """End to end through train(): the first step's loss and reward margin (before any update) are the same whether
    the reference log-probs are precomputed or computed per step."""
    from cotlab.methods.dpo import DPOConfig, train

    first = {}
    for precompute in (False, True):
        model, tokenizer, rows = _pairs_and_model(tiny_base, examples)
        config = DPOConfig(schedule=[DPOPhase(1, 0.1)], lr=1e-3, batch_size=6, reference=reference,
                           precompute_ref=precompute)
        _, _, curve = train(model, tokenizer, rows, config, max_length=512, seed=0)
        first[precompute] = curve[0]
    assert first[True]["reward_margin"] == pytest.approx(first[False]["reward_margin"], abs=1e-4)
    assert first[True]["loss"] == pytest.approx(first[False]["loss"], abs=1e-5)
    if reference == "start":
        assert first[True]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    else:
        assert abs(first[True]["reward_margin"]) > 1e-3
