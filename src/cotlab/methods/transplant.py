"""Hidden-state transplant verification.

A math problem comes with two explained answers E_A and E_B (one correct, one with a slip carried through) and an
argument that one of them is correct. The verdict is read off the explanations as the model understood them while
solving the problem alone:

    pass 1, per candidate c:  run  P1_c = [solve prompt] + E_c  and keep  h^l_t(P1_c)  for every selected layer l and
                              every token t of E_c
    pass 2:                   run  P2 = [question, "Candidate A:" E_A, "Candidate B:" E_B, argument,
                              "Which candidate is correct?", "Candidate"]  with  h^l_t(P2) := h^l_t(P1_c)  at the
                              tokens of E_c, for every selected layer l (the layer's output, i.e. the residual stream)
    L = -log softmax(z_T[A], z_T[B])_y        z_T: pass 2's logits at its last position, y: the correct identifier

The explanation is spliced into both passes as the same token ids (checked), so "the same tokens" is exact. With
`detach_pass1: false` the loss also trains pass 1 through the transplanted states. Ablations: `masked` (every
candidate identifier in the argument replaced by "_": the argument's reasoning stays, whom it backs is hidden) and
`transplant: false` (the same prompts, pass 2 alone). `residual_fp64` keeps the residual stream in float64 from the
first to the last hooked layer, as the source did: the sublayers (attention, MLP, norms) compute in the model's
dtype, the residual sums and the transplanted states are float64.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from cotlab.config import ConfigError, LoraParams
from cotlab.distributed import Processes
from cotlab.errors import TrainingDivergedError
from cotlab.schema import DataError
from cotlab.evaluation.stats import mcnemar_exact, summarize, wilson_interval
from cotlab.progress import progress
from cotlab.prompts import render_messages


@dataclass
class TransplantConfig:
    """The `transplant` section: hidden-state transplant verification on data/candidates/<task>, trained as
    transplant@transplant-<task> and its controls transplant@transplant_masked-<task> and
    transplant@no_transplant-<task>."""

    tasks: list[str] = field(default_factory=lambda: ["svamp"])  # candidates@<task> and the transplant stages run on these
    # The verifier's own base model (prepare_system_model@transplant -> models/base_transplant, read by the transplant
    # stages): None = the shared one (model.name, whose auto is the scale's model); else embedded | tiny-random | a
    # Hugging Face id (the source: a LLaMA-7B Alpaca; any 7B instruct model) | a local path
    model: str | None = None
    # "all", or the decoder layers whose outputs are transplanted (0-based). A layer's output reaches later tokens only
    # through the attention of the layers after it: the last layer alone cannot move the verdict.
    layers: Literal["all"] | list[int] = "all"
    detach_pass1: bool = False  # false: gradients flow through the transplanted states into pass 1
    residual_fp64: bool = False  # the residual stream in float64 through the hooked layers (sublayers compute in the model dtype)
    masked: bool = False  # the ablation: every candidate identifier in the argument replaced by "_" (set per stage)
    transplant: bool = True  # false: the control without replacement, same prompts, pass 2 alone (set per stage)
    steps: int = 8  # the smallest run that exercises every stage: the effect needs ~12,000 samples
    batch_size: int = 4
    lr: float = 5.0e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 4  # steps between curve points (and at step 0 and the last step)
    n_curve: int = 8  # train and test items evaluated at each curve point (seeded); the final evaluation takes all
    lora: LoraParams = field(default_factory=lambda: LoraParams(r=8, alpha=16, dropout=0.0))

    def __post_init__(self):
        if isinstance(self.layers, list) and (not self.layers or min(self.layers) < 0):
            raise ConfigError(f"layers: {self.layers!r} must be 'all' or a non-empty list of layer indices >= 0")

LABELS = ("A", "B")

# ---------------------------------------------------------------- the masked ablation

# How an argument names a candidate: "Candidate B", "option A", "(B)", "A is correct", and B alone (not a word).
_NAMED = re.compile(r"\b(candidate|option|choice|explanation|solution|answer)(\s+)([AB])\b", re.IGNORECASE)
_BRACKETED = re.compile(r"\(([AB])\)")
_VERDICT = re.compile(r"\b([AB])(?=\s+is\s+(?:the\s+)?(?:correct|right|wrong|incorrect)\b)")
_LONE_B = re.compile(r"\bB\b")


def mask_identifiers(argument: str) -> str:
    """The masked ablation: every reference to a candidate by its identifier becomes "_"."""
    argument = _NAMED.sub(lambda m: f"{m.group(1)}{m.group(2)}_", argument)
    argument = _BRACKETED.sub("(_)", argument)
    argument = _VERDICT.sub("_", argument)
    return _LONE_B.sub("_", argument)


def identifiers_in(argument: str) -> list[str]:
    """The candidate identifiers an argument still names (empty after mask_identifiers)."""
    return ([m.group(3) for m in _NAMED.finditer(argument)] + _BRACKETED.findall(argument)
            + _VERDICT.findall(argument) + _LONE_B.findall(argument))


# ---------------------------------------------------------------- token rows

@dataclass
class ChoiceItem:
    id: str
    solve: list[list[int]]  # pass 1, per candidate: solve prompt + explanation
    solve_spans: list[range]  # the explanation's positions in each pass-1 row
    choice: list[int]  # pass 2
    choice_spans: list[range]  # each candidate's explanation positions in pass 2
    correct: int  # index into LABELS
    argued: int  # the candidate the argument backs


def _ids(tokenizer, text: str, first: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=first)["input_ids"]


def build_item(tokenizer, row: dict, masked: bool = False) -> ChoiceItem:
    """Both passes of one candidates row (data/candidates/<task>), with each explanation's token ids spliced in."""
    explanations = [_ids(tokenizer, row["candidates"][label]) for label in LABELS]
    prefix = _ids(tokenizer, render_messages(tokenizer, transplant_solve_messages(row["question"])), first=True)
    argument = mask_identifiers(row["argument"]) if masked else row["argument"]
    rest = render_messages(tokenizer, transplant_choice_messages(row["question"], argument, LABELS)) + TRANSPLANT_CUE
    choice: list[int] = []
    choice_spans = []
    for label, explanation in zip(LABELS, explanations):
        before, found, rest = rest.partition(explanation_slot(label))
        if not found:
            raise DataError(f"candidates row {row['id']}: the choice prompt lost the slot of candidate {label} (does "
                            f"the question or argument contain {explanation_slot(label)!r}?)")
        choice += _ids(tokenizer, before, first=not choice)
        choice_spans.append(range(len(choice), len(choice) + len(explanation)))
        choice += explanation
    choice += _ids(tokenizer, rest)
    solve = [prefix + e for e in explanations]
    solve_spans = [range(len(prefix), len(prefix) + len(e)) for e in explanations]
    for c in range(len(LABELS)):
        if [solve[c][t] for t in solve_spans[c]] != [choice[t] for t in choice_spans[c]]:
            raise DataError(f"candidates row {row['id']}: explanation {LABELS[c]} differs between the passes")
    return ChoiceItem(row["id"], solve, solve_spans, choice, choice_spans, LABELS.index(row["correct"]),
                      LABELS.index(row["argued"]))


