"""DPO (Phase C) from the Phase B adapter on TRL's DPOTrainer, with a beta schedule by epoch, calibrated and
robust variants. TRL provides the data pipeline and the log-probs; the loss and the choice of reference are ours.

The reference pi_ref is the policy DPO starts from (`reference: start`, the DPO paper's pi_SFT): TRL keeps a frozen
copy of the Phase B adapter, named "ref", next to the trained one on the same base weights (adapter-sized, no second
model), so every log-ratio r starts at 0, which Cal-DPO's targets +-1/(2 beta) presuppose. `reference: base` scores
the reference with the adapters disabled (the base model) instead. Both the per-step reference pass and the one TRL
runs up front when `precompute_ref` is set (in DPOTrainer.__init__) go through `_reference_logps`, so they agree.

With r = log pi_theta(y|x) - log pi_ref(y|x) for the chosen (w) and rejected (l) answers of pair i, Delta = r_w - r_l,
n pairs in the micro-batch, t = 1/(2 beta) and mean_j over the micro-batch:

    none        l_i = -log sigmoid(beta * Delta_i)                                         (DPO)
    batch_mean  l_i = -log sigmoid(beta * (Delta_i - mean_j Delta_j))                      (ours; mean detached)
    cal_dpo     l_i = -log sigmoid(Delta_i) + 1/2 [mean_j (r_w,j - t)^2 + mean_j (r_l,j + t)^2]     (Cal-DPO)

cal_dpo is the official code, tengxiao1/Cal-DPO scripts/dpo_trainer.py L1211-1216 (commit 646a754): F.mse_loss
reduces by the mean, so the calibration is one batch-level term added to every pair, with the code's weight 0.5.
Its batch mean (the loss with robust none) equals mean_i of the per-pair -log sigmoid(Delta_i) + 1/2 [(r_w,i - t)^2
+ (r_l,i + t)^2]; under drop_top pairs are ranked by their DPO term and the calibration still covers every pair.
beta enters cal_dpo only through the targets +-t (the DPO term has none, as in the official code): at beta 0.1 the
log-ratios are pulled to +-5 nats, so the loss can fall towards 0 as the pairs are learned.

and over the micro-batch:

    none        L = mean_i l_i
    drop_top    L = mean of the k = max(int((1 - drop_fraction) * n), 1) smallest l_i: the n - k highest-loss pairs (the
                    likeliest mislabelled; drop_fraction * n rounded up) are dropped, at least one of n >= 2, none of 1
                    (warned once). Co-teaching's small-loss selection for one network (Han et al. 2018,
                    bhanML/Co-teaching loss.py L9-11, L17-18, L23, commit 03f0c45): the network keeps its own
                    small-loss pairs, where Co-teaching updates each of its two networks on its peer's (L26-27); and
                    L29 divides the already averaged loss by num_remember once more, which this mean does not.
    dr_dpo      L = -beta' * log mean_i exp(-l_i / beta')                                  (Dr-DPO; beta' = dr_beta)

dr_dpo is junkangwu/Dr_DPO trainers.py L269-270 (commit b980ad0), written as a logsumexp so that it cannot overflow.

batch_mean (ours, a batch-centred reading of the recipe's "calibration") is not the default: the centred gaps sum to
zero and -log sigmoid is convex, so by Jensen mean_i l_i >= -log sigmoid(beta * mean_i (Delta_i - mean_j Delta_j))
= log 2, with equality only when all gaps are equal. Its batch loss starts at log 2 and can never fall below it: it
never saturates, and rises as the gaps spread, however well the pairs are separated.

Held-out (train(heldout_pairs=...), the stage's test pairs): after training, TRL's `rewards/accuracies` on pairs
it never trained on, share of beta * Delta > 0 at the schedule's last beta, with a Wilson interval, and the raw
preference log pi(y_w|x) > log pi(y_l|x) of the trained policy against the starting one (paired, exact McNemar).
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from cotlab.config import ConfigError
from cotlab.distributed import is_main_process
from cotlab.evaluation.stats import mcnemar_exact, wilson_interval


@dataclass
class DPOPhase:
    """What applies during `epochs` consecutive epochs of the DPO schedule."""

    epochs: int = 1
    beta: float = 0.1  # DPO's beta (Rafailov et al. 2023, eq. 7): the KL penalty's inverse temperature
    # cal_dpo: Cal-DPO (the official code's loss). batch_mean (ours, the recipe's "calibration" read as centring) is
    # not the default: its batch loss is >= log 2 by Jensen (centred gaps sum to 0), so it never saturates.
    calibration: Literal["none", "batch_mean", "cal_dpo"] = "none"
    robust: Literal["none", "drop_top", "dr_dpo"] = "none"


# The source recipe: epoch 1 plain DPO at beta 0.05; epochs 2-3 beta 0.1 calibrated; epoch 4 adds the robust filter.
# The calibration is Cal-DPO's, whose loss can fall; batch_mean's (ours) cannot fall below log 2 (module docstring).
DEFAULT_DPO_SCHEDULE = (DPOPhase(1, 0.05), DPOPhase(2, 0.1, "cal_dpo"), DPOPhase(1, 0.1, "cal_dpo", "drop_top"))


@dataclass
class SelfGuidedRound:
    start: str  # the model this round drafts with and continues: dpo, or an earlier round's name


@dataclass
class DPOConfig:
    """The `dpo` section: Phase C (dpo@<task>), its schedule and variants, and the self-guided rounds that repeat it.
    Not TRL's DPOConfig, which train() builds from this one."""

    tasks: list[str] = field(default_factory=lambda: ["hidden_fact"])  # Phase C and its validations run on these
    schedule: list[DPOPhase] = field(default_factory=lambda: list(DEFAULT_DPO_SCHEDULE))
    reference: Literal["start", "base"] = "start"  # start: the Phase B policy (frozen adapter copy); base: adapters off
    drop_fraction: float = 0.15  # drop_top: share of the highest-loss pairs dropped per micro-batch
    dr_beta: float = 1.0  # Dr-DPO's beta' (Wu et al. 2024): small = close to drop-the-worst, large = plain DPO
    precompute_ref: bool = False  # one reference pass over the data up front instead of one per step
    lr: float = 5.0e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    rounds: dict[str, SelfGuidedRound] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return sum(phase.epochs for phase in self.schedule)

    def check(self, params) -> None:
        for name in self.tasks:
            if name not in params.tasks:
                raise ConfigError(f"tasks: {name!r} is not in tasks {params.tasks} (Phase C trains on its filtered data)")
        for name, round_ in self.rounds.items():
            if name in ("dpo", *params.tasks) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ConfigError(f"rounds.{name}: a round needs a new lower-case name (letters, digits, _)")
            earlier = ["dpo", *list(self.rounds)[: list(self.rounds).index(name)]]
            if round_.start not in earlier:
                raise ConfigError(f"rounds.{name}.start: {round_.start!r} is not dpo or an earlier round ({earlier})")


