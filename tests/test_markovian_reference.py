"""Fidelity to the reference Markovian training code, github.com/scottviteri/MarkovianTraining (src/train.py at commit
6c18282f7a6a4ed8815ffd6983556a437067c347, src/utils.py at 0748fd27a5b7ec6537dcb29deb27874965ca2f85: the newest
versions of both, unchanged at HEAD 09d0db9d): the per-example loss, the expert-iteration mask, no update when no
example passes the threshold, and the use_ppo / ppo_epochs rule."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import ROOT
from cotlab.config import ConfigError, load_yaml, parse_params
from cotlab.methods import markovian as M
from test_markovian import lora_snapshot, run_step, small_config


# ---------------------------------------------------------------- the reference, transcribed

def reference_losses(R_mean_actor_logprobs, advantages, kl, kl_penalty, actor_reward_weight=0.0):
    """src/train.py calculate_losses, lines 511-531 (PG, no PPO, no entropy bonus): per example,
    -R_mean_actor_logprobs * A.detach() (- actor_reward_weight * A, with A's gradient) + kl_penalty * kl."""
    losses = -R_mean_actor_logprobs * advantages.detach()
    if actor_reward_weight > 0.0:
        losses = losses - actor_reward_weight * advantages
    return losses + kl_penalty * kl


def reference_ei_mask(normalized_rewards, previous_normalized_rewards, use_ei, in_skip_period=False):
    """src/train.py lines 552-556 with src/utils.py calculate_threshold, lines 569-593: keep R > mean + use_ei * std
    of all earlier R (np.std: population std); the threshold is inf in the initial skip period (lines 582-584)."""
    threshold = (float("inf") if in_skip_period else
                 np.mean(previous_normalized_rewards) + use_ei * np.std(previous_normalized_rewards))
    return (normalized_rewards > threshold).float()


def reference_update_loss(losses, training_mask):
    """src/train.py update_model, lines 1493-1531: the mask multiplies the whole per-example loss, and with no active
    example there is no backward and no optimizer step (`if num_active > 0:`, line 1520): None here."""
    num_active = training_mask.sum().item()
    if num_active == 0:
        return None
    return (losses * training_mask).sum() / num_active


# ---------------------------------------------------------------- ours against it

def inputs(n=6, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(n, length, generator=g) * 3).requires_grad_()
    kl = (torch.rand(n, length, generator=g) * 0.2).requires_grad_()
    return logp, kl, torch.randn(n, generator=g)


@pytest.mark.parametrize("use_ei", [None, 0.0, 0.5])
def test_per_example_loss_and_expert_iteration_match_the_reference(use_ei):
    logp, kl, normalized = inputs()
    history = torch.randn(40, generator=torch.Generator().manual_seed(1)).tolist()
    advantages = M.group_advantages(normalized, 3)
    config = small_config(kl_penalty=0.3, expert_iteration=use_ei)

    keep = torch.ones(6) if use_ei is None else M.expert_iteration_keep(normalized, history, use_ei, warm=True)
    _, ours_i = M.per_cot_loss(logp, logp.detach(), advantages, kl, config)
    ours = M.masked_mean(ours_i, keep)
    ours_grads = torch.autograd.grad(ours, (logp, kl))

    # The reference takes the mean log-prob and the mean per-token KL of each CoT (lines 298-304, 732-740).
    mask = torch.ones(6) if use_ei is None else reference_ei_mask(normalized, np.array(history), use_ei)
    ref = reference_update_loss(reference_losses(logp.mean(1), advantages, kl.mean(1), 0.3), mask)
    assert torch.equal(keep, mask)
    assert use_ei is None or 0 < keep.sum() < 6  # the inputs make the mask matter
    assert torch.allclose(ours, ref, atol=1e-6)
    for a, b in zip(ours_grads, torch.autograd.grad(ref, (logp, kl))):
        assert torch.allclose(a, b, atol=1e-7)


def test_actor_reward_term_has_the_references_gradient():
    """The reference's actor-reward term is -w * A with A = r_actor - b (b detached, lines 436, 517; `r` unset):
    the same gradient as ours, -w * r_actor."""
    logp, kl, _ = inputs()
    r_actor = torch.randn(6, generator=torch.Generator().manual_seed(2)).requires_grad_()
    b = torch.randn(6)
    A = r_actor - b
    config = small_config(kl_penalty=0.1, actor_reward_weight=0.5)
    _, ours_i = M.per_cot_loss(logp, logp.detach(), A.detach(), kl, config, r_actor)
    ref_i = reference_losses(logp.mean(1), A, kl.mean(1), 0.1, actor_reward_weight=0.5)
    ours, ref = M.masked_mean(ours_i, torch.ones(6)), reference_update_loss(ref_i, torch.ones(6))
    for a, b_ in zip(torch.autograd.grad(ours, (logp, kl, r_actor)), torch.autograd.grad(ref, (logp, kl, r_actor))):
        assert torch.allclose(a, b_, atol=1e-7)


def test_warmup_keeps_nothing_as_the_references_skip_period():
    normalized = torch.tensor([5.0, -1.0, 0.3])
    assert torch.equal(M.expert_iteration_keep(normalized, [0.0, 1.0], 0.0, warm=False),
                       reference_ei_mask(normalized, [0.0, 1.0], 0.0, in_skip_period=True))


@pytest.mark.parametrize("history", [[0.0, 1.0], []], ids=["threshold", "warmup"])
def test_no_update_when_no_cot_passes_the_threshold(actor, history):
    """kl_penalty and the actor-reward term alone would move the adapter (the old behaviour): nothing may move."""
    model, _ = actor
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = small_config(expert_iteration=1e6, expert_iteration_warmup=0 if history else 8, kl_penalty=1.0,
                          actor_reward_weight=1.0)
    monitors = run_step(actor, config, state={"ema": None, "history": list(history)})
    assert monitors["skipped"] == 1 and monitors["kept"] == 0 and monitors["grad_norm"] == 0
    assert monitors["kl"] > 0 and len(monitors["updates"]) == 1  # monitors recorded, one (skipped) update
    assert all(p.grad is None for p in model.parameters())  # no backward
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("path", ["pg", "ppo", "ei_skipped"])
def test_collapse_guard_applies_in_every_path(actor, path):
    model, _ = actor
    before = lora_snapshot(model)
    overrides = {"pg": {}, "ppo": {"use_ppo": True, "ppo_epochs": 2},
                 "ei_skipped": {"expert_iteration": 1e6, "expert_iteration_warmup": 8}}[path]
    config = small_config(**overrides)
    tight_kl = dataclasses.replace(config, collapse=dataclasses.replace(config.collapse, max_kl=1e-12))
    with pytest.raises(M.CollapseError, match="max_kl"):
        run_step(actor, tight_kl)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
    if path == "ppo":  # the ratio guard on the second update, after the first has moved the policy
        tight_ratio = dataclasses.replace(config, collapse=dataclasses.replace(config.collapse, max_ppo_ratio=1 + 1e-6))
        with pytest.raises(M.CollapseError, match="max_ppo_ratio"):
            run_step(actor, tight_ratio)


# ---------------------------------------------------------------- use_ppo needs ppo_epochs >= 2

def test_ppo_on_its_first_update_is_the_plain_policy_gradient():
    """Why the rule: the ratio against the sampling policy is 1 on a batch's first update, so the gradients agree."""
    logp, kl, normalized = inputs()
    A = M.group_advantages(normalized, 3)
    grads = []
    for use_ppo in (False, True):
        _, loss_i = M.per_cot_loss(logp, logp.detach(), A, kl, small_config(use_ppo=use_ppo, ppo_epochs=2))
        grads.append(torch.autograd.grad(M.masked_mean(loss_i, torch.ones(6)), logp)[0])
    assert torch.allclose(*grads, atol=1e-7)


def test_use_ppo_with_one_epoch_is_a_config_error():
    with pytest.raises(ConfigError, match=r"use_ppo.*ppo_epochs"):
        M.MarkovianConfig(use_ppo=True, ppo_epochs=1)
    M.MarkovianConfig(use_ppo=True, ppo_epochs=2)
    M.MarkovianConfig(use_ppo=False, ppo_epochs=1)
    data = load_yaml(ROOT / "params.yaml")
    parse_params(data).section("markovian", M.MarkovianConfig)  # the committed params (use_ppo: false) stay valid
    data["markovian"] = {**data["markovian"], "use_ppo": True, "ppo_epochs": 1}
    with pytest.raises(ConfigError, match=r"^markovian\.use_ppo.*ppo_epochs"):
        parse_params(data).section("markovian", M.MarkovianConfig)
