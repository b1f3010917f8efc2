"""Markovian chain-of-thought training (Viteri et al., "Markovian Transformers for Informative Language Modeling").

The actor (base + LoRA) writes a CoT of exactly `cot_length` tokens from the question; the reward is how well the
gold answer can be predicted from that CoT *without* the question, so the CoT must carry what the answer needs:

    r_i = 1/|a| sum_t log p_S(a_t | REDACTED, CoT_i, " Answer:", a_<t)    S = frozen model, or the actor (w > 0)
    R_i = r_i - b(q)          b: the frozen model's r after its own greedy CoT of q, or an EMA of r (`baseline`)
    A_i = (R_i - mean_g R) / (std_g R + eps)          over the group of `group_size` CoTs of one question
    l_i = -A_i * mean_t log pi(c_it | q, c_i<t)
          + kl_penalty * mean_t KL(pi(.|q, c_i<t) || pi_frozen(.|q, c_i<t))
          - actor_reward_weight * A_i   (the reference's: A scored under no_grad, a constant; actor_reward_gradient:
                                         - actor_reward_weight * r_i with r's gradient)
    PPO (ppo_form reference): l_i = -min(rho_i A_i, clip(rho_i, 1 +- eps) A_i) whole (no KL, no actor-reward term),
          rho_i = exp(mean_t log pi(c_it | .) - mean_t log pi_frozen(c_it | .)); ppo_form per_token: the PG term is
          -mean_t min(rho_it A_i, clip(rho_it, 1 +- eps) A_i), rho_it = pi / pi_sampling, the other terms kept
    L   = 1/|K| sum_{i in K} l_i      K: every CoT, or under expert iteration those with R_i > mean + k std of the
                                      earlier R; K empty: no update at all (as the reference)

`markovian: false` is the ablation: the reward prompt shows the question. The frozen model is the actor with its
adapters disabled (no second copy). Log-probs of the CoT are taken at the sampling temperature (the policy that
sampled), so the per_token PPO ratio against it is exactly 1 on the first update of a batch.

The reference's forms are the defaults where the demo does not depend on them; cotlab's own are named options
(MarkovianConfig): actor_reward_gradient, ppo_form per_token, kl_form cot (the default: the KL of the distributions
the CoT was drawn from, where the reference's slice is one position later).
Under group standardisation a per-question baseline cancels in A; it still sets the logged normalised reward R
and the expert-iteration threshold, and it is the whole baseline when group_size is 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from cotlab.config import ConfigError, LoraParams
from cotlab.distributed import Processes, is_main_process
from cotlab.errors import TrainingDivergedError
from cotlab.schema import Example
from cotlab.answers import extract_answer, is_correct
from cotlab.evaluation.generate import lora_request, resolve_backend, vllm_engine
from cotlab.models import read_manifest, stable_adapter_config
from cotlab.progress import progress
from cotlab.prompts import display_answer, question_block


@dataclass
class CollapseLimits:
    """The Markovian collapse guard: training stops (keeping the last good checkpoint) past any of these."""

    max_ppo_ratio: float = 10.0  # largest PPO ratio in an update (ppo_form's: per CoT vs frozen, per token vs sampling)
    max_kl: float = 5.0  # mean KL(actor || frozen) per CoT token, nats
    max_repetition: float = 0.75  # share of a step's CoTs dominated by one repeated token or n-gram


@dataclass
class MarkovianConfig:
    """The `markovian` section: Markovian CoT training, markovian@markovian-<task> and its ablation
    markovian@non_markovian-<task>. Reference values (Viteri et al.) in the comments where the 2-core demo needs
    smaller ones."""

    tasks: list[str] = field(default_factory=lambda: ["lockers"])
    # The actor's own base model (prepare_system_model@markovian -> models/base_markovian, read by markovian and
    # eval_markovian): None = the shared one (model.name, whose auto is the scale's model); else embedded |
    # tiny-random | a Hugging Face id (the reference: meta-llama/Llama-3.1-8B-Instruct) | a local path
    model: str | None = None
    # false: the reward prompt shows the question (the ablation). Set by the stage's variant (dvc.yaml's matrix),
    # never in params.yaml
    markovian: bool = True
    steps: int = 24
    questions_per_step: int = 1  # the reference: one question per batch, its group is the batch
    group_size: int = 6  # CoTs per question (reference: 12)
    cot_length: int = 16  # tokens, exactly (reference: 150 for arithmetic, 100 for GSM8K, 50 for SVAMP/AQuA/ARC)
    temperature: float = 1.0
    answer_tokens: int = 16  # greedy tokens decoded after " Answer:" at evaluation
    actor_reward_weight: float = 0.0  # > 0: the actor, not the frozen model, scores the reward r (so A), and joins l_i
    # false, the reference's: r is scored under no_grad (MarkovianTraining src/evaluation.py L223), so its term
    # -w * A (src/train.py L517) is a constant: the actor's reward reaches the actor only through A. true: -w * r joins
    # l_i with r's gradient, a supervised term on the answer's log-prob that the reference's runs never had.
    actor_reward_gradient: bool = False
    baseline: Literal["frozen", "ema"] = "frozen"
    ema_decay: float = 0.9
    use_ppo: bool = False
    # reference (src/train.py L543-548): one ratio per CoT against the frozen model, exp(mean_t log pi - mean_t log
    # pi_frozen), and -min(rho A, clip(rho) A) replaces l_i whole (no KL or actor-reward term; the KL stays a monitor
    # and the guard's). per_token: PPO's per-token ratio against the policy that sampled the batch, the KL and
    # actor-reward terms kept (needs ppo_epochs >= 2: the ratio is 1 on a batch's first update).
    ppo_form: Literal["reference", "per_token"] = "reference"
    ppo_epsilon: float = 0.2
    ppo_epochs: int = 1  # updates per sampled batch when use_ppo (the reference: 1)
    kl_penalty: float = 0.1
    # cot: KL over the L distributions the CoT tokens were drawn from. reference: its calculate_mean_kl slice
    # logits[:, -L:] (src/train.py L732-740), one position later (CoT tokens 2..L and the position after the CoT; its
    # own CoT log-probs, L291-304, take -L-1:-1), so the first token's distribution is never penalised.
    kl_form: Literal["cot", "reference"] = "cot"
    expert_iteration: float | None = None  # keep CoTs with R > mean + k * std of earlier R (reference GSM8K: 2.2)
    # steps (batches) of R history before the threshold applies, no update before (the reference: EI_SKIP_INITIAL
    # = 25, src/constants.py, src/utils.py L582)
    expert_iteration_warmup: int = 8
    normalize_loss: bool = True  # the policy-gradient term averaged over CoT tokens (false: summed)
    lr: float = 5.0e-4  # reference: 1e-4 (8B); larger steps for a 24-step LoRA run on 135M
    max_grad_norm: float = 1.0
    eval_every: int = 8  # steps between evaluations on the held-out questions (plots/train/<variant>/<task>_eval.csv)
    save_every: int = 8  # steps between checkpoints (.cotlab-cache/checkpoints/<variant>/<task>: a killed run resumes there)
    collapse: CollapseLimits = field(default_factory=CollapseLimits)
    n_eval: int = 24  # held-out test questions evaluated during training
    lora: LoraParams = field(default_factory=lambda: LoraParams(r=8, alpha=16, dropout=0.0))

    def __post_init__(self):
        if self.use_ppo and self.ppo_form == "per_token" and self.ppo_epochs < 2:
            # The ratio is taken against the sampling policy, so the first update's PPO gradient is the plain one.
            raise ConfigError(
                f"use_ppo: true with ppo_form per_token and ppo_epochs = {self.ppo_epochs} is the plain policy "
                "gradient: the PPO ratio is against the policy that sampled the batch, so it is exactly 1 (nothing is "
                "clipped) on a batch's first update; set ppo_epochs >= 2, ppo_form: reference, or use_ppo: false")
        if self.use_ppo and self.ppo_form == "reference" and self.actor_reward_gradient and self.actor_reward_weight:
            raise ConfigError("actor_reward_gradient: true with use_ppo and ppo_form reference: the reference's PPO "
                              "loss replaces the actor-reward term, so its gradient would be dropped without a word")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: {self.temperature!r} must be > 0 (CoTs are sampled)")


class CollapseError(TrainingDivergedError):
    """A monitor passed its collapse limit; the last good checkpoint is kept."""


# ---------------------------------------------------------------- token rows

def cot_prompt_ids(tokenizer, example: Example, cot_length: int) -> list[int]:
    return tokenizer(markovian_prefix(example, cot_length), add_special_tokens=True)["input_ids"]


@dataclass
class RewardRow:
    ids: list[int]  # prefix + CoT + " Answer:" + gold
    n_answer: int  # the gold tokens at the end

    @property
    def context(self) -> list[int]:
        return self.ids[:-self.n_answer]


def reward_row(tokenizer, example: Example, cot: Sequence[int], cot_length: int, markovian: bool) -> RewardRow:
    """The answer prompt at token level: the sampled CoT ids are spliced in as they are (never decoded and re-encoded),
    and in Markovian mode no token of the question is present."""
    prefix = tokenizer(markovian_prefix(example, cot_length, show_question=not markovian),
                       add_special_tokens=True)["input_ids"]
    cue = tokenizer(MARKOVIAN_ANSWER_CUE, add_special_tokens=False)["input_ids"]
    gold = tokenizer(markovian_gold(example), add_special_tokens=False)["input_ids"]
    return RewardRow(prefix + list(cot) + cue + gold, len(gold))


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def tail_logits(model, rows: Sequence[Sequence[int]], n_tail: int, pad_id: int) -> torch.Tensor:
    """Logits of the last `n_tail` positions of left-padded rows (position ids from the mask, as generate uses)."""
    ids, mask = _left_pad(rows, pad_id, next(model.parameters()).device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=n_tail).logits.float()


def answer_logprob(model, rows: Sequence[RewardRow], pad_id: int) -> torch.Tensor:
    """r per row: the mean log-prob of its gold tokens (the reward). Gradients flow when the caller allows them."""
    n_max = max(r.n_answer for r in rows)
    logp = torch.log_softmax(tail_logits(model, [r.ids for r in rows], n_max + 1, pad_id)[:, :-1], dim=-1)
    targets = torch.tensor([[0] * (n_max - r.n_answer) + r.ids[-r.n_answer:] for r in rows], device=logp.device)
    valid = torch.tensor([[0] * (n_max - r.n_answer) + [1] * r.n_answer for r in rows], device=logp.device)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * valid
    return token_logp.sum(-1) / valid.sum(-1)


@dataclass
class CoTScores:
    logp: torch.Tensor  # [N, L] log pi(c_t | q, c_<t) at the sampling temperature
    entropy: torch.Tensor  # [N, L]
    kl: torch.Tensor  # [N, L] KL(actor || frozen), exact over the vocabulary, at kl_form's positions
    frozen_logp: torch.Tensor  # [N, L] log pi_frozen(c_t | q, c_<t) at the sampling temperature (no gradient)


def score_cots(actor, prompts: Sequence[Sequence[int]], cots: torch.Tensor, temperature: float,
               pad_id: int, kl_form: str = "cot") -> CoTScores:
    """The actor's (with gradient) and the frozen model's distributions over each CoT token. The L + 1 last positions
    run from the last prompt token (which predicts c_1) to c_L (which predicts what follows the CoT)."""
    rows = [list(p) + c for p, c in zip(prompts, cots.tolist())]
    length = cots.size(1)
    logp_all = torch.log_softmax(tail_logits(actor, rows, length + 1, pad_id) / temperature, dim=-1)
    with torch.no_grad(), actor.disable_adapter():
        frozen_all = torch.log_softmax(tail_logits(actor, rows, length + 1, pad_id) / temperature, dim=-1)
    span = slice(1, None) if kl_form == "reference" else slice(None, -1)  # the reference's slice: one later
    kl = (logp_all[:, span].exp() * (logp_all[:, span] - frozen_all[:, span])).sum(-1)
    logp, frozen = logp_all[:, :-1], frozen_all[:, :-1]
    return CoTScores(logp=logp.gather(-1, cots.unsqueeze(-1)).squeeze(-1),
                     entropy=-(logp.exp() * logp).sum(-1).detach(), kl=kl,
                     frozen_logp=frozen.gather(-1, cots.unsqueeze(-1)).squeeze(-1))


def repetition_share(tokens: Sequence[int], max_n: int = 4) -> float:
    """The largest share of the CoT covered by repeats of one token or n-gram (n <= max_n): "4444..." gives 1."""
    best = 0.0
    for n in range(1, max_n + 1):
        grams = Counter(tuple(tokens[i:i + n]) for i in range(0, len(tokens) - n + 1, n))
        count = grams.most_common(1)[0][1] if grams else 0
        if count >= 2:  # repeated at least once
            best = max(best, count * n / len(tokens))
    return min(best, 1.0)


def group_advantages(normalized: torch.Tensor, group_size: int) -> torch.Tensor:
    """Standardised within each group of one question's CoTs; with group_size 1, R itself."""
    if group_size == 1:
        return normalized
    groups = normalized.view(-1, group_size)
    return ((groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + 1e-8)).view(-1)


