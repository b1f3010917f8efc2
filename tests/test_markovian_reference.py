"""Fidelity to the reference Markovian training code, github.com/scottviteri/MarkovianTraining (src/train.py and
src/evaluation.py at commit 6c18282f7a6a4ed8815ffd6983556a437067c347, src/utils.py at
0748fd27a5b7ec6537dcb29deb27874965ca2f85, src/constants.py at 371437e2daa5d31e5fc503b5ea13d02bb3acb2e5: the newest
versions of each, unchanged at HEAD 09d0db9d). One training step of cotlab's (rl_step, on the tiny actor) against the
reference's step transcribed below, both from the same raw inputs (the model, one question's group of CoTs, the
baseline and the R history): its KL slice, its no_grad actor reward, its per-CoT PPO against the frozen model, its
expert-iteration threshold and skip period, no update when no example passes; and the use_ppo / ppo_epochs rule."""
import contextlib
import dataclasses

import numpy as np
import pytest
import torch

from conftest import ROOT
from cotlab.config import ConfigError, load_yaml, parse_params
from cotlab.methods import markovian as M
from test_markovian import arithmetic, lora_snapshot, run_step, small_config


# ---------------------------------------------------------------- the reference, transcribed

EI_SKIP_INITIAL = 25  # src/constants.py L3


def reference_reasoning_terms(q_R_actor_logits, q_R_critic_logits, q_R_tokens, cot_length):
    """src/train.py generate_reasoning_and_kl L291-316 (logits already over the temperature, L283-288) with
    calculate_mean_kl L732-740: the CoT's mean log-prob under actor and critic from positions -L-1:-1, the KL from
    positions -L: (one later)."""
    R_actor_logprobs = q_R_actor_logits[:, -cot_length - 1: -1, :].log_softmax(dim=-1)
    R_critic_logprobs = q_R_critic_logits[:, -cot_length - 1: -1, :].log_softmax(dim=-1)
    R_mean_actor_logprobs = R_actor_logprobs.gather(2, q_R_tokens[:, -cot_length:].unsqueeze(-1)).squeeze(-1).mean(
        dim=1)
    R_mean_critic_logprobs = R_critic_logprobs.gather(2, q_R_tokens[:, -cot_length:].unsqueeze(-1)).squeeze(-1).mean(
        dim=1)
    actor_logprobs = q_R_actor_logits[:, -cot_length:, :].log_softmax(dim=-1)
    critic_logprobs = q_R_critic_logits[:, -cot_length:, :].log_softmax(dim=-1)
    kl = (torch.exp(actor_logprobs) * (actor_logprobs - critic_logprobs)).sum(dim=-1).mean(dim=1)
    return R_mean_actor_logprobs, R_mean_critic_logprobs, kl


def reference_answer_logprobs(model, full_prompt_tokens, answer_start_positions):
    """src/evaluation.py calculate_answer_log_probs L222-243: the logits under torch.no_grad() (L223), so the reward
    carries no gradient, whichever model scores it."""
    with torch.no_grad():
        model_logits = model(input_ids=full_prompt_tokens).logits
    log_probs = torch.nn.functional.log_softmax(model_logits, dim=-1)
    answer_logprobs = [log_probs[i, start - 1: -1].gather(1, full_prompt_tokens[i, start:].unsqueeze(-1)).squeeze(-1)
                       for i, start in enumerate(answer_start_positions)]
    return torch.stack([x.mean() for x in answer_logprobs])


def reference_parallel_advantages(normalized_rewards):
    """src/train.py calculate_advantages L451-454: parallel mode, the batch is one question's group."""
    return (normalized_rewards - normalized_rewards.mean()) / (normalized_rewards.std() + 1e-8)


def reference_calculate_threshold(previous_advantages, ei_std_multiplier, batch_index=None):
    """src/utils.py calculate_threshold L569-593."""
    if batch_index is not None and batch_index < EI_SKIP_INITIAL:
        return float("inf")
    if batch_index is None and len(previous_advantages) <= EI_SKIP_INITIAL:
        return float("inf")
    return np.mean(previous_advantages) + ei_std_multiplier * np.std(previous_advantages)


