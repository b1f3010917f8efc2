"""CODI: continuous chain-of-thought by self-distillation (Shen et al., 2025). One model with LoRA plays both roles:

    teacher:  question  CoT  "The answer is: X" eos                 CE on CoT + answer       (L_teacher)
    student:  question <bot> z_1 .. z_K <eot> "The answer is: X" eos  CE on the answer        (L_student)

    z_1 = prj(h_L(<bot>)),  z_k = prj(h_L(z_{k-1}))       prj = Dropout, Linear d->p, GELU, Linear p->d, LayerNorm

Each continuous thought is the projected last-layer hidden state of the previous position, fed back as the next
input embedding on the KV cache (one model call per thought). The student's hidden states are pulled towards the
stop-gradient teacher's at the position that predicts the first answer-value token, in every layer l:

    distill = 1/(L+1) * sum_l  D(h_l^S[p_S], sg(h_l^T[p_T])) / std(h_l^T[p_T])^n
    D = SmoothL1 (beta 1), n = 1  |  D = MSE, n = 2            (n = 0 without distill_loss_div_std)
    L = L_student + distill_loss_factor * distill + ref_loss_factor * L_teacher

std is one scalar per layer: the unbiased std over the batch's B x d teacher values. The MSE term is divided by it
twice, by the variance, as in the reference (zhenyi4/codi src/model.py L362-365, its "l2"). That looks deliberate:
MSE is a squared distance, so over the variance it is scale-free, like SmoothL1 over the std in its L1 range.

Unlike the reference code, the latent and answer steps carry the question's attention mask and position ids, so a
left-padded batch gives the same result as one question at a time. The teacher's targets come, as in the reference
(src/model.py L296-298), from a separate no-grad pass in training mode: with dropout active it draws its own dropout
masks, so the targets are noisy too, but their noise is independent of the CE pass's. Without any dropout the two
passes would be identical, so the CE pass's states, detached, are the targets and the second pass is skipped.
The reference's LoRA dropout is 0.1 (train.py L135; ModelArguments.lora_dropout, src/model.py L30, is unused),
so it always takes that second pass; codi.lora.dropout defaults to 0.0 here (CODIConfig below, params.yaml): no
LoRA regularisation and one teacher pass fewer, a departure from the reference recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cotlab.config import ConfigError, LoraParams, build
from cotlab.schema import Example
from cotlab.prompts import display_answer, question_block

BOT, EOT, PAD = "<bot>", "<eot>", "<pad>"
ANSWER_PREFIX = "The answer is: "


@dataclass
class CODIConfig:
    """The `codi` section: CODI and its comparisons, on tasks of their own. Defaults are the reference recipe's
    (docs/codi_reference_notes.md) except where the embedded scale needs otherwise."""

    tasks: list[str] = field(default_factory=lambda: ["personal_relations", "personal_relations_no_universe"])
    # CODI's own base model (prepare_system_model@codi -> models/base_codi, read by codi, cot_sft, eval_codi and
    # codi_probe): None = the shared one (model.name, whose auto is the scale's model); else embedded | tiny-random |
    # a Hugging Face id (the reference: meta-llama/Llama-3.2-1B-Instruct) | a local path
    model: str | None = None
    num_latent: int = 6  # continuous thoughts in training (the paper's 6)
    inf_latent_iterations: int = 6  # continuous thoughts at inference
    use_prj: bool = True  # the projection prj between a thought's hidden state and the next input embedding
    prj_dim: int | None = None  # None = the model width (the reference: 2048 for a 1B model, the width for GPT-2)
    prj_dropout: float = 0.0
    prj_no_ln: bool = False  # true: no LayerNorm at the end of prj
    distill_loss_factor: float = 20.0  # the distillation term's weight in L
    ref_loss_factor: float = 1.0  # the weight of the teacher's CE
    distill_loss_type: Literal["smooth_l1", "mse"] = "smooth_l1"
    distill_loss_div_std: bool = True  # divide D by the teacher's std (MSE: by its variance, as the reference)
    lr: float = 8.0e-4
    epochs: float | None = 3  # None = the scale's epochs; 1 epoch on the demo's 96 questions is too few to learn
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    weight_decay: float = 0.1
    max_grad_norm: float = 2.0
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    logging_steps: int = 2
    bf16: bool = True  # only where supported (CUDA); fp32 on CPU
    # The reference's LoRA dropout is 0.1 (zhenyi4/codi train.py L135); 0.0 here skips CODI's second teacher pass.
    lora: LoraParams = field(default_factory=lambda: LoraParams(r=128, alpha=32, dropout=0.0))
    max_new_tokens: int = 16  # after <eot>: "The answer is: X"
    probe_questions: int = 32  # codi_probe: test questions whose thoughts are decoded and scored
    probe_top_k: int = 5

    def __post_init__(self):
        for key in ("num_latent", "inf_latent_iterations"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: {getattr(self, key)!r} is out of range (expected >= 1)")


# ---------------------------------------------------------------- tokens and sequences

def add_codi_tokens(model, tokenizer) -> dict[str, int]:
    """<bot>, <eot> (and a pad token if the tokenizer has none) as added special tokens, embeddings resized."""
    extra = {"additional_special_tokens": [BOT, EOT]}
    if tokenizer.pad_token is None:
        extra["pad_token"] = PAD
    tokenizer.add_special_tokens(extra)
    model.resize_token_embeddings(len(tokenizer))
    return {"bot": tokenizer.convert_tokens_to_ids(BOT), "eot": tokenizer.convert_tokens_to_ids(EOT),
            "pad": tokenizer.pad_token_id}


def answer_text(example: Example) -> str:
    # a GSM8k-Aug row in the reference's form carries the answer as the reference writes it ("1,080"; train.py L277-284)
    return ANSWER_PREFIX + example.metadata.get("answer_text", display_answer(example))


def answer_ids(tokenizer, example: Example) -> tuple[list[int], int]:
    """Token ids of "The answer is: X" and the index of its first answer-value token (the first token whose span
    reaches into X): the distillation position is the one before it, whatever the tokenizer does with the space."""
    text = answer_text(example)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    value_start = len(ANSWER_PREFIX)
    first = next(i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > value_start)
    return encoded["input_ids"], first


@dataclass
class CODIExample:
    question: list[int]
    cot: list[int]
    answer: list[int]  # "The answer is: X" + eos
    value_index: int  # index in `answer` of the first answer-value token

    @property
    def teacher(self) -> list[int]:
        return self.question + self.cot + self.answer

    @property
    def teacher_distill_position(self) -> int:
        return len(self.question) + len(self.cot) + self.value_index - 1

    @property
    def student_distill_position(self) -> int:
        # In the answer call the sequence is <eot> + answer: answer index i sits at i + 1.
        return self.value_index


def _raw(example: Example) -> bool:
    # GSM8k-Aug rows built with question_format raw (cotlab.data.sources.gsm8k_aug_row): the reference's sequence,
    # nothing added between question, CoT and answer (zhenyi4/codi train.py L235, L286, preprocess L175-189)
    return example.metadata.get("question_format") == "raw"


def encode_question(tokenizer, example: Example) -> list[int]:
    text = example.question if _raw(example) else question_block(example) + "\n"
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def encode(tokenizer, example: Example) -> CODIExample:
    """Question, CoT and answer tokenised apart (no merges across the boundaries, as in the reference)."""
    question = encode_question(tokenizer, example)
    reasoning = example.reasoning if _raw(example) else example.reasoning.strip() + "\n"
    cot = tokenizer(reasoning, add_special_tokens=False)["input_ids"] if example.reasoning.strip() else []
    answer, value_index = answer_ids(tokenizer, example)
    return CODIExample(question, cot, answer + [tokenizer.eos_token_id], value_index)


def within_max_token_num(tokenizer, example: Example) -> bool:
    """The reference's length filter where the row carries one (GSM8k-Aug's max_token_num): zhenyi4/codi train.py
    L265-267, `len(tokenizer.encode(example["question"] + example["cot"] + example["answer"])) > max_token_num` drops
    the row, counted with the trained model's tokenizer, special tokens included."""
    limit = example.metadata.get("max_token_num")
    return limit is None or len(tokenizer.encode(example.metadata["max_token_num_text"])) <= limit