def phase_at(schedule: list[DPOPhase], epoch: float) -> DPOPhase:
    """The phase of 0-based epoch floor(epoch); past the end of the schedule its last phase continues."""
    index = int(math.floor(epoch + 1e-9))
    for phase in schedule:
        if index < phase.epochs:
            return phase
        index -= phase.epochs
    return schedule[-1]


def cal_dpo_calibration(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor,
                        beta: float) -> torch.Tensor:
    """Cal-DPO's calibration term, 1/2 [mean_j (r_w,j - t)^2 + mean_j (r_l,j + t)^2] with t = 1 / (2 beta): one
    batch-level value (the official code's F.mse_loss reduces by the mean)."""
    target = 1 / (2 * beta)
    return 0.5 * (((chosen_logratios - target) ** 2).mean() + ((rejected_logratios + target) ** 2).mean())


def pair_losses(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float,
                calibration: str) -> torch.Tensor:
    delta = chosen_logratios - rejected_logratios
    match calibration:
        case "none":
            return -F.logsigmoid(beta * delta)
        case "batch_mean":
            return -F.logsigmoid(beta * (delta - delta.mean().detach()))
        case "cal_dpo":
            return -F.logsigmoid(delta) + cal_dpo_calibration(chosen_logratios, rejected_logratios, beta)
    raise ValueError(f"dpo calibration {calibration!r} is not one of none, batch_mean, cal_dpo")


_warned_too_small = False