def reference_calculate_losses(kl, R_mean_actor_logprobs, R_mean_critic_logprobs, advantages, normalized_rewards,
                               previous_normalized_rewards, hyperparameters, batch_index=None):
    """src/train.py calculate_losses L503-562 (no entropy bonus)."""
    use_ppo = hyperparameters["use_ppo"]
    ppo_epsilon = hyperparameters.get("ppo_epsilon", 0.2)
    kl_penalty = hyperparameters.get("kl_penalty", None)
    actor_reward_weight = hyperparameters.get("actor_reward_weight", 0.0)
    if actor_reward_weight > 0.0:
        pg_losses = -R_mean_actor_logprobs * advantages.detach()
        reward_gradient_losses = -actor_reward_weight * advantages
        losses = pg_losses + reward_gradient_losses
    else:
        losses = -R_mean_actor_logprobs * advantages.detach()
    if kl_penalty is not None:
        losses = losses + kl_penalty * kl
    prob_ratios = torch.exp(R_mean_actor_logprobs - R_mean_critic_logprobs)
    clipped_ratios = torch.clamp(prob_ratios, 1 - ppo_epsilon, 1 + ppo_epsilon)
    if use_ppo:
        losses = -torch.min(prob_ratios * advantages, clipped_ratios * advantages)
    training_mask = None
    if hyperparameters["use_ei"] is not None:
        threshold = reference_calculate_threshold(previous_normalized_rewards, hyperparameters["use_ei"], batch_index)
        training_mask = (normalized_rewards > threshold).float()
    return losses, training_mask


def reference_update_loss(losses, training_mask):
    """src/train.py update_model L1493-1531 (one accumulation step): the mask multiplies the whole per-example loss;
    with no active example there is no backward and no optimizer step (`if num_active > 0:`, L1520): None here."""
    num_active = training_mask.sum().item() if training_mask is not None else len(losses)
    if num_active == 0:
        return None
    return (losses * (training_mask if training_mask is not None else 1.0)).sum() / num_active


# ---------------------------------------------------------------- the same raw inputs to both

class FixedSampler:
    """Hands rl_step CoTs sampled beforehand, so that the reference sees the very same tokens."""

    def __init__(self, cots):
        self.cots = cots

    def sample(self, prompts, n, length, temperature, adapter=True):
        assert adapter and self.cots.shape == (len(prompts) * n, length)
        return self.cots


class RecordingOptimizer:
    """Keeps the gradient of each update and leaves the weights alone (the reference then sees the same model)."""

    def __init__(self, params):
        self.params, self.grads = list(params), []

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads.append([p.grad.clone() for p in self.params])