# ---------------------------------------------------------------- sampling

class TransformersSampler:
    """CoTs of exactly `length` tokens with transformers' generate (eos suppressed until then)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def sample(self, prompts: Sequence[Sequence[int]], n: int, length: int, temperature: float,
               adapter: bool = True) -> torch.Tensor:
        """[len(prompts) * n, length] token ids; temperature 0 = greedy; adapter=False samples the frozen model."""
        ids, mask = _left_pad(prompts, self.tokenizer.pad_token_id, next(self.model.parameters()).device)
        kwargs = dict(do_sample=temperature > 0, max_new_tokens=length, min_new_tokens=length,
                      num_return_sequences=n, pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        was_training = self.model.training
        self.model.eval()
        try:
            if adapter:
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            else:
                with self.model.disable_adapter():
                    out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        finally:
            self.model.train(was_training)
        return out[:, ids.size(1):]


class VLLMSampler:
    """vLLM on CUDA, the same interface: the current adapter is saved and handed to vLLM as a LoRARequest at each call
    (the base weights stay in vLLM; only the adapter moves). `engine`: a vllm.LLM on the base (tests pass a fake)."""

    def __init__(self, model, tokenizer, base_path: str, scratch: str, gpu_memory_utilization: float = 0.3,
                 engine=None):
        self.model, self.tokenizer, self.scratch, self.saved = model, tokenizer, Path(scratch), 0
        if engine is None:
            engine = vllm_engine(base_path, gpu_memory_utilization, read_manifest(base_path).get("dtype"),
                                 model.peft_config["default"].r)
        self.engine = engine

    def sample(self, prompts, n, length, temperature, adapter: bool = True) -> torch.Tensor:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        request = None
        if adapter:
            self.saved += 1
            path = self.scratch / f"adapter-{self.saved}"
            self.model.save_pretrained(path)
            request = lora_request(path)  # a new id each time: vLLM would keep serving an adapter it has cached
        params = SamplingParams(n=n, temperature=temperature, top_k=-1, top_p=1.0, max_tokens=length,
                                min_tokens=length, ignore_eos=True)
        outputs = self.engine.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                       lora_request=request, use_tqdm=False)
        rows = [list(o.token_ids) for out in outputs for o in out.outputs]
        return torch.tensor(rows, device=next(self.model.parameters()).device)


def make_sampler(generation, model, tokenizer, base_path: str, scratch: str):
    """By `generation` (params.generation): vLLM under backend vllm, or auto when it is installed and the model is on
    CUDA; transformers otherwise."""
    if resolve_backend(generation.backend, next(model.parameters()).is_cuda) == "vllm":
        return VLLMSampler(model, tokenizer, base_path, scratch, generation.gpu_memory_utilization)
    return TransformersSampler(model, tokenizer)


# ---------------------------------------------------------------- two-stage evaluation

def adapter_state(model, adapter: bool):
    """The actor as it is (adapter on), or the frozen model (adapter disabled)."""
    return contextlib.nullcontext() if adapter else model.disable_adapter()


def extraction_variants(output: str, answer_type: str) -> dict[str, str | None]:
    """The answer decoded after " Answer:", read two ways per type (both reported), as in the reference:
    numbers: `anchored` (the value after an answer anchor in the output, else after the last "=", else the first
    number) and `simple` (the first number); letters: `word_boundary` (the first standalone A-E) and `first_found`
    (the first A-E character anywhere, the reference's older reading: it takes "The" as E)."""
    import re

    if answer_type == "number":
        first = re.search(r"-?\d[\d,]*(?:\.\d+)?", output)
        simple = extract_answer(first.group(0), "number") if first else None
        after_equals = extract_answer(output.rpartition("=")[2], "number") if "=" in output else None
        return {"anchored": extract_answer(output, "number", strict=True) or after_equals or simple, "simple": simple}
    if answer_type == "choice":
        upper = output.upper()
        boundary = re.search(r"\b[A-E]\b", upper)
        found = re.search(r"[A-E]", upper)
        return {"word_boundary": boundary.group(0) if boundary else None, "first_found": found.group(0) if found else None}
    return {"anchored": extract_answer("Answer:" + output, answer_type)}


PRIMARY_VARIANT = {"number": "anchored", "choice": "word_boundary"}


def cot_carries(cot: str, answer: str) -> bool:
    """Whether the CoT spells the gold answer out as a whole word (a code, a number): what a Markovian CoT must carry
    when the answer prompt hides the question. Reported beside accuracy, it tells a CoT that holds the answer but is
    misread from one that never wrote it."""
    return re.search(rf"(?<![\w.]){re.escape(answer.strip())}(?![\w]|\.\d)", cot) is not None


def answer_candidates(example: Example) -> list[str]:
    """The answers the question itself offers, the gold first: lockers keeps each question's codes in
    metadata["codes"] (colour -> code, written by the generator), the others being distractors. A question with no
    distractors (arithmetic, GSM8K, ...) offers its gold alone: there `cot_singles_out` equals `cot_contains_answer`,
    `cot_n_candidates` is 0 or 1, and no candidate choice is scored."""
    codes = example.metadata.get("codes") or {}
    others = [str(c).strip() for c in (codes.values() if isinstance(codes, dict) else codes)]
    return [example.answer, *dict.fromkeys(c for c in others if c != example.answer.strip())]


def cot_candidates(cot: str, candidates: Sequence[str]) -> dict:
    """Which of the question's candidates (gold first) the CoT spells out as whole words. A CoT that copies every code
    carries the gold without telling the answerer which one was asked: only `cot_singles_out` (the gold and no other
    candidate) shows a CoT that carries the answer."""
    named = [cot_carries(cot, c) for c in candidates]
    return {"cot_contains_answer": named[0], "cot_singles_out": named[0] and not any(named[1:]),
            "cot_n_candidates": sum(named)}


def candidate_choice(logprobs: Sequence[float]) -> int | None:
    """The index of the candidate with the highest answer log-prob; None when the top is tied (no choice made)."""
    best = max(logprobs)
    return logprobs.index(best) if list(logprobs).count(best) == 1 else None


def cot_candidate_shares(tokenizer, examples: Sequence[Example], cots: torch.Tensor, group_size: int,
                         mean: Callable = float) -> dict[str, float]:
    """Over a training step's sampled CoTs (grouped by question): the share that carries the gold, that singles it
    out, and that names >= 2 of its question's candidates (the copy-several shortcut, which lifts the gold's log-prob
    toward log(1/k) without saying which was asked). `mean`: the cross-process mean (rl_step's)."""
    named = [cot_candidates(tokenizer.decode(c, skip_special_tokens=True), answer_candidates(ex))
             for ex, c in zip([ex for ex in examples for _ in range(group_size)], cots.tolist())]
    share = lambda test: mean(sum(map(test, named)) / len(named))  # noqa: E731
    return {"cot_contains_answer": share(lambda n: n["cot_contains_answer"]),
            "cot_singles_out": share(lambda n: n["cot_singles_out"]),
            "cot_multiple_candidates": share(lambda n: n["cot_n_candidates"] >= 2)}


@torch.no_grad()
def two_stage(actor, answerer_adapter: bool, tokenizer, examples: Sequence[Example], cot_length: int,
              markovian: bool, answer_tokens: int, batch_size: int, cot_adapter: bool = True,
              cot_cache: dict[str, list[int]] | None = None) -> list[dict]:
    """Stage 1: a greedy CoT of `cot_length` tokens from the question. Stage 2: the answer decoded greedily after the
    CoT and " Answer:", from the CoT alone (markovian) or with the question; plus the gold answer's log-prob there.
    `cot_adapter` / `answerer_adapter`: whether the actor's adapter is on for each stage (off = the frozen base).
    `cot_cache`: question id -> CoT ids, reused when present and filled otherwise, for callers that run stage 1 of
    the same model on the same questions twice (the base's CoTs under both protocols).
    Scoring: `correct` is the reference's own, the greedy answer after " Answer:" (a CoT cut mid-number may decide
    it: "...is 2" -> "2"). Beside it, where the question offers candidates (lockers' codes), the candidate choice:
    each candidate's log-prob summed over its tokens after the same answer prompt (the reward's rows, one
    answer_logprob pass with the gold's), `answer_choice_correct` when the gold's is the highest (a tie is no choice).
    `cot_singles_out` / `cot_n_candidates`: see cot_candidates."""
    from dataclasses import replace

    sampler = TransformersSampler(actor, tokenizer)
    pad = tokenizer.pad_token_id
    rows_out = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        if cot_cache is not None and all(ex.id in cot_cache for ex in batch):
            cots = torch.tensor([cot_cache[ex.id] for ex in batch], device=next(actor.parameters()).device)
        else:
            prompts = [cot_prompt_ids(tokenizer, ex, cot_length) for ex in batch]
            cots = sampler.sample(prompts, 1, cot_length, 0.0, adapter=cot_adapter)
            if cot_cache is not None:
                cot_cache.update({ex.id: c for ex, c in zip(batch, cots.tolist())})
        rewards = [reward_row(tokenizer, ex, c, cot_length, markovian) for ex, c in zip(batch, cots.tolist())]
        candidates = [answer_candidates(ex) for ex in batch]
        others = [reward_row(tokenizer, replace(ex, answer=c), cot, cot_length, markovian)  # the distractors' rows
                  for ex, cot, cands in zip(batch, cots.tolist(), candidates) for c in cands[1:]]
        ids, mask = _left_pad([r.context for r in rewards], pad, cots.device)
        with adapter_state(actor, answerer_adapter):
            scored = answer_logprob(actor, rewards + others, pad)  # the mean over each row's answer tokens
            out = actor.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=answer_tokens,
                                 pad_token_id=pad)
        logprobs = scored[:len(batch)]
        totals = iter((scored * torch.tensor([r.n_answer for r in rewards + others], device=scored.device)).tolist())
        candidate_logprobs = [[next(totals)] for _ in batch]  # summed over each candidate's tokens, gold first
        for lps, cands in zip(candidate_logprobs, candidates):
            lps += [next(totals) for _ in cands[1:]]
        for ex, cot, reward, answer_ids, lp, cands, lps in zip(batch, cots.tolist(), rewards,
                                                               out[:, ids.size(1):].tolist(), logprobs.tolist(),
                                                               candidates, candidate_logprobs):
            end = next((k for k, t in enumerate(answer_ids) if t == tokenizer.eos_token_id), len(answer_ids))
            output = tokenizer.decode(answer_ids[:end], skip_special_tokens=True)
            variants = extraction_variants(output, ex.answer_type)
            primary = variants[PRIMARY_VARIANT.get(ex.answer_type, "anchored")]
            strict = extract_answer("Answer:" + output, ex.answer_type, strict=True)
            row = {"id": ex.id, "prompt": markovian_prefix(ex, cot_length),
                   "cot": tokenizer.decode(cot), "answer_prompt": tokenizer.decode(reward.context),
                   "output": output, "pred": primary, "pred_strict": strict, "gold": ex.answer,
                   "answer_type": ex.answer_type, "correct": is_correct(primary, ex.answer, ex.answer_type),
                   "correct_strict": is_correct(strict, ex.answer, ex.answer_type),
                   "answer_logprob": lp, "truncated": end == len(answer_ids),
                   "n_new_tokens": cot_length + end, "cot_repetition": repetition_share(cot),
                   **cot_candidates(tokenizer.decode(cot, skip_special_tokens=True), cands),
                   "answer_logprob_gold": lps[0]}
            if ex.metadata.get("codes"):  # a question with candidates: the choice among them
                choice = candidate_choice(lps)
                row.update({"candidate_logprobs": dict(zip(cands, lps)),
                            "answer_choice": None if choice is None else cands[choice],
                            "answer_choice_correct": choice == 0})
            for name, value in variants.items():
                row[f"pred_{name}"] = value
                row[f"correct_{name}"] = is_correct(value, ex.answer, ex.answer_type)
            rows_out.append(row)
    return rows_out