def _pad(rows: Sequence[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


def collate(batch: Sequence[CODIExample], pad_id: int, bot_id: int, eot_id: int) -> dict[str, torch.Tensor]:
    """Teacher rows right-padded; student questions left-padded (so <bot> is last in every row) and answers
    right-padded; labels -100 where no loss is taken."""
    teacher = [ex.teacher for ex in batch]
    teacher_labels = [[-100] * len(ex.question) + ex.cot + ex.answer for ex in batch]
    questions = [ex.question + [bot_id] for ex in batch]
    answers = [[eot_id] + ex.answer for ex in batch]
    return {
        "teacher_ids": _pad(teacher, pad_id, left=False),
        "teacher_mask": _pad([[1] * len(r) for r in teacher], 0, left=False),
        "teacher_labels": _pad(teacher_labels, -100, left=False),
        "teacher_position": torch.tensor([ex.teacher_distill_position for ex in batch]),
        "question_ids": _pad(questions, pad_id, left=True),
        "question_mask": _pad([[1] * len(r) for r in questions], 0, left=True),
        "answer_ids": _pad(answers, pad_id, left=False),
        "answer_mask": _pad([[1] * len(r) for r in answers], 0, left=False),
        "answer_labels": _pad([r[1:] + [-100] for r in answers], -100, left=False),  # position i predicts i + 1
        "student_position": torch.tensor([ex.student_distill_position for ex in batch]),
    }


# ---------------------------------------------------------------- the model

def distill_loss(student_states, teacher_states, student_position, teacher_position, kind: str,
                 div_std: bool) -> torch.Tensor:
    """Mean over layers of SmoothL1 (or MSE) between the student's and the stop-gradient teacher's hidden states at
    one position per row, each layer's term optionally divided by the std (MSE: the variance) of the teacher's states
    there (the module docstring's equation)."""
    if kind not in ("smooth_l1", "mse"):
        raise ValueError(f"distill_loss_type {kind!r}: expected smooth_l1 or mse")
    rows = torch.arange(teacher_position.size(0), device=teacher_position.device)
    total = torch.zeros((), device=teacher_position.device)
    for h_student, h_teacher in zip(student_states, teacher_states, strict=True):
        s = h_student[rows, student_position].float()
        t = h_teacher[rows, teacher_position].float().detach()
        term = F.smooth_l1_loss(s, t) if kind == "smooth_l1" else F.mse_loss(s, t)
        if div_std:  # std^2 for MSE, as the reference (src/model.py L362-365): a squared distance, a squared scale
            term = term / t.std() ** (2 if kind == "mse" else 1)
        total = total + term
    return total / len(teacher_states)


class Projection(nn.Sequential):
    def __init__(self, width: int, prj_dim: int, dropout: float, layer_norm: bool):
        layers = [nn.Dropout(dropout), nn.Linear(width, prj_dim), nn.GELU(), nn.Linear(prj_dim, width)]
        super().__init__(*layers, *([nn.LayerNorm(width)] if layer_norm else []))


class CODI(nn.Module):
    """A causal LM with LoRA (`lm`: a PEFT model in training, the merged plain model once loaded for inference) and
    the projection of continuous thoughts (`prj`)."""

    def __init__(self, lm, config: CODIConfig):
        super().__init__()
        self.lm, self.codi_config = lm, config  # not `config`: Trainer reads model.config as a PretrainedConfig
        width = lm.get_input_embeddings().embedding_dim
        self.prj = (Projection(width, config.prj_dim or width, config.prj_dropout, not config.prj_no_ln)
                    if config.use_prj else nn.Identity())

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """prj(h), computed in the projection's own dtype: it is trainable, so fp32 like LoRA, while the frozen base
        may run in bf16."""
        weight = next(self.prj.parameters(), None)
        return self.prj(hidden if weight is None else hidden.to(weight.dtype))

    def _dropout_active(self) -> bool:
        # Llama-like models apply attention dropout functionally (config.attention_dropout), not as an nn.Dropout.
        return self.training and (getattr(self.lm.config, "attention_dropout", 0.0) > 0 or any(
            isinstance(m, nn.Dropout) and m.p > 0 for m in self.lm.modules()))

    def think(self, question_ids, question_mask, num_latent: int, record: list | None = None):
        """Encode question + <bot>, then `num_latent` continuous thoughts on the KV cache: 1 + num_latent calls.
        Returns (past_key_values, attention mask so far, next position id, mean norm of the thoughts).
        `record`, when given, receives the last-layer state each thought is projected from (before projection)."""
        positions = (question_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(input_ids=question_ids, attention_mask=question_mask, position_ids=positions,
                      use_cache=True, output_hidden_states=True)
        past, mask, next_position = out.past_key_values, question_mask, positions[:, -1:] + 1
        norms = []
        for _ in range(num_latent):
            if record is not None:
                record.append(out.hidden_states[-1][:, -1].detach())
            latent = self.project(out.hidden_states[-1][:, -1:])
            norms.append(latent.detach().float().norm(dim=-1).mean())
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            out = self.lm(inputs_embeds=latent.to(self.lm.dtype), attention_mask=mask, position_ids=next_position,
                          past_key_values=past, use_cache=True, output_hidden_states=True)
            past, next_position = out.past_key_values, next_position + 1
        latent_norm = torch.stack(norms).mean() if norms else torch.zeros(())
        return past, mask, next_position, latent_norm

    def answer_pass(self, past, mask, next_position, answer_ids, answer_mask):
        """<eot> + answer tokens after the thoughts (one call)."""
        full_mask = torch.cat([mask, answer_mask], dim=1)
        positions = next_position + torch.arange(answer_ids.size(1), device=answer_ids.device)
        return self.lm(input_ids=answer_ids, attention_mask=full_mask, position_ids=positions,
                       past_key_values=past, use_cache=True, output_hidden_states=True)

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        # The Trainer calls the model, not losses(): under DDP only a call through the wrapper's forward
        # all-reduces the gradients.
        return self.losses(batch)

    def losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.codi_config
        teacher_kwargs = {"input_ids": batch["teacher_ids"], "attention_mask": batch["teacher_mask"],
                          "output_hidden_states": True}
        teacher = self.lm(**teacher_kwargs, labels=batch["teacher_labels"])
        if self._dropout_active():  # the reference's no-grad target pass, still in train mode: its own dropout masks
            with torch.no_grad():
                targets = self.lm(**teacher_kwargs).hidden_states
        else:  # without dropout that pass equals the CE pass: its states, detached, are the targets
            targets = tuple(h.detach() for h in teacher.hidden_states)
        past, mask, next_position, latent_norm = self.think(batch["question_ids"], batch["question_mask"], c.num_latent)
        student = self.answer_pass(past, mask, next_position, batch["answer_ids"], batch["answer_mask"])
        logits = student.logits.float()
        ce_student = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["answer_labels"].reshape(-1),
                                     ignore_index=-100)
        distill = distill_loss(student.hidden_states, targets, batch["student_position"], batch["teacher_position"],
                               c.distill_loss_type, c.distill_loss_div_std)
        total = ce_student + c.distill_loss_factor * distill + c.ref_loss_factor * teacher.loss
        return {"loss": total, "ce_student": ce_student, "ce_teacher": teacher.loss, "distill": distill,
                "latent_norm": latent_norm}

    @torch.no_grad()
    def generate(self, question_ids, question_mask, eot_id: int, max_new_tokens: int,
                 num_latent: int | None = None) -> list[list[int]]:
        """Latent inference: question + <bot>, K thoughts, <eot>, then greedy decoding to eos (per row)."""
        num_latent = self.codi_config.inf_latent_iterations if num_latent is None else num_latent
        past, mask, next_position, _ = self.think(question_ids, question_mask, num_latent)
        tokens = torch.full((question_ids.size(0), 1), eot_id, device=question_ids.device)
        eos = self.lm.config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        generated: list[list[int]] = [[] for _ in range(question_ids.size(0))]
        done = [False] * question_ids.size(0)
        for _ in range(max_new_tokens):
            mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=1)
            out = self.lm(input_ids=tokens, attention_mask=mask, position_ids=next_position, past_key_values=past,
                          use_cache=True)
            past, next_position = out.past_key_values, next_position + 1
            tokens = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            for i, token in enumerate(tokens[:, 0].tolist()):
                if not done[i]:
                    done[i] = token in eos_ids
                    if not done[i]:
                        generated[i].append(token)
            if all(done):
                break
        return generated


def question_batch(tokenizer, examples: Sequence[Example], token_ids: dict[str, int]) -> dict[str, torch.Tensor]:
    """Question + <bot>, left-padded: what latent inference starts from (the student's prefix in training)."""
    rows = [encode_question(tokenizer, ex) + [token_ids["bot"]] for ex in examples]
    return {"question_ids": _pad(rows, token_ids["pad"], left=True),
            "question_mask": _pad([[1] * len(r) for r in rows], 0, left=True)}


@dataclass
class LatentGeneration:
    text: str
    truncated: bool
    n_new_tokens: int


def predict(codi: "CODI", tokenizer, examples: Sequence[Example], token_ids: dict[str, int], max_new_tokens: int,
            batch_size: int) -> list[LatentGeneration]:
    """Latent inference for each example (K = inf_latent_iterations thoughts, then greedy decoding after <eot>)."""
    device = next(codi.parameters()).device
    from cotlab.progress import progress

    out: list[LatentGeneration] = []
    with progress(total=len(examples), desc="codi latent", unit="question") as bar:
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in question_batch(tokenizer, examples[start:start + batch_size],
                                                                  token_ids).items()}
            for ids in codi.generate(batch["question_ids"], batch["question_mask"], token_ids["eot"], max_new_tokens):
                out.append(LatentGeneration(tokenizer.decode(ids, skip_special_tokens=True),
                                            truncated=len(ids) >= max_new_tokens, n_new_tokens=len(ids)))
            bar.update(min(batch_size, len(examples) - start))
    return out