class Batch:
    """One question's group of G CoTs from the tiny actor, its token rows, and the frozen baseline b."""

    def __init__(self, actor, config, baseline=-2.0, seed=3):
        model, tokenizer = actor
        with torch.no_grad():  # the LoRA far enough from the frozen model for the KL and the PPO ratios to spread
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(5)
        self.model, self.tokenizer, self.config, self.baseline = model, tokenizer, config, baseline
        self.examples = arithmetic(1)
        prompt = M.cot_prompt_ids(tokenizer, self.examples[0], config.cot_length)
        torch.manual_seed(seed)
        self.cots = M.TransformersSampler(model, tokenizer).sample([prompt], config.group_size, config.cot_length,
                                                                   config.temperature)
        self.q_R_tokens = torch.tensor([prompt + c for c in self.cots.tolist()])  # one question: no padding
        self.rows = [M.reward_row(tokenizer, self.examples[0], c, config.cot_length, config.markovian)
                     for c in self.cots.tolist()]
        self.full_prompt_tokens = torch.tensor([r.ids for r in self.rows])
        self.answer_start_positions = [len(r.ids) - r.n_answer for r in self.rows]
        self.params = [p for p in model.parameters() if p.requires_grad]

    def reference(self, hyperparameters, previous_normalized_rewards=(), batch_index=None):
        """The reference's step on these inputs: (loss or None, normalized rewards, prob ratios, advantages). The
        critic is the frozen model: the actor with its adapter disabled."""
        T, L = self.config.temperature, self.config.cot_length
        q_R_actor_logits = self.model(self.q_R_tokens).logits / T
        with self.model.disable_adapter():
            q_R_critic_logits = self.model(self.q_R_tokens).logits / T
        R_mean_actor, R_mean_critic, kl = reference_reasoning_terms(q_R_actor_logits, q_R_critic_logits,
                                                                    self.q_R_tokens, L)
        use_actor_rewards = hyperparameters.get("actor_reward_weight", 0.0) > 0.0  # L370-371, L386
        with contextlib.nullcontext() if use_actor_rewards else self.model.disable_adapter():
            actor_answer_logprobs = reference_answer_logprobs(self.model, self.full_prompt_tokens,
                                                              self.answer_start_positions)
            with torch.no_grad():
                ours = M.answer_logprob(self.model, self.rows, self.tokenizer.pad_token_id)
        # The same reward, scored two ways, agrees to float32 rounding (~1e-6). The group's rewards spread by only
        # ~6e-3 on the tiny model, so standardising them would blow that rounding up to ~1e-3 in the loss: the
        # reference goes on with cotlab's r, bit for bit (the reward's gradient, or its absence, is the reference's).
        assert torch.allclose(actor_answer_logprobs, ours, atol=1e-5) and not ours.requires_grad
        actor_answer_logprobs = ours
        critic_answer_logprobs = torch.full_like(actor_answer_logprobs, self.baseline)
        normalized = actor_answer_logprobs - critic_answer_logprobs  # L433-438
        advantages = reference_parallel_advantages(normalized)
        losses, mask = reference_calculate_losses(kl, R_mean_actor, R_mean_critic, advantages, normalized,
                                                  np.array(previous_normalized_rewards), hyperparameters, batch_index)
        return reference_update_loss(losses, mask), normalized, torch.exp(R_mean_actor - R_mean_critic), advantages

    def cotlab(self, config, history=()):
        """cotlab's rl_step on these inputs: (monitors, the gradient of its update or None, its new history)."""
        optimizer = RecordingOptimizer(self.params)
        state = {"ema": None, "history": list(history)}
        monitors = M.rl_step(self.model, self.tokenizer, FixedSampler(self.cots), self.examples, config, optimizer,
                             {self.examples[0].id: self.baseline}, state)
        return monitors, (optimizer.grads[0] if optimizer.grads else None), state["history"]

    def assert_same_update(self, ours, ref_loss, atol=1e-6):
        monitors, grads, _ = ours
        if ref_loss is None:
            assert grads is None and monitors["skipped"] == 1
            return
        assert monitors["loss"] == pytest.approx(float(ref_loss.detach()), abs=atol)
        ref_grads = torch.autograd.grad(ref_loss, self.params, allow_unused=True)
        assert any(float(g.abs().max()) > 0 for g in grads)
        for ours_g, ref_g in zip(grads, ref_grads):
            ref_g = torch.zeros_like(ours_g) if ref_g is None else ref_g
            assert torch.allclose(ours_g, ref_g, rtol=1e-4, atol=1e-7), float((ours_g - ref_g).abs().max())


def step_config(**overrides):
    """The reference's semantics (kl_form, actor reward) and no gradient clipping (compared before the clip)."""
    return small_config(**{"group_size": 4, "temperature": 1.5, "kl_form": "reference", "max_grad_norm": 1e9,
                           "kl_penalty": 0.3, "expert_iteration_warmup": EI_SKIP_INITIAL, **overrides})


def history_around(normalized, batches):
    """`batches` batches of earlier R whose mean + 0.5 std falls between the batch's 2nd and 3rd largest R, so the
    threshold keeps some CoTs and drops others; their std is twice the gap between those two, so the std's weight in
    the threshold decides which."""
    top = normalized.sort(descending=True).values
    centre, spread = float(top[1] + top[2]) / 2, float(top[1] - top[2]) * 2
    n = batches * len(normalized)
    return [centre - spread * 0.5 + (spread if i % 2 else -spread) for i in range(n)]


# ---------------------------------------------------------------- ours against it

@pytest.mark.parametrize("use_ei,batch_index", [(None, 0), (0.5, 30), (0.5, EI_SKIP_INITIAL - 1)],
                         ids=["all", "threshold", "skip_period"])