def _warn_too_small(n: int, drop_fraction: float) -> None:
    global _warned_too_small
    if not _warned_too_small:
        _warned_too_small = True
        warnings.warn(f"dpo robust drop_top keeps every pair of a micro-batch of {n} pair{'s' * (n != 1)} "
                      f"(drop_fraction {drop_fraction}): nothing to drop; warned once")


def aggregate(losses: torch.Tensor, robust: str, drop_fraction: float = 0.15,
              dr_beta: float = 1.0) -> tuple[torch.Tensor, int]:
    """(batch loss, number of pairs dropped)."""
    match robust:
        case "none":
            return losses.mean(), 0
        case "drop_top":  # keep the int((1 - fraction) * n) smallest losses, as Co-teaching does, and at least one
            n_keep = max(int((1 - drop_fraction) * losses.numel()), 1)
            if n_keep == losses.numel() and drop_fraction > 0:
                _warn_too_small(losses.numel(), drop_fraction)
            return torch.sort(losses).values[:n_keep].mean(), losses.numel() - n_keep
        case "dr_dpo":
            n = torch.tensor(float(losses.numel()), dtype=losses.dtype, device=losses.device)
            return -dr_beta * (torch.logsumexp(-losses / dr_beta, dim=0) - torch.log(n)), 0
    raise ValueError(f"dpo robust {robust!r} is not one of none, drop_top, dr_dpo")


def scheduled_trainer(schedule: list[DPOPhase], drop_fraction: float = 0.15, dr_beta: float = 1.0,
                      reference: str = "start"):
    """DPOTrainer whose loss follows `schedule` by epoch, against `reference` (start: the frozen "ref" copy of the
    starting adapter; base: the adapters disabled); beta, calibration and drops are logged each step."""
    from accelerate.utils import is_peft_model
    from trl import DPOTrainer
    from trl.trainer.utils import use_adapter

    if reference not in ("start", "base"):
        raise ValueError(f"dpo reference {reference!r} is not one of start, base")

    class ScheduledDPOTrainer(DPOTrainer):
        def _sequence_logps(self, model, inputs):
            model_kwargs = {k: v for k, v in inputs.items()
                            if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}}
            completion_mask = inputs["completion_mask"]
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            seq_len = completion_mask.size(1) - 1
            if inputs["input_ids"].is_cuda:  # TRL's chunked LM head saves the full-vocabulary logits' memory
                outputs = model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)
                per_token = outputs.log_probs[:, -seq_len:]
            else:  # its CPU kernel is ~10x slower than plain log-softmax, and CPU memory is not the limit
                # Logits only from the position before the batch's earliest completion token: the prompts need
                # no LM head (most of the tokens; the head over a 49k vocabulary dominates a small model's cost).
                first = int(completion_mask.float().argmax(dim=1).min())
                keep = completion_mask.size(1) - max(first - 1, 0)
                logits = model(**model_kwargs, use_cache=False, logits_to_keep=keep).logits[:, :-1].float()
                targets = labels[:, -(keep - 1):]
                picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
                per_token = (picked - torch.logsumexp(logits, dim=-1)).masked_fill(targets == -100, 0.0)
            return per_token.sum(dim=1).chunk(2, dim=0)  # the batch is [chosen..., rejected...]

        @torch.no_grad()
        def _reference_logps(self, model, inputs):
            """pi_ref's log-probs, per step or (from compute_ref_log_probs) in TRL's precompute pass in __init__."""
            unwrapped = self.accelerator.unwrap_model(self.model)
            if self.ref_model is not None or not is_peft_model(unwrapped):
                return self._sequence_logps(self.ref_model or model, inputs)
            # TRL adds the "ref" adapter in __init__, before it precomputes: only this choice makes `base` the base.
            adapter = "ref" if reference == "start" and "ref" in unwrapped.peft_config else None
            with use_adapter(unwrapped, adapter_name=adapter):
                return self._sequence_logps(model, inputs)

        @torch.no_grad()
        def _heldout_logps(self, model, inputs) -> dict[str, torch.Tensor]:
            """Per pair: the policy's, the reference's and the starting policy's (the frozen "ref" copy, when
            there is one) log-probs of the chosen and rejected answers."""
            out = dict(zip(("policy_chosen", "policy_rejected"), self._sequence_logps(model, inputs)))
            out.update(zip(("reference_chosen", "reference_rejected"), self._reference_logps(model, inputs)))
            unwrapped = self.accelerator.unwrap_model(self.model)
            if self.ref_model is None and is_peft_model(unwrapped) and "ref" in unwrapped.peft_config:
                if reference == "start":  # the reference is the starting policy: no third pass
                    start = out["reference_chosen"], out["reference_rejected"]
                else:
                    with use_adapter(unwrapped, adapter_name="ref"):
                        start = self._sequence_logps(model, inputs)
                out.update(zip(("start_chosen", "start_rejected"), start))
            return out

        def compute_ref_log_probs(self, model, inputs):
            with self.accelerator.autocast():
                return self._reference_logps(model, inputs)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            # TRL caches the pass by data and weights, the same for either reference: key it by the reference too.
            model_hash = self._precompute_model_hash
            self._precompute_model_hash = f"{model_hash}:{reference}"
            try:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            finally:
                self._precompute_model_hash = model_hash

        def _compute_loss(self, model, inputs, return_outputs):
            mode = "train" if self.model.training else "eval"
            phase = phase_at(schedule, self.state.epoch or 0.0)
            chosen_logps, rejected_logps = self._sequence_logps(model, inputs)
            if self.precompute_ref_logps:
                ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                ref_chosen, ref_rejected = self._reference_logps(model, inputs)
            chosen_logratios, rejected_logratios = chosen_logps - ref_chosen, rejected_logps - ref_rejected
            losses = pair_losses(chosen_logratios, rejected_logratios, phase.beta, phase.calibration)
            loss, n_dropped = aggregate(losses, phase.robust, drop_fraction, dr_beta)
            margins = (phase.beta * (chosen_logratios - rejected_logratios)).detach()
            self._metrics[mode]["beta"].append(phase.beta)
            self._metrics[mode]["pairs_dropped"].append(float(n_dropped))
            self._metrics[mode]["rewards/margins"].append(margins.mean().item())
            self._metrics[mode]["rewards/accuracies"].append((margins > 0).float().mean().item())
            # Cal-DPO's loss is its DPO term plus a calibration term of ~1/(2 beta)^2 at the start: logged apart, so
            # the curve shows whether the preference term falls (the calibration is the same for every pair)
            self._metrics[mode]["calibration_term"].append(
                cal_dpo_calibration(chosen_logratios, rejected_logratios, phase.beta).item()
                if phase.calibration == "cal_dpo" else 0.0)
            return (loss, None) if return_outputs else loss

    return ScheduledDPOTrainer