# ---------------------------------------------------------------- one RL step

def expert_iteration_keep(normalized: torch.Tensor, history: Sequence[float], k: float, warm: bool) -> torch.Tensor:
    """1 for the CoTs whose R beats mean + k std of every earlier R (np.std's population std, as the reference's
    calculate_threshold); none before the warmup is over (the reference's threshold is inf there)."""
    if not warm:
        return torch.zeros_like(normalized)
    earlier = torch.tensor(list(history) or [0.0], dtype=torch.float64)
    threshold = float(earlier.mean() + k * earlier.std(correction=0))
    return (normalized > threshold).to(normalized.dtype)


def expert_iteration_warm(n_history: int, batch_size: int, warmup: int) -> bool:
    """Whether the threshold applies: `n_history` earlier R of batches of `batch_size` (every process's) make
    n_history // batch_size earlier batches; warm from batch `warmup` on (the reference's calculate_threshold is inf
    while batch_index < EI_SKIP_INITIAL, src/utils.py L582)."""
    return n_history // batch_size >= warmup


def per_cot_loss(logp: torch.Tensor, anchor_logp: torch.Tensor, advantages: torch.Tensor, kl: torch.Tensor,
                 config: MarkovianConfig, r_actor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pg_i, l_i) per CoT from [N, L] log-probs and KL: the policy-gradient (or PPO) term and the whole loss.
    `anchor_logp`: what the PPO ratio is against, the frozen model's log-probs (ppo_form reference) or the sampling
    policy's (per_token). `r_actor`: the actor-scored reward with its gradient (actor_reward_gradient)."""
    eps = config.ppo_epsilon
    if config.use_ppo and config.ppo_form == "reference":
        # src/train.py L543-548: one ratio per CoT, and the clipped objective is the whole loss
        ratio = (logp.mean(-1) - anchor_logp.mean(-1)).exp()
        pg = -torch.min(ratio * advantages, ratio.clamp(1 - eps, 1 + eps) * advantages)
        return pg, pg
    A = advantages[:, None]
    if config.use_ppo:
        ratio = (logp - anchor_logp).exp()
        per_token = -torch.min(ratio * A, ratio.clamp(1 - eps, 1 + eps) * A)
    else:
        per_token = -logp * A
    pg = per_token.mean(-1) if config.normalize_loss else per_token.sum(-1)
    loss = pg + config.kl_penalty * kl.mean(-1)
    if config.actor_reward_weight > 0 and config.actor_reward_gradient:
        loss = loss - config.actor_reward_weight * r_actor
    elif config.actor_reward_weight > 0:  # the reference's -w * A (L517), A scored under no_grad: its value only
        loss = loss - config.actor_reward_weight * advantages.detach()
    return pg, loss