def test_per_example_loss_and_expert_iteration_match_the_reference(actor, use_ei, batch_index):
    """The loss, its gradient and the mask of one step, from the model and the CoTs: the reference's KL slice
    (kl_form reference), its parallel advantages, its threshold over the R history and its skip period."""
    batch = Batch(actor, step_config())
    hyper = {"use_ppo": False, "kl_penalty": 0.3, "actor_reward_weight": 0.0, "use_ei": use_ei}
    _, normalized, _, _ = batch.reference(hyper)
    history = history_around(normalized.detach(), batch_index) if use_ei is not None else []
    ref_loss, normalized, _, _ = batch.reference(hyper, history, batch_index)
    ours = batch.cotlab(step_config(expert_iteration=use_ei), history)
    if use_ei is not None:
        mask = normalized > reference_calculate_threshold(history, use_ei, batch_index)
        assert ours[0]["kept"] == pytest.approx(float(mask.float().mean()))
        assert batch_index < EI_SKIP_INITIAL or 0 < mask.sum() < 4  # the inputs make the mask matter
        assert torch.allclose(torch.tensor(ours[2][-4:]), normalized, atol=1e-6)  # the history grows by this R
    batch.assert_same_update(ours, ref_loss)


def test_kl_forms_differ_by_the_references_one_position_shift(actor):
    """kl_form cot (the default) averages KL over the distributions c_1..c_L were drawn from; the reference's
    slice is one position later. Both from the same logits; the two differ on this model."""
    model, tokenizer = actor
    batch = Batch(actor, step_config())
    prompts = [batch.q_R_tokens[0, :-batch.config.cot_length].tolist()] * len(batch.cots)
    T, L = batch.config.temperature, batch.config.cot_length
    with torch.no_grad():
        actor_logits = model(batch.q_R_tokens).logits / T
        with model.disable_adapter():
            critic_logits = model(batch.q_R_tokens).logits / T
        kls = {form: M.score_cots(model, prompts, batch.cots, T, tokenizer.pad_token_id, form).kl.mean(-1)
               for form in ("cot", "reference")}
    _, _, ref_kl = reference_reasoning_terms(actor_logits, critic_logits, batch.q_R_tokens, L)
    _, _, cot_kl = reference_reasoning_terms(actor_logits[:, :-1], critic_logits[:, :-1], batch.q_R_tokens, L)
    assert torch.allclose(kls["reference"], ref_kl, atol=1e-6) and torch.allclose(kls["cot"], cot_kl, atol=1e-6)
    assert not torch.allclose(kls["cot"], kls["reference"], rtol=1e-2, atol=0)


@pytest.mark.parametrize("use_ei", [None, 0.5])
def test_actor_reward_term_without_gradient_matches_the_reference(actor, use_ei):
    """actor_reward_gradient false (the reference's): the actor scores r under no_grad (src/evaluation.py L223), so
    -w * A (src/train.py L517) is a constant: the loss value moves (over the kept CoTs, whose A does not average to
    0), the gradient is the plain policy gradient's."""
    batch = Batch(actor, step_config())
    hyper = {"use_ppo": False, "kl_penalty": 0.3, "actor_reward_weight": 0.5, "use_ei": use_ei}
    _, normalized, _, _ = batch.reference(hyper)
    history = history_around(normalized.detach(), 30) if use_ei is not None else []
    ref_loss, _, _, advantages = batch.reference(hyper, history, 30)
    assert not advantages.requires_grad  # the reference's reward reaches the loss without a gradient
    batch.assert_same_update(batch.cotlab(step_config(actor_reward_weight=0.5, expert_iteration=use_ei), history),
                             ref_loss)