def _accuracy(name: str, wins: torch.Tensor, confidence: float) -> dict[str, float]:
    low, high = wilson_interval(int(wins.sum()), wins.numel(), confidence)
    return {name: int(wins.sum()) / wins.numel(), f"{name}_ci_low": low, f"{name}_ci_high": high}


def preference_metrics(logps: dict[str, torch.Tensor], beta: float, made: Sequence[str] = (),
                       confidence: float = 0.95) -> dict[str, float | int]:
    """Held-out preference metrics from per-pair log-probs (the keys of _heldout_logps): preference_accuracy is
    TRL's rewards/accuracies, the share of pairs with implicit reward margin beta * [(log pi - log pi_ref)(y_w) -
    (log pi - log pi_ref)(y_l)] > 0, with a Wilson interval; mean_margin, chosen_reward, rejected_reward are TRL's
    rewards/margins, /chosen, /rejected; *_logprob_accuracy: the share with log pi(y_w|x) > log pi(y_l|x), for the
    trained policy and (when given) the starting one, paired by an exact McNemar test. `made`: per pair, how its
    rejected side was made (data.pairs), for a breakdown: by_made.<kind>.* holds n_pairs, preference_accuracy,
    mean_margin, policy_logprob_accuracy and, with the start, start_logprob_accuracy and logprob_accuracy_mcnemar_p
    (the start's implicit reward is 0 under reference start: its preference is the raw log-prob one)."""
    chosen_rewards = beta * (logps["policy_chosen"].double() - logps["reference_chosen"].double())
    rejected_rewards = beta * (logps["policy_rejected"].double() - logps["reference_rejected"].double())
    margins = chosen_rewards - rejected_rewards
    wins = margins > 0
    metrics = {"n_pairs": margins.numel(), "beta": beta, **_accuracy("preference_accuracy", wins, confidence),
               "mean_margin": float(margins.mean()), "chosen_reward": float(chosen_rewards.mean()),
               "rejected_reward": float(rejected_rewards.mean())}
    policy_wins = logps["policy_chosen"] > logps["policy_rejected"]
    metrics.update(_accuracy("policy_logprob_accuracy", policy_wins, confidence))
    if "start_chosen" in logps:
        start_wins = logps["start_chosen"] > logps["start_rejected"]
        metrics.update(_accuracy("start_logprob_accuracy", start_wins, confidence))
        test = mcnemar_exact(policy_wins.tolist(), start_wins.tolist())
        metrics.update({"logprob_accuracy_gain": metrics["policy_logprob_accuracy"] - metrics["start_logprob_accuracy"],
                        "logprob_accuracy_mcnemar_p": test["p_value"], "logprob_pairs_gained": test["b"],
                        "logprob_pairs_lost": test["c"]})
    for how in sorted(set(made)):  # per pair kind, the trained policy next to its start (raw log-prob preference)
        mask = torch.tensor([m == how for m in made])
        n = int(mask.sum())
        metrics.update({f"by_made.{how}.n_pairs": n, f"by_made.{how}.preference_accuracy": int(wins[mask].sum()) / n,
                        f"by_made.{how}.mean_margin": float(margins[mask].mean()),
                        f"by_made.{how}.policy_logprob_accuracy": int(policy_wins[mask].sum()) / n})
        if "start_chosen" in logps:
            test = mcnemar_exact(policy_wins[mask].tolist(), start_wins[mask].tolist())
            metrics.update({f"by_made.{how}.start_logprob_accuracy": int(start_wins[mask].sum()) / n,
                            f"by_made.{how}.logprob_accuracy_mcnemar_p": test["p_value"]})
    return metrics