@torch.no_grad()
def probe(codi: "CODI", tokenizer, example: Example, token_ids: dict[str, int], top_k: int) -> list[dict]:
    """What each continuous thought carries: the state it is projected from, read through the LM head (the model's
    own next-token readout at that position), as the top-k tokens and their probabilities."""
    device = next(codi.parameters()).device
    batch = {k: v.to(device) for k, v in question_batch(tokenizer, [example], token_ids).items()}
    states: list[torch.Tensor] = []
    codi.think(batch["question_ids"], batch["question_mask"], codi.codi_config.inf_latent_iterations, record=states)
    head = codi.lm.get_output_embeddings()
    thoughts = []
    for k, state in enumerate(states, start=1):
        probs = torch.softmax(head(state).float(), dim=-1)[0]
        top = probs.topk(top_k)
        thoughts.append({"thought": k, "tokens": [tokenizer.decode([i]) for i in top.indices.tolist()],
                         "probs": [round(p, 4) for p in top.values.tolist()]})
    return thoughts


# ---------------------------------------------------------------- training

LOGGED = ("ce_student", "ce_teacher", "distill", "latent_norm")


def trainer_class():
    from transformers import Trainer

    class CODITrainer(Trainer):
        """transformers' Trainer with CODI's loss; its parts are averaged over each logging window."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._parts: dict[str, list[float]] = {k: [] for k in LOGGED}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            parts = model(**inputs)
            for k in LOGGED:
                self._parts[k].append(float(parts[k].detach()))
            return (parts["loss"], parts) if return_outputs else parts["loss"]

        def log(self, logs, *args, **kwargs):
            if "loss" in logs:
                logs.update({k: sum(v) / len(v) for k, v in self._parts.items() if v})
                self._parts = {k: [] for k in LOGGED}
            super().log(logs, *args, **kwargs)

    return CODITrainer


def train(codi: CODI, tokenizer, examples: Sequence[Example], config: CODIConfig, token_ids: dict[str, int], *,
          seed: int, report_to: Sequence[str] = ()):
    """Fine-tune LoRA and the projection in place on the section `config` (epochs resolved); returns (metrics, curve
    rows with every loss part)."""
    if config.epochs is None:
        raise ValueError("codi.train: epochs must be resolved (Params.resolve) before training")
    import math
    import tempfile

    from transformers import TrainingArguments

    from cotlab.errors import TrainingDivergedError
    from cotlab.models import on_cuda
    from cotlab.progress import progress_disabled

    # A row with an empty CoT still trains (its teacher reads question -> answer), as the reference keeps GSM8k-Aug's
    # one-step problems once their last step is dropped (train.py L270-286); a task with no CoT at all has no teacher.
    kept = [ex for ex in examples if within_max_token_num(tokenizer, ex)]
    data = [encode(tokenizer, ex) for ex in kept]
    if not any(ex.cot for ex in data):
        from cotlab.schema import DataError

        raise DataError("codi: no training example has reasoning (the teacher's CoT) to distil from")
    with tempfile.TemporaryDirectory(prefix="cotlab-codi-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, num_train_epochs=config.epochs, learning_rate=config.lr,
            per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
            warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
            lr_scheduler_type=config.lr_scheduler, logging_steps=config.logging_steps, logging_first_step=True,
            save_strategy="no", report_to=list(report_to), seed=seed, data_seed=seed,
            remove_unused_columns=False, disable_tqdm=progress_disabled(), bf16=config.bf16 and on_cuda(codi.lm),
            use_cpu=not on_cuda(codi.lm), dataloader_num_workers=0,
        )
        trainer = trainer_class()(
            model=codi, args=args, train_dataset=data,
            data_collator=lambda batch: collate(batch, token_ids["pad"], token_ids["bot"], token_ids["eot"]))
        result = trainer.train()
    curve = [{"step": r["step"], "epoch": round(r["epoch"], 4), "loss": r["loss"],
              **{k: r.get(k) for k in LOGGED}} for r in trainer.state.log_history if "loss" in r]
    metrics = {"n_examples": len(data), "train_loss": float(result.training_loss),
               "train_steps": int(result.global_step), "train_runtime_s": float(result.metrics.get("train_runtime", 0))}
    if any("max_token_num" in ex.metadata for ex in examples):  # the rows the reference's length filter dropped
        metrics["n_over_max_token_num"] = len(examples) - len(kept)
    if not math.isfinite(metrics["train_loss"]):
        raise TrainingDivergedError(f"CODI loss is {metrics['train_loss']}; no checkpoint was written")
    return metrics, curve


# ---------------------------------------------------------------- checkpoints

def _added_rows(model, n_base: int) -> dict[str, torch.Tensor]:
    rows = {"input": model.get_input_embeddings().weight[n_base:]}
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        rows["output"] = output.weight[n_base:]
    return rows


def save(codi: CODI, tokenizer, out_dir, base_path, params: dict, n_base_vocab: int, extra: dict | None = None):
    """The adapter, the projection, the added tokens' embedding rows and the tokenizer, under one manifest that
    records everything loading needs (so evaluation cannot rebuild a different model than was trained)."""
    from dataclasses import asdict

    from cotlab.models import save_adapter

    return save_adapter(codi.lm, tokenizer, out_dir, base_path, "codi", "codi", "none", params,
                        extra={"codi": asdict(codi.codi_config), "n_base_vocab": n_base_vocab,
                               "token_ids": {"bot": tokenizer.convert_tokens_to_ids(BOT),
                                             "eot": tokenizer.convert_tokens_to_ids(EOT),
                                             "pad": tokenizer.pad_token_id}, **(extra or {})},
                        extra_modules={"projection": codi.prj.state_dict(),
                                       "added_embeddings": _added_rows(codi.lm.get_base_model(), n_base_vocab)})


def load(path, device: str = "auto") -> tuple[CODI, object, dict]:
    """(CODI in eval mode, tokenizer, manifest), rebuilt from the checkpoint's manifest alone, its LoRA adapter
    merged into the base weights for inference speed (see cotlab.models.load_checkpoint)."""
    from pathlib import Path

    from peft import PeftModel
    from safetensors.torch import load_file

    from cotlab.models import ModelLoadError, _check_base, _load_base, load_tokenizer, read_manifest, resolve_device

    path = Path(path)
    manifest = read_manifest(path)
    if manifest.get("method") != "codi":
        raise ModelLoadError(f"{path}: a {manifest.get('method')!r} checkpoint, not a CODI one")
    base_path = (path / manifest["base_model"]["path"]).resolve()
    model, base_manifest = _load_base(base_path, resolve_device(device))
    _check_base(manifest, path, base_manifest)
    tokenizer = load_tokenizer(path)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    rows = load_file(str(path / manifest["extra_modules"]["added_embeddings"]))
    n_base = manifest["n_base_vocab"]
    with torch.no_grad():
        model.get_input_embeddings().weight[n_base:] = rows["input"]
        if "output" in rows:
            model.get_output_embeddings().weight[n_base:] = rows["output"]
    codi = CODI(PeftModel.from_pretrained(model, str(path)).merge_and_unload(), build(CODIConfig, manifest["codi"], "codi"))
    codi.prj.load_state_dict(load_file(str(path / manifest["extra_modules"]["projection"])))
    codi.to(next(model.parameters()).device).eval().requires_grad_(False)
    return codi, tokenizer, manifest