def test_actor_reward_gradient_form_is_minus_w_r_with_its_gradient():
    """actor_reward_gradient true (cotlab's): -w * r_actor with r's gradient. That is the gradient the reference's
    calculate_losses is written for (-w * A with A = r_actor - b, b detached: src/train.py L434-436, L517; `r` unset,
    L462) but never gets, since r is scored under no_grad (src/evaluation.py L223)."""
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(6, 5, generator=g) * 3).requires_grad_()
    kl = (torch.rand(6, 5, generator=g) * 0.2).requires_grad_()
    r_actor, b = torch.randn(6, generator=g).requires_grad_(), torch.randn(6, generator=g)
    A = r_actor - b
    config = small_config(kl_penalty=0.1, actor_reward_weight=0.5, actor_reward_gradient=True)
    _, ours_i = M.per_cot_loss(logp, logp.detach(), A.detach(), kl, config, r_actor)
    ref_i, _ = reference_calculate_losses(kl.mean(1), logp.mean(1), logp.mean(1).detach(), A, A, [],
                                          {"use_ppo": False, "kl_penalty": 0.1, "actor_reward_weight": 0.5,
                                           "use_ei": None})
    ours, ref = M.masked_mean(ours_i, torch.ones(6)), reference_update_loss(ref_i, None)
    ours_grads = torch.autograd.grad(ours, (logp, kl, r_actor))
    for a, b_ in zip(ours_grads, torch.autograd.grad(ref, (logp, kl, r_actor))):
        assert torch.allclose(a, b_, atol=1e-7)
    assert torch.allclose(ours_grads[2], torch.full((6,), -0.5 / 6))  # -w * r, averaged over the CoTs


@pytest.mark.parametrize("use_ei", [None, 0.5])
def test_reference_ppo_matches_the_reference(actor, use_ei):
    """ppo_form reference: one ratio per CoT against the frozen model, exp(mean log pi - mean log pi_frozen), and
    -min(rho A, clip(rho) A) replaces the KL and actor-reward terms (src/train.py L543-548), with the actor's
    no_grad reward in A. ppo_epsilon is set so that the clip decides some CoTs and not others."""
    batch = Batch(actor, step_config())
    hyper = {"use_ppo": True, "kl_penalty": 0.3, "actor_reward_weight": 0.5, "use_ei": use_ei}
    _, normalized, ratios, advantages = batch.reference(hyper)
    # A CoT takes the clipped side when its ratio leaves 1 +- eps in its advantage's direction
    outward = ((ratios.detach() - 1) * advantages.sign()).sort(descending=True).values
    assert outward[0] > 0
    epsilon = float(outward[0] + outward[1].clamp(min=0)) / 2
    clipped = ratios.clamp(1 - epsilon, 1 + epsilon)
    picks_clipped = (clipped * advantages < ratios * advantages).detach()
    assert 0 < picks_clipped.sum() < 4 and float(outward[0] - epsilon) > 1e-4  # the clip matters, far from its edge
    history = history_around(normalized.detach(), 30) if use_ei is not None else []
    ref_loss, _, _, _ = batch.reference({**hyper, "ppo_epsilon": epsilon}, history, 30 if use_ei is not None else None)
    ours = batch.cotlab(step_config(use_ppo=True, ppo_form="reference", ppo_epochs=1, ppo_epsilon=epsilon,
                                    actor_reward_weight=0.5, expert_iteration=use_ei), history)
    assert ours[0]["ppo_ratio_max"] == pytest.approx(float(ratios.max()), rel=1e-5)  # the guard sees this ratio
    assert ours[0]["loss"] == pytest.approx(ours[0]["pg_loss"])  # no KL or actor-reward term
    batch.assert_same_update(ours, ref_loss)


def test_warmup_is_the_references_skip_period(actor):
    """The threshold applies from batch EI_SKIP_INITIAL on (src/utils.py L582), batches counted from the R history
    (every process's R); rl_step with the Markovian preset's warmup, on either side of the edge."""
    for batch_index in range(40):
        for size in (4, 12):
            warm = M.expert_iteration_warm(batch_index * size, size, EI_SKIP_INITIAL)
            assert warm == (reference_calculate_threshold([0.0] * batch_index * size, 0.0, batch_index) < float("inf"))
    batch = Batch(actor, step_config())
    for batch_index in (EI_SKIP_INITIAL - 1, EI_SKIP_INITIAL):
        history = [-1e3] * (batch_index * 4)  # every R passes any threshold once there is one
        monitors = batch.cotlab(step_config(expert_iteration=0.0), history)[0]
        assert monitors["skipped"] == float(batch_index < EI_SKIP_INITIAL)
        assert monitors["kept"] == float(batch_index >= EI_SKIP_INITIAL)