def heldout_metrics(trainer, model, pairs: Sequence[dict], beta: float, batch_size: int) -> dict[str, float | int]:
    """preference_metrics on `pairs` (prompt/chosen/rejected text, as the training pairs), tokenized, truncated and
    scored as in training by `trainer` (a scheduled_trainer, its "ref" adapter still in place), without gradients.
    Pairs whose prompt alone fills max_length are left out (n_dropped_too_long), as TRL leaves them out of training."""
    from datasets import Dataset
    from torch.utils.data import DataLoader

    started = time.perf_counter()
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"], "row": i}
            for i, p in enumerate(pairs)]
    dataset = trainer._prepare_dataset(Dataset.from_list(rows), trainer.processing_class, trainer.args, "heldout")
    lengths = [len(p) + max(len(c), len(r))
               for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
    dataset = dataset.select(sorted(range(len(lengths)), key=lengths.__getitem__))  # batches of like lengths: less padding
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        with torch.inference_mode(), trainer.accelerator.autocast():
            for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=trainer.data_collator, shuffle=False):
                for key, value in trainer._heldout_logps(model, trainer._prepare_inputs(batch)).items():
                    parts.setdefault(key, []).append(value.float().cpu())
    finally:
        model.train(was_training)
    if not parts:
        return {"n_pairs": 0, "n_dropped_too_long": len(pairs)}
    made = [pairs[i].get("made", "") for i in dataset["row"]]
    metrics = preference_metrics({k: torch.cat(v) for k, v in parts.items()}, beta, made if all(made) else ())
    return {**metrics, "n_dropped_too_long": len(pairs) - len(dataset),
            "runtime_s": round(time.perf_counter() - started, 2)}