def masked_mean(per_cot: torch.Tensor, keep: torch.Tensor, n_kept: torch.Tensor | float | None = None) -> torch.Tensor:
    """The mean over the kept CoTs (0 when none is kept); dropped CoTs carry no gradient. `n_kept`: the kept CoTs of
    every process (under accelerate each process's part of the sum, over the total)."""
    n_kept = keep.sum() if n_kept is None else torch.as_tensor(n_kept, dtype=keep.dtype, device=keep.device)
    return (per_cot * keep).sum() / n_kept.clamp(min=1)


def _guard(name: str, value: float, limit: float, key: str) -> None:
    if value > limit:
        raise CollapseError(f"{name} {value:.4g} passed markovian.collapse.{key} = {limit:g}")


def frozen_baseline(actor, tokenizer, sampler, examples: Sequence[Example], config: MarkovianConfig) -> list[float]:
    """b(q): the frozen model's answer log-prob after its own greedy CoT of q (constant: cache it per question)."""
    prompts = [cot_prompt_ids(tokenizer, ex, config.cot_length) for ex in examples]
    cots = sampler.sample(prompts, 1, config.cot_length, 0.0, adapter=False)
    rows = [reward_row(tokenizer, ex, c, config.cot_length, config.markovian) for ex, c in zip(examples, cots.tolist())]
    with torch.no_grad(), actor.disable_adapter():
        return answer_logprob(actor, rows, tokenizer.pad_token_id).tolist()