@pytest.mark.parametrize("history", [[0.0, 1.0], []], ids=["threshold", "warmup"])
def test_no_update_when_no_cot_passes_the_threshold(actor, history):
    """kl_penalty and the actor-reward term alone would move the adapter (the old behaviour): nothing may move."""
    model, _ = actor
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = small_config(expert_iteration=1e6, expert_iteration_warmup=0 if history else 8, kl_penalty=1.0,
                          actor_reward_weight=1.0, actor_reward_gradient=True)
    monitors = run_step(actor, config, state={"ema": None, "history": list(history)})
    assert monitors["skipped"] == 1 and monitors["kept"] == 0 and monitors["grad_norm"] == 0
    assert monitors["kl"] > 0 and len(monitors["updates"]) == 1  # monitors recorded, one (skipped) update
    assert all(p.grad is None for p in model.parameters())  # no backward
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("path", ["pg", "ppo", "ppo_reference", "ei_skipped"])
def test_collapse_guard_applies_in_every_path(actor, path):
    model, _ = actor
    before = lora_snapshot(model)
    overrides = {"pg": {}, "ppo": {"use_ppo": True, "ppo_form": "per_token", "ppo_epochs": 2},
                 "ppo_reference": {"use_ppo": True, "ppo_form": "reference", "ppo_epochs": 1},
                 "ei_skipped": {"expert_iteration": 1e6, "expert_iteration_warmup": 8}}[path]
    config = small_config(**overrides)
    tight_kl = dataclasses.replace(config, collapse=dataclasses.replace(config.collapse, max_kl=1e-12))
    with pytest.raises(M.CollapseError, match="max_kl"):
        run_step(actor, tight_kl)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
    if path.startswith("ppo"):  # per_token: on the second update, after the first has moved the policy; reference:
        # on the first (its ratio is against the frozen model), before any update
        tight_ratio = dataclasses.replace(config, collapse=dataclasses.replace(config.collapse, max_ppo_ratio=1 + 1e-6))
        with pytest.raises(M.CollapseError, match="max_ppo_ratio"):
            run_step(actor, tight_ratio)
        if path == "ppo_reference":
            assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)


# ---------------------------------------------------------------- per_token PPO needs ppo_epochs >= 2

def test_ppo_on_its_first_update_is_the_plain_policy_gradient():
    """Why the rule: the per-token ratio against the sampling policy is 1 on a batch's first update, so the
    gradients agree."""
    g = torch.Generator().manual_seed(0)
    logp, kl = (-torch.rand(6, 5, generator=g) * 3).requires_grad_(), torch.rand(6, 5, generator=g) * 0.2
    A = M.group_advantages(torch.randn(6, generator=g), 3)
    grads = []
    for use_ppo in (False, True):
        config = small_config(use_ppo=use_ppo, ppo_form="per_token", ppo_epochs=2)
        _, loss_i = M.per_cot_loss(logp, logp.detach(), A, kl, config)
        grads.append(torch.autograd.grad(M.masked_mean(loss_i, torch.ones(6)), logp)[0])
    assert torch.allclose(*grads, atol=1e-7)


def test_use_ppo_with_one_epoch_is_a_config_error():
    with pytest.raises(ConfigError, match=r"use_ppo.*ppo_epochs"):
        M.MarkovianConfig(use_ppo=True, ppo_form="per_token", ppo_epochs=1)
    M.MarkovianConfig(use_ppo=True, ppo_form="per_token", ppo_epochs=2)
    M.MarkovianConfig(use_ppo=True, ppo_form="reference", ppo_epochs=1)  # the reference: one update, ratio vs frozen
    M.MarkovianConfig(use_ppo=False, ppo_epochs=1)
    with pytest.raises(ConfigError, match="replaces the actor-reward term"):
        M.MarkovianConfig(use_ppo=True, actor_reward_weight=1.0, actor_reward_gradient=True)
    data = load_yaml(ROOT / "params.yaml")
    parse_params(data).section("markovian", M.MarkovianConfig)  # the committed params (use_ppo: false) stay valid
    data["markovian"] = {**data["markovian"], "use_ppo": True, "ppo_form": "per_token", "ppo_epochs": 1}
    with pytest.raises(ConfigError, match=r"^markovian\.use_ppo.*ppo_epochs"):
        parse_params(data).section("markovian", M.MarkovianConfig)