def identifier_ids(tokenizer) -> list[int]:
    """The token of each candidate identifier after TRANSPLANT_CUE: the loss is over these alone."""
    ids = [_ids(tokenizer, f" {label}") for label in LABELS]
    if any(len(i) != 1 for i in ids):
        raise ConfigError(f"transplant: the tokenizer splits the identifiers {LABELS} into {ids}; they must be one "
                          "token each")
    return [i[0] for i in ids]


# ---------------------------------------------------------------- hooks

class _PassOneDone(Exception):
    """Raised after the last selected layer of pass 1: nothing later is needed."""


def decoder_layers(model) -> torch.nn.ModuleList:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder().layers


def selected_layers(layers: str | list[int], n_layers: int) -> list[int]:
    if layers == "all":
        return list(range(n_layers))
    if max(layers) >= n_layers:
        raise ConfigError(f"transplant.layers: {layers} names layers the model lacks (it has {n_layers}: 0-{n_layers - 1})")
    return sorted(set(layers))


def _replace_output(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextlib.contextmanager
def hooked(model, selected: Sequence[int], edit: Callable[[int, torch.Tensor], torch.Tensor] | None,
           residual_fp64: bool = False, stop_after_last: bool = False):
    """Forward hooks on the decoder layers: `edit(l, h)` sees (and may replace) each selected layer's output."""
    layers = decoder_layers(model)
    dtype = next(model.parameters()).dtype
    handles = []

    def on_output(index: int):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if edit is not None:
                hidden = edit(index, hidden)
            if stop_after_last and index == selected[-1]:
                raise _PassOneDone
            if residual_fp64 and index == selected[-1]:
                hidden = hidden.to(dtype)  # back to the model's dtype for the rest of the model
            return _replace_output(output, hidden)
        return hook

    def cast(to: torch.dtype):
        return lambda module, args, output: _replace_output(
            output, (output[0] if isinstance(output, tuple) else output).to(to))

    try:
        if residual_fp64:
            handles.append(layers[selected[0]].register_forward_pre_hook(
                lambda module, args: (args[0].to(torch.float64), *args[1:])))
            for layer in layers[selected[0]:selected[-1] + 1]:
                # Sublayers read the stream in the model's dtype and add their output to it in float64.
                for name, to in (("input_layernorm", dtype), ("post_attention_layernorm", dtype),
                                 ("self_attn", torch.float64), ("mlp", torch.float64)):
                    if not hasattr(layer, name):
                        raise ConfigError(f"transplant.residual_fp64: the decoder layers have no {name!r} (supported: "
                                          "Llama-style layers)")
                    handles.append(getattr(layer, name).register_forward_hook(cast(to)))
        for index in selected:
            handles.append(layers[index].register_forward_hook(on_output(index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _pad(tokenizer, rows: Sequence[Sequence[int]], side: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    batch = tokenizer.pad({"input_ids": [list(r) for r in rows]}, padding=True, padding_side=side, return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


def choice_logits(model, tokenizer, items: Sequence[ChoiceItem], config: TransplantConfig,
                  logits_to_keep: int = 1) -> torch.Tensor:
    """Pass 2's logits (left-padded; the last `logits_to_keep` positions, 0 for all), after the transplant."""
    device = next(model.parameters()).device
    selected = selected_layers(config.layers, len(decoder_layers(model)))
    ids, mask = _pad(tokenizer, [it.choice for it in items], "left", device)
    offsets = [ids.size(1) - len(it.choice) for it in items]
    edit = None
    if config.transplant:
        # Pass 1, right-padded (positions as in the unpadded row): row 2b + c is item b's candidate c.
        solve_ids, solve_mask = _pad(tokenizer, [row for it in items for row in it.solve], "right", device)
        pairs = [(2 * b + c, t, b, offsets[b] + u) for b, it in enumerate(items) for c in range(len(LABELS))
                 for t, u in zip(it.solve_spans[c], it.choice_spans[c])]
        rows1, pos1, rows2, pos2 = (torch.tensor(col, device=device) for col in zip(*pairs))
        states: dict[int, torch.Tensor] = {}

        def keep(layer: int, hidden: torch.Tensor) -> torch.Tensor:
            states[layer] = hidden[rows1, pos1]
            return hidden

        decoder = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_decoder()
        with (torch.no_grad() if config.detach_pass1 else contextlib.nullcontext()), \
                hooked(model, selected, keep, config.residual_fp64, stop_after_last=True):
            try:
                decoder(input_ids=solve_ids, attention_mask=solve_mask)
            except _PassOneDone:
                pass

        def edit(layer: int, hidden: torch.Tensor) -> torch.Tensor:
            return hidden.index_put((rows2, pos2), states[layer].to(hidden.dtype))

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with hooked(model, selected, edit, config.residual_fp64):
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=logits_to_keep).logits


def verdict_logits(model, tokenizer, items: Sequence[ChoiceItem], config: TransplantConfig,
                   identifiers: Sequence[int]) -> torch.Tensor:
    """[B, 2]: z_T over the candidate identifiers."""
    return choice_logits(model, tokenizer, items, config)[:, -1, list(identifiers)].float()


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def predict(model, tokenizer, items: Sequence[ChoiceItem], config: TransplantConfig, batch_size: int) -> list[dict]:
    """One prediction per item: the verdict, and how it relates to the gold answer and to the argument."""
    was_training = model.training
    model.eval()
    identifiers = identifier_ids(tokenizer)
    rows = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        probs = verdict_logits(model, tokenizer, batch, config, identifiers).softmax(-1)
        for it, p in zip(batch, probs):
            pred = int(p.argmax())
            rows.append({"id": it.id, "pred": LABELS[pred], "pred_strict": LABELS[pred], "gold": LABELS[it.correct],
                         "correct": pred == it.correct, "correct_strict": pred == it.correct,
                         "argued": LABELS[it.argued], "argument_correct": it.argued == it.correct,
                         "follows_argument": pred == it.argued, "p_correct": float(p[it.correct])})
    model.train(was_training)
    return rows


def summary(rows: list[dict]) -> dict[str, float | None]:
    """Accuracy next to the argument's own correctness rate and how often the verdict follows the argument. A rate
    over no rows (no argument was wrong in a small sample) is None: null in the metrics JSON, never NaN."""
    n = len(rows)
    right = [r for r in rows if r["argument_correct"]]
    wrong = [r for r in rows if not r["argument_correct"]]
    share = lambda rs, key: sum(r[key] for r in rs) / len(rs) if rs else None  # noqa: E731
    return {"accuracy": share(rows, "correct"), "argument_correct_rate": share(rows, "argument_correct"),
            "follows_argument_rate": share(rows, "follows_argument"),
            "accuracy_argument_right": share(right, "correct"), "accuracy_argument_wrong": share(wrong, "correct"),
            "loss": -sum(torch.tensor(r["p_correct"]).clamp(min=1e-12).log().item() for r in rows) / n}


def final_metrics(rows: list[dict]) -> dict[str, float]:
    """The summary with Wilson intervals, and the verdict paired against simply following the argument."""
    metrics = {k: v for k, v in summarize(rows).items() if not k.startswith(("pred_share", "accuracy_strict",
                                                                             "invalid_rate_strict"))}
    metrics.update(summary(rows))
    n = len(rows)
    for key in ("argument_correct", "follows_argument"):
        low, high = wilson_interval(sum(r[key] for r in rows), n)
        metrics[f"{key}_rate_ci_low"], metrics[f"{key}_rate_ci_high"] = low, high
    correct, argument = [r["correct"] for r in rows], [r["argument_correct"] for r in rows]
    metrics["accuracy_vs_argument"] = metrics["accuracy"] - metrics["argument_correct_rate"]
    metrics["accuracy_vs_argument_mcnemar_p"] = mcnemar_exact(argument, correct)["p_value"]
    return metrics


# ---------------------------------------------------------------- training

def curve_sample(items: dict[str, Sequence[ChoiceItem]], n: int, seed: int) -> dict[str, list[ChoiceItem]]:
    """The items each curve point evaluates, per split: seeded, the same for every variant."""
    rng = random.Random(f"{seed}-transplant-curves")
    return {split: rng.sample(list(split_items), min(n, len(split_items))) for split, split_items in items.items()}


def batches(n_items: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The items of each step: seeded epochs of the training set, one batch after another."""
    rng = random.Random(f"{seed}-transplant-order")
    order: list[int] = []
    while len(order) < steps * batch_size:
        epoch = list(range(n_items))
        rng.shuffle(epoch)
        order += epoch
    return [order[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


def train(model, tokenizer, items: Sequence[ChoiceItem], curve_items: dict[str, Sequence[ChoiceItem]],
          config: TransplantConfig, seed: int, eval_batch_size: int,
          on_point: Callable[[dict], None] | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Train the adapter of `model` (a PEFT model) in place. Returns (metrics, per-step curve, evaluation curve: the
    summary of each `curve_items` split at step 0, every `eval_every` steps and the last step, each also passed to
    `on_point`)."""
    torch.manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    identifiers = identifier_ids(tokenizer)

    def point(step: int) -> dict:
        row: dict = {"step": step}
        for split, split_items in curve_items.items():
            row.update({f"{split}_{k}": v for k, v in
                        summary(predict(model, tokenizer, split_items, config, eval_batch_size)).items()})
        if on_point is not None:
            on_point(row)
        return row

    curve, eval_curve = [], [point(0)]
    model.train()
    # Under accelerate each process takes an equal share of every batch and the gradients are averaged, which is
    # the gradient of the whole batch's mean loss; the curve points are evaluated by every process alike.
    processes = Processes()
    steps = batches(len(items), config.batch_size, config.steps, seed)
    for step, indices in enumerate(progress(steps, desc="transplant steps", unit="step"), start=1):
        started = time.perf_counter()
        batch = processes.share([items[i] for i in indices], "transplant.batch_size")
        logits = verdict_logits(model, tokenizer, batch, config, identifiers)
        labels = torch.tensor([it.correct for it in batch], device=logits.device)
        loss = F.cross_entropy(logits, labels)
        batch_loss = processes.reduce(loss.item())
        if not math.isfinite(batch_loss):
            raise TrainingDivergedError(f"transplant: the loss is {batch_loss} at step {step}; lower transplant.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        processes.reduce_gradients(trainable)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        verdicts = logits.argmax(-1).tolist()
        share = lambda hits: processes.reduce(sum(hits) / len(batch))  # noqa: E731
        curve.append({"step": step, "loss": batch_loss, "grad_norm": float(grad_norm),
                      "accuracy": share(v == it.correct for v, it in zip(verdicts, batch)),
                      "follows_argument": share(v == it.argued for v, it in zip(verdicts, batch)),
                      "seconds": time.perf_counter() - started})
        if step % config.eval_every == 0 or step == config.steps:
            eval_curve.append(point(step))
    model.eval()
    quarter = max(1, len(curve) // 4)
    metrics = {"steps": config.steps, "processes": processes.world,
               "loss_first_quarter": sum(r["loss"] for r in curve[:quarter]) / quarter,
               "loss_last_quarter": sum(r["loss"] for r in curve[-quarter:]) / quarter,
               "train_seconds": sum(r["seconds"] for r in curve),
               **{f"first.{k}": v for k, v in eval_curve[0].items() if k != "step"},
               **{f"last.{k}": v for k, v in eval_curve[-1].items() if k != "step"}}
    return metrics, curve, eval_curve


# ---------------------------------------------------------------- transplant verification (methods/transplant.py)
# Chat turns with a slot where each explanation goes: methods/transplant.py splices the explanation's token ids into
# the slot, so that pass 1 (solving) and pass 2 (choosing) hold it as the same token sequence.
TRANSPLANT_CUE = "Candidate"  # the start of the answer turn in pass 2: the next token is the candidate's identifier


def explanation_slot(label: str) -> str:
    return f"[[explanation {label}]]"


def transplant_solve_messages(question: str) -> list[dict[str, str]]:
    """Pass 1: the question, answered by the explanation (spliced in after the rendered prompt)."""
    return [{"role": "user", "content": f"Solve this problem step by step.\n\nQuestion: {question}"}]


def transplant_choice_messages(question: str, argument: str, labels: Sequence[str] = ("A", "B")) -> list[dict[str, str]]:
    """Pass 2: the question, both explanations (slots), the argument and the choice."""
    candidates = "\n\n".join(f"Candidate {label}:\n{explanation_slot(label)}" for label in labels)
    return [{"role": "user", "content": (
        f"Question: {question}\n\n{candidates}\n\nArgument:\n{argument}\n\n"
        f"Which candidate is correct? Reply with {' or '.join(labels)}."
    )}]