def rl_step(actor, tokenizer, sampler, examples: Sequence[Example], config: MarkovianConfig, optimizer,
            baselines: dict[str, float], state: dict, processes: Processes | None = None) -> dict[str, float]:
    """Sample a group of CoTs per question, score them, update the actor (`ppo_epochs` times with PPO); returns the
    step's monitors, with each update's own under "updates". Raises CollapseError before an update when a monitor
    passes its limit. Under accelerate `examples` are this process's share of the step's questions: the monitors,
    the guard, the EMA and expert iteration's history are taken over every process's CoTs, and the loss is the
    mean over every kept CoT (each process's sum over the kept total; gradients summed)."""
    import time

    processes = processes or Processes()
    mean = processes.reduce  # over every process's equal share

    G, L, pad = config.group_size, config.cot_length, tokenizer.pad_token_id
    limits = config.collapse
    t0 = time.perf_counter()
    prompts = [cot_prompt_ids(tokenizer, ex, L) for ex in examples]
    cots = sampler.sample(prompts, G, L, config.temperature)  # rows grouped by question
    t_sample = time.perf_counter() - t0
    repetition = mean(sum(repetition_share(c) > 0.5 for c in cots.tolist()) / cots.size(0))
    _guard("repetition", repetition, limits.max_repetition, "max_repetition")

    t0 = time.perf_counter()
    group_prompts = [p for p in prompts for _ in range(G)]
    rows = [reward_row(tokenizer, ex, c, L, config.markovian)
            for ex, c in zip([ex for ex in examples for _ in range(G)], cots.tolist())]
    actor_scores = config.actor_reward_weight > 0
    reward_grad = actor_scores and config.actor_reward_gradient
    if reward_grad:
        r_actor = answer_logprob(actor, rows, pad)  # with its gradient: the actor-reward term needs it
        r = r_actor.detach()
    elif actor_scores:  # the reference's: the actor scores under no_grad (src/evaluation.py L223)
        with torch.no_grad():
            r = answer_logprob(actor, rows, pad)
    else:
        with torch.no_grad(), actor.disable_adapter():
            r = answer_logprob(actor, rows, pad)
    if config.baseline == "frozen":
        missing = [ex for ex in examples if ex.id not in baselines]
        if missing:
            baselines.update(zip([ex.id for ex in missing], frozen_baseline(actor, tokenizer, sampler, missing, config)))
        b = torch.tensor([baselines[ex.id] for ex in examples for _ in range(G)], device=r.device)
    else:
        ema = state["ema"] if state["ema"] is not None else mean(float(r.mean()))
        b = torch.full_like(r, ema)
        state["ema"] = config.ema_decay * ema + (1 - config.ema_decay) * mean(float(r.mean()))
    normalized = r - b
    advantages = group_advantages(normalized, G)
    keep = torch.ones_like(r)
    if config.expert_iteration is not None:
        everyone = processes.gather(normalized)  # the history holds every process's R: count batches by them
        warm = expert_iteration_warm(len(state["history"]), everyone.numel(), config.expert_iteration_warmup)
        keep = expert_iteration_keep(normalized, state["history"], config.expert_iteration, warm)
        state["history"].extend(everyone.tolist())
    n_kept = processes.reduce(keep.sum(), "sum")
    skipped = not bool(n_kept > 0)
    t_score = time.perf_counter() - t0

    t0 = time.perf_counter()
    old_logp, updates = None, []
    against_frozen = config.use_ppo and config.ppo_form == "reference"
    for epoch in range(config.ppo_epochs if config.use_ppo else 1):
        scores = score_cots(actor, group_prompts, cots, config.temperature, pad, config.kl_form)
        if old_logp is None:  # the policy that sampled: these weights, before any update on this batch
            old_logp = scores.logp.detach()
        if reward_grad and epoch > 0:
            r_actor = answer_logprob(actor, rows, pad)
        anchor = scores.frozen_logp if against_frozen else old_logp
        pg_i, loss_i = per_cot_loss(scores.logp, anchor, advantages, scores.kl, config,
                                    r_actor if reward_grad else None)
        pg, loss = masked_mean(pg_i, keep, n_kept), masked_mean(loss_i, keep, n_kept)
        kl = scores.kl.mean()  # the monitor: over every CoT, kept or not
        # The ratio the loss uses: per CoT against the frozen model, or per token against the sampling policy
        log_ratio = scores.logp.mean(-1) - anchor.mean(-1) if against_frozen else scores.logp - anchor
        observed = log_ratio.exp().detach()
        update = {"ppo_ratio_mean": mean(float(observed.mean())),
                  "ppo_ratio_max": processes.reduce(float(observed.max()), "max"),
                  "clip_fraction": mean(float(((observed - 1).abs() > config.ppo_epsilon).float().mean())),
                  "kl": mean(float(kl.detach())), "entropy": mean(float(scores.entropy.mean())),
                  "pg_loss": processes.reduce(float(pg.detach()), "sum"),
                  "loss": processes.reduce(float(loss.detach()), "sum"), "skipped": float(skipped), "grad_norm": 0.0}
        # The guard runs before the skip: a step that updates nothing is still checked (a NaN in l_i, kept or
        # not, makes the masked loss NaN).
        _guard("PPO ratio", update["ppo_ratio_max"], limits.max_ppo_ratio, "max_ppo_ratio")
        _guard("KL(actor || frozen)", update["kl"], limits.max_kl, "max_kl")
        if not math.isfinite(update["loss"]):
            raise CollapseError(f"the loss is {update['loss']}")
        updates.append(update)
        if skipped:  # no CoT passed the threshold: no backward, no optimizer step (the reference's update_model)
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        processes.reduce_gradients([p for p in actor.parameters() if p.requires_grad], "sum")
        update["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
            [p for p in actor.parameters() if p.requires_grad], config.max_grad_norm))
        optimizer.step()
    t_update = time.perf_counter() - t0
    over_updates = lambda k: sum(u[k] for u in updates) / len(updates)  # noqa: E731
    return {"answer_logprob": mean(float(r.mean())), "baseline": mean(float(b.mean())),
            "reward": mean(float(normalized.mean())),
            "advantage_std": mean(float(normalized.view(-1, G).std(-1).mean())) if G > 1 else 0.0,
            "ppo_ratio_mean": over_updates("ppo_ratio_mean"), "ppo_ratio_max": max(u["ppo_ratio_max"] for u in updates),
            "clip_fraction": over_updates("clip_fraction"), "kl": updates[0]["kl"], "entropy": updates[0]["entropy"],
            "repetition": repetition, "kept": mean(float(keep.mean())), "skipped": float(skipped),
            **cot_candidate_shares(tokenizer, examples, cots, G, mean),  # did the reward rise by copying several codes?
            "pg_loss": over_updates("pg_loss"), "loss": over_updates("loss"), "grad_norm": over_updates("grad_norm"),
            "t_sample": t_sample, "t_score": t_score,
            "t_update": t_update, "updates": updates}