def train(model, tokenizer, pairs: list[dict], config: DPOConfig, *, max_length: int, seed: int,
          report_to: Sequence[str] = (), heldout_pairs: Sequence[dict] = ()):
    """DPO on `pairs` (prompt/chosen/rejected text) for the schedule's epochs. Returns (model, metrics, curve);
    with `heldout_pairs`, the metrics hold heldout_metrics on them under `heldout.`, at the schedule's last beta."""
    import tempfile

    import trl
    from datasets import Dataset

    from cotlab.errors import TrainingDivergedError
    from cotlab.methods.sft import LossCurve
    from cotlab.models import has_bf16_weights, on_cuda
    from cotlab.progress import progress_disabled

    dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in pairs])
    guard = LossCurve()
    with tempfile.TemporaryDirectory(prefix="cotlab-dpo-") as scratch:
        args = trl.DPOConfig(
            output_dir=scratch, num_train_epochs=config.epochs, learning_rate=config.lr,
            per_device_train_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
            warmup_steps=config.warmup_ratio, max_grad_norm=config.max_grad_norm, max_length=max_length,
            lr_scheduler_type="constant_with_warmup",  # the schedule's beta changes; the step size should not
            logging_steps=config.logging_steps, logging_first_step=True, logging_nan_inf_filter=False,
            precompute_ref_log_probs=config.precompute_ref, save_strategy="no", report_to=list(report_to),
            seed=seed, data_seed=seed, gradient_checkpointing=False, disable_tqdm=progress_disabled(),
            use_cpu=not on_cuda(model), dataloader_num_workers=0,
            bf16=on_cuda(model) and has_bf16_weights(model),  # as SFT: TRL defaults to True, which autocasts on CPU too
        )
        trainer_class = scheduled_trainer(config.schedule, config.drop_fraction, config.dr_beta, config.reference)
        trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                callbacks=[guard])
        result = trainer.train()
        heldout = heldout_metrics(trainer, model, heldout_pairs, phase_at(config.schedule, config.epochs - 1).beta,
                                  config.batch_size) if heldout_pairs else {}
    if "ref" in model.peft_config:
        model.delete_adapter("ref")  # the checkpoint holds the trained adapter only
    curve = [{"step": r["step"], "epoch": round(r["epoch"], 4), "loss": r["loss"], "beta": r["beta"],
              "reward_margin": r.get("rewards/margins"), "reward_accuracy": r.get("rewards/accuracies"),
              "pairs_dropped": r.get("pairs_dropped"), "calibration_term": r.get("calibration_term"),
              "preference_term": r["loss"] - r["calibration_term"] if "calibration_term" in r else None}
             for r in trainer.state.log_history if "loss" in r and "beta" in r]
    metrics = {"n_pairs": len(pairs), "train_loss": float(result.training_loss), "train_steps": int(result.global_step),
               "train_runtime_s": float(result.metrics.get("train_runtime", 0.0)),
               "final_reward_accuracy": curve[-1]["reward_accuracy"] if curve else float("nan"),
               **{f"heldout.{k}": v for k, v in heldout.items()}}
    if not math.isfinite(metrics["train_loss"]):
        raise TrainingDivergedError(f"DPO loss is {metrics['train_loss']}; no checkpoint was written")
    return model, metrics, curve


def train_checkpoint(params, task: str, base_dir: str, start_dir: str, pairs: list[dict], out_dir: str,
                     heldout_pairs: Sequence[dict] = ()) -> tuple[dict, list[dict]]:
    """DPO from the adapter in `start_dir` (on the base in `base_dir`) on `pairs`, with params `dpo`; writes the
    checkpoint to `out_dir`; returns (metrics, curve), with heldout.* metrics on `heldout_pairs` when given.
    Shared by dpo@<task> and the self-guided rounds."""
    from dataclasses import asdict

    from cotlab.methods.sft import TrainConfig
    from cotlab.models import load_for_training, resolve_device, save_adapter

    config = params.section("dpo", DPOConfig)
    run = {"max_length": params.sizes.max_length, "seed": params.seed}
    lora = params.section("cot_distill", TrainConfig).lora  # the Phase B adapter DPO continues
    model, tokenizer, _ = load_for_training(base_dir, resolve_device(params.model.device), "none", asdict(lora),
                                            start_dir)
    model, metrics, curve = train(model, tokenizer, pairs, config, **run,
                                  heldout_pairs=heldout_pairs)
    if is_main_process():  # under accelerate every process trains; the main one writes
        save_adapter(model, tokenizer, out_dir, base_dir, "dpo", "cot", "none",
                     params={**asdict(config), **run, "task": task}, extra={"task": task, "init_from": start_dir},
                     with_draft=True)
    return metrics, curve