# ---------------------------------------------------------------- checkpoints (resume after a kill)

def run_fingerprint(config: MarkovianConfig, examples: Sequence[Example], base: str, seed: int) -> str:
    """What makes a saved state resumable: everything but the horizon, the eval/save cadence and the guard's limits."""
    relevant = {k: v for k, v in asdict(config).items() if k not in ("steps", "eval_every", "save_every", "collapse")}
    blob = json.dumps([relevant, [ex.id for ex in examples], base, seed], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Checkpoints:
    """`<root>/latest`: the adapter, the optimizer state, the RNG state and the run state (step, curves, EMA),
    written to a staging folder and swapped in, so a kill leaves the previous checkpoint whole. Only steps whose
    monitors were within the collapse limits are saved, so `latest` is always the last good one.
    Tensors go to safetensors and the rest to JSON: nothing is unpickled on resume."""

    def __init__(self, root: str | Path, fingerprint: str):
        self.root, self.fingerprint = Path(root), fingerprint
        self.latest = self.root / "latest"

    def save(self, model, optimizer, state: dict) -> None:
        from safetensors.torch import save_file

        tmp = self.root / "latest.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        stable_adapter_config(tmp)
        opt = optimizer.state_dict()
        save_file({f"{i}.{k}": v.detach().cpu().contiguous() for i, s in opt["state"].items() for k, v in s.items()},
                  str(tmp / "optimizer.safetensors"))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "fingerprint": self.fingerprint,
                                                    "param_groups": opt["param_groups"]}, default=float))
        old = self.root / "latest.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.latest.exists():
            os.replace(self.latest, old)
        os.replace(tmp, self.latest)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, model, optimizer) -> dict | None:
        """The saved run state after restoring weights, optimizer and RNG; None when there is nothing to resume
        (no checkpoint, or one from other params or data: then it is removed and training starts over)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        if not (self.latest / "state.json").is_file():
            return None
        state = json.loads((self.latest / "state.json").read_text())
        if state.pop("fingerprint") != self.fingerprint:
            shutil.rmtree(self.root, ignore_errors=True)
            return None
        set_peft_model_state_dict(model, load_file(str(self.latest / "adapter_model.safetensors")))
        tensors = load_file(str(self.latest / "optimizer.safetensors"))
        per_param: dict[int, dict] = {}
        for key, value in tensors.items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
        rng = load_file(str(self.latest / "rng.safetensors"))
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available() and "cuda0" in rng:
            torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count())])
        return state


# ---------------------------------------------------------------- training

def question_order(n: int, seed: int, step: int, per_step: int) -> list[int]:
    """The questions of step `step` (1-based): consecutive seeded permutations, one per pass over the data."""
    import random

    out = []
    for j in range((step - 1) * per_step, step * per_step):
        epoch, k = divmod(j, n)
        out.append(random.Random(f"{seed}-markovian-{epoch}").sample(range(n), n)[k])
    return out


def eval_summary(rows: list[dict]) -> dict[str, float]:
    n = max(len(rows), 1)
    return {"accuracy": sum(r["correct"] for r in rows) / n,
            "answer_logprob": sum(r["answer_logprob"] for r in rows) / n,
            "cot_repetition": sum(r["cot_repetition"] > 0.5 for r in rows) / n,
            "cot_contains_answer": sum(r["cot_contains_answer"] for r in rows) / n, **candidate_summary(rows)}


def candidate_summary(rows: list[dict]) -> dict[str, float]:
    """Over two_stage rows: the share of CoTs that single the gold out, that name >= 2 of the question's candidates
    (the copy-several shortcut), and the accuracy of the candidate log-prob choice where the task offers
    candidates (beside `accuracy`, the reference's greedy scoring)."""
    n = max(len(rows), 1)
    out = {"cot_singles_out": sum(r["cot_singles_out"] for r in rows) / n,
           "cot_multiple_candidates": sum(r["cot_n_candidates"] >= 2 for r in rows) / n}
    if rows and all("answer_choice_correct" in r for r in rows):
        out["accuracy_candidate_choice"] = sum(r["answer_choice_correct"] for r in rows) / n
    return out


def train(actor, tokenizer, examples: Sequence[Example], eval_examples: Sequence[Example], config: MarkovianConfig,
          checkpoint_dir: str | Path, sampler, eval_batch_size: int, seed: int = 0, base_fingerprint: str = "",
          on_step: Callable[[int, object], None] | None = None, log: Callable[[str], None] = print):
    """RL on `examples` for config.steps steps, resuming from `checkpoint_dir` when it holds a state of this run.
    Returns (metrics, per-step curve, eval curve). `on_step(step, actor)` runs before each step (tests use it)."""
    from scipy.stats import spearmanr

    if not examples:
        from cotlab.schema import DataError

        raise DataError("markovian: no training questions")
    actor.train()
    optimizer = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
    checkpoints = Checkpoints(checkpoint_dir, run_fingerprint(config, examples, base_fingerprint, seed))
    state = checkpoints.load(actor, optimizer)
    if state is None:
        torch.manual_seed(seed)
        state = {"step": 0, "ema": None, "history": [], "curve": [], "eval_curve": []}
    else:
        log(f"markovian: resuming from {checkpoints.latest} at step {state['step']}")
        for row in state["curve"]:  # rows saved before `skipped` was a monitor (each of them updated): one CSV header
            row.setdefault("skipped", 0.0)
    answerer_adapter = config.actor_reward_weight > 0
    baselines: dict[str, float] = {}
    processes = Processes()  # under accelerate: each process samples and scores its share of a step's questions

    def evaluate_now(step: int) -> None:
        rows = two_stage(actor, answerer_adapter, tokenizer, eval_examples, config.cot_length, config.markovian,
                         config.answer_tokens, eval_batch_size)
        state["eval_curve"].append({"step": step, **eval_summary(rows)})
        actor.train()

    if not state["eval_curve"]:
        evaluate_now(0)
    bar = progress(total=config.steps, initial=state["step"], desc="markovian RL steps", unit="step")
    while state["step"] < config.steps:
        step = state["step"] + 1
        if on_step is not None:
            on_step(step, actor)
        batch = processes.share([examples[i] for i in question_order(len(examples), seed, step,
                                                                       config.questions_per_step)],
                                "markovian.questions_per_step")
        try:
            monitors = rl_step(actor, tokenizer, sampler, batch, config, optimizer, baselines, state, processes)
        except CollapseError as e:
            kept = (f"the last good checkpoint, from step {json.loads((checkpoints.latest / 'state.json').read_text())['step']}"
                    f", is kept at {checkpoints.latest}" if checkpoints.latest.exists() else
                    "no checkpoint had been saved yet")
            raise CollapseError(
                f"Markovian training stopped at step {step}: {e}. This is the collapse the guard is for (e.g. a CoT "
                f"degenerating to '4444...', or the policy running away from the frozen model); {kept}. Lower "
                "markovian.lr, raise markovian.kl_penalty, or turn off markovian.use_ppo / actor_reward_weight; "
                "`dvc repro` resumes from the kept checkpoint when only the limits change.") from None
        state["step"] = step
        bar.update(1)
        monitors.pop("updates")
        state["curve"].append({"step": step, **monitors})
        if is_main_process():
            log(f"step {step}: answer log-prob {monitors['answer_logprob']:.3f}, reward {monitors['reward']:+.3f}, "
                f"kl {monitors['kl']:.4f}, entropy {monitors['entropy']:.2f}, repetition {monitors['repetition']:.2f}")
        if step % config.eval_every == 0 or step == config.steps:
            evaluate_now(step)
        if (step % config.save_every == 0 or step == config.steps) and is_main_process():
            checkpoints.save(actor, optimizer, state)
    bar.close()
    curve, eval_curve = state["curve"], state["eval_curve"]
    quarter = max(len(curve) // 4, 1)
    values = [row["answer_logprob"] for row in curve]
    trend = spearmanr(range(len(values)), values) if len(values) > 2 else None
    timing = {k: sum(row[k] for row in curve) for k in ("t_sample", "t_score", "t_update")}
    total = sum(timing.values()) or 1.0
    metrics = {
        "steps": len(curve), "processes": processes.world, "answer_logprob_first_quarter": sum(values[:quarter]) / quarter,
        "answer_logprob_last_quarter": sum(values[-quarter:]) / quarter,
        "answer_logprob_trend_spearman": float(trend.statistic) if trend else math.nan,
        "answer_logprob_trend_p": float(trend.pvalue) if trend else math.nan,
        "eval_accuracy_first": eval_curve[0]["accuracy"], "eval_accuracy_last": eval_curve[-1]["accuracy"],
        "eval_answer_logprob_first": eval_curve[0]["answer_logprob"],
        "eval_answer_logprob_last": eval_curve[-1]["answer_logprob"],
        **{f"share_{k[2:]}": v / total for k, v in timing.items()},
    }
    return metrics, curve, eval_curve


# ---------------------------------------------------------------- Markovian CoT (methods/markovian.py)
# Plain text, no chat turns, as in the reference code. The CoT is sampled after "Reasoning:" from the question; the
# answer is scored (training) and decoded (evaluation) after the same CoT tokens and " Answer:", with the question
# replaced by REDACTED in Markovian mode, so the CoT alone must carry what the answer needs.
REDACTED = "<Redacted>"
MARKOVIAN_ANSWER_CUE = " Answer:"
_MARKOVIAN_INSTRUCTION = {
    "number": "You will be given a problem, which you have {length} tokens to work through step-by-step.",
    "choice": "Use {length} tokens to think step-by-step, then select the letter of the correct option.",
    "yes_no": "Use {length} tokens to think step-by-step, then answer Yes or No.",
    "name": "Use {length} tokens to think step-by-step, then give the name asked for.",
    "text": "Compress your understanding of this text into {length} tokens, then predict how it continues.",
}


def markovian_prefix(example: Example, cot_length: int, show_question: bool = True) -> str:
    """What comes before the CoT: the instruction, the question (or REDACTED) and "Reasoning:". With the question it
    is the prompt the CoT is sampled from; without it, the start of the Markovian answer prompt."""
    instruction = _MARKOVIAN_INSTRUCTION[example.answer_type].format(length=cot_length)
    question = question_block(example) if show_question else f"Question: {REDACTED}"
    return f"{instruction}\n{question}\nReasoning:"


def markovian_gold(example: Example) -> str:
    """The answer as scored after MARKOVIAN_ANSWER_CUE (its own leading space: tokenised apart from the cue)."""
    return " " + display_answer(example)
