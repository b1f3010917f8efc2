"""Typed, validated params.

params.yaml is parsed as YAML 1.2 (ruamel): `dvc exp run -S lr=5e-5` writes `5e-05`, which YAML 1.1 parsers
(PyYAML) read as a string. Every section is a dataclass; an unknown key, a wrong type or an out-of-range value
raises ConfigError naming the dotted key and the bad value.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError


class ConfigError(ValueError):
    """A param is unknown, missing or invalid; the message names the dotted key and the value."""


@dataclass
class ScaleConfig:
    model: str  # "tiny-random", "embedded", a Hugging Face id or a local path
    n_train: int | None  # examples per split; None = all
    n_test: int | None
    epochs: float
    max_length: int  # training sequences longer than this (prompt + completion tokens) are dropped
    max_new_tokens_direct: int
    max_new_tokens_cot: int
    eval_batch_size: int
    n_pairs: int | None = None  # DPO pairs used (None = all): the schedule's epochs stay whole at every scale
    n_attribution: int = 24  # test questions attributed before and after DPO


@dataclass
class ModelConfig:
    name: str = "auto"  # auto = the scale's model
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


@dataclass
class LoraParams:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class TrainConfig:
    lr: float | None = None  # None = the top-level lr
    epochs: float | None = None  # None = the scale's epochs
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    padding_free: bool = True
    gradient_checkpointing: bool = False  # TRL turns it on by default; it recomputes activations, costing time
    logging_steps: int = 2
    quantization: Literal["none", "4bit"] = "none"
    lora: LoraParams = field(default_factory=LoraParams)
    init_from: Literal["base", "sft"] = "base"
    with_draft: bool = False  # prompt = question + "Student draft: <draft>" (Phase B)


@dataclass
class EvaluateConfig:
    few_shot: int = 2
    batch_size: int | None = None  # None = the scale's eval_batch_size
    stop_at_answer: bool = True  # stop a row after its "The answer is: X" line (false: run to eos or the cap)


@dataclass
class CompareConfig:
    reference: str = "base_zeroshot"
    # ablation -> the model it is paired against (same test questions)
    ablations: dict[str, str] = field(default_factory=lambda: {
        "dpo_no_draft": "dpo", "dpo_shuffled_draft": "dpo", "dpo_no_cot": "dpo"})
    # "model@task vs model@task": paired on the same question ids, across tasks too (e.g. the same questions with
    # and without the universe in the prompt)
    pairs: list[str] = field(default_factory=lambda: [
        "codi@personal_relations vs codi@personal_relations_no_universe",
        "codi@personal_relations vs cot_sft@personal_relations",
        "codi@personal_relations_no_universe vs cot_sft@personal_relations_no_universe",
        "codi@personal_relations vs base_fewshot_cot@personal_relations",
        "codi@gsm8k vs cot_sft@gsm8k",
        "codi@gsm8k vs base_fewshot_cot@gsm8k",
        "markovian@arithmetic vs markovian_base@arithmetic",
        "non_markovian@arithmetic vs non_markovian_base@arithmetic",
        "markovian@arithmetic vs non_markovian@arithmetic",
        "transplant@svamp vs no_transplant@svamp",
        "transplant@svamp vs transplant_masked@svamp",
        "transplant_masked@svamp vs no_transplant@svamp"])
    bootstrap_resamples: int = 2000
    confidence: float = 0.95


@dataclass
class DraftsConfig:
    max_new_tokens: int = 64
    batch_size: int | None = None  # None = the scale's eval_batch_size
    stop_after_questions: bool = True  # stop a draft after its "Questions: ...?" line


@dataclass
class TeacherConfig:
    backend: Literal["oracle", "local", "openai"] = "oracle"
    model: str = "gpt-4o-mini"  # openai: the served model's name; local: a checkpoint folder, HF id or path
    base_url: str | None = None  # None = the client's default (api.openai.com)
    api_key_env: str | None = "OPENAI_API_KEY"  # the NAME of the variable holding the key; null for keyless servers
    concurrency: int = 16
    timeout_s: float = 60.0
    max_retries: int = 4
    temperature: float = 0.0
    max_tokens: int = 512
    local_batch_size: int = 16
    dry_run: bool = False


@dataclass
class FilterConfig:
    require_agreement: bool = True  # drop rows whose teacher answer differs from the ground truth
    dedupe: bool = True
    min_reasoning_words: int = 3
    max_reasoning_words: int = 400
    rebalance: Literal["none", "upsample", "downsample", "weights"] = "upsample"


@dataclass
class CandidatesConfig:  # candidates@<task> runs on transplant.tasks
    argument_correct_rate: float = 0.7  # share of arguments that pick the correct candidate
    corrupt_step: Literal["random", "first", "middle", "last"] = "random"  # which arithmetic step the oracle breaks


@dataclass
class DPOPhase:
    """What applies during `epochs` consecutive epochs of the DPO schedule."""

    epochs: int = 1
    beta: float = 0.1
    calibration: Literal["none", "batch_mean", "cal_dpo"] = "none"
    robust: Literal["none", "drop_top", "dr_dpo"] = "none"


# The source recipe: epoch 1 plain DPO at beta 0.05; epochs 2-3 beta 0.1 calibrated; epoch 4 adds the robust filter.
DEFAULT_DPO_SCHEDULE = (DPOPhase(1, 0.05), DPOPhase(2, 0.1, "batch_mean"), DPOPhase(1, 0.1, "batch_mean", "drop_top"))


@dataclass
class SelfGuidedRound:
    start: str  # the model this round drafts with and continues: dpo, or an earlier round's name


@dataclass
class DPOParams:
    tasks: list[str] = field(default_factory=lambda: ["strategyqa", "syllogism"])  # Phase C and its validations run on these
    schedule: list[DPOPhase] = field(default_factory=lambda: list(DEFAULT_DPO_SCHEDULE))
    reference: Literal["start", "base"] = "start"  # start: the Phase B policy (frozen adapter copy); base: adapters off
    drop_fraction: float = 0.15
    dr_beta: float = 1.0
    precompute_ref: bool = False
    lr: float = 5.0e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    rounds: dict[str, SelfGuidedRound] = field(default_factory=dict)


@dataclass
class AttributionConfig:
    n_steps: int = 16  # integral approximation steps of integrated gradients
    criterion: float = 0.2  # the write-up's bar: share of attribution on draft tokens after DPO


@dataclass
class JudgeConfig(TeacherConfig):
    """The judge's backend (any teacher backend but the oracle) and what it compares."""

    backend: Literal["oracle", "local", "openai"] = "local"
    model: str = "models/base"
    max_tokens: int = 16
    challenger: str = "dpo"  # its clarifying questions against the base student's (the drafts stage)


@dataclass
class CODIParams:
    """CODI (continuous thoughts by self-distillation) and its comparisons, on tasks of their own. Defaults are the
    reference recipe's (docs/codi_reference_notes.md) except where the embedded scale needs otherwise."""

    tasks: list[str] = field(default_factory=lambda: ["personal_relations", "personal_relations_no_universe", "gsm8k"])
    num_latent: int = 6
    inf_latent_iterations: int = 6
    use_prj: bool = True
    prj_dim: int | None = None  # None = the model width (the reference: 2048 for a 1B model, the width for GPT-2)
    prj_dropout: float = 0.0
    prj_no_ln: bool = False
    distill_loss_factor: float = 20.0
    ref_loss_factor: float = 1.0
    distill_loss_type: Literal["smooth_l1", "mse"] = "smooth_l1"
    distill_loss_div_std: bool = True
    lr: float = 8.0e-4
    epochs: float | None = None  # None = the scale's epochs
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
    probe_questions: int = 8  # codi_probe: test questions whose thoughts are decoded
    probe_top_k: int = 5


@dataclass
class CollapseLimits:
    """The Markovian collapse guard: training stops (keeping the last good checkpoint) past any of these."""

    max_ppo_ratio: float = 10.0  # largest per-token ratio pi / pi_sampling in an update
    max_kl: float = 5.0  # mean KL(actor || frozen) per CoT token, nats
    max_repetition: float = 0.75  # share of a step's CoTs dominated by one repeated token or n-gram


@dataclass
class MarkovianConfig:
    """Markovian CoT training (methods/markovian.py). Reference values (Viteri et al.) in the comments where the
    2-core demo needs smaller ones."""

    markovian: bool = True  # false: the reward prompt shows the question (the ablation)
    steps: int = 24
    questions_per_step: int = 1  # the reference: one question per batch, its group is the batch
    group_size: int = 6  # CoTs per question (reference: 12)
    cot_length: int = 32  # tokens, exactly (reference: 150 for arithmetic, 100 for GSM8K, 50 for SVAMP/AQuA/ARC)
    temperature: float = 1.0
    answer_tokens: int = 10  # greedy tokens decoded after " Answer:" at evaluation
    actor_reward_weight: float = 0.0  # > 0: the actor scores the reward, and -w * r (with its gradient) joins L
    baseline: Literal["frozen", "ema"] = "frozen"
    ema_decay: float = 0.9
    use_ppo: bool = False
    ppo_epsilon: float = 0.2
    ppo_epochs: int = 1  # updates per sampled batch when use_ppo
    kl_penalty: float = 0.1
    expert_iteration: float | None = None  # keep CoTs with R > mean + k * std of earlier R (reference GSM8K: 2.2)
    expert_iteration_warmup: int = 8  # steps of R history before the threshold applies (no update before)
    normalize_loss: bool = True  # the policy-gradient term averaged over CoT tokens (false: summed)
    lr: float = 5.0e-4  # reference: 1e-4 (8B); larger steps for a 24-step LoRA run on 135M
    max_grad_norm: float = 1.0
    eval_every: int = 8  # steps between evaluations on the held-out questions (plots/train/<variant>/<task>_eval.csv)
    save_every: int = 8  # steps between checkpoints (checkpoints/<variant>/<task>: a killed run resumes there)
    collapse: CollapseLimits = field(default_factory=CollapseLimits)

    def __post_init__(self):
        if self.use_ppo and self.ppo_epochs < 2:
            # The ratio is taken against the sampling policy, so the first update's PPO gradient is the plain one.
            raise ConfigError(
                f"markovian.use_ppo: true with markovian.ppo_epochs = {self.ppo_epochs} is the plain policy gradient: "
                "the PPO ratio is against the policy that sampled the batch, so it is exactly 1 (nothing is clipped) "
                "on a batch's first update; set markovian.ppo_epochs >= 2, or markovian.use_ppo: false")


@dataclass
class MarkovianParams(MarkovianConfig):
    tasks: list[str] = field(default_factory=lambda: ["arithmetic"])
    n_eval: int = 24  # held-out test questions evaluated during training
    sampler: Literal["auto", "transformers", "vllm"] = "auto"  # auto: vLLM when installed and on CUDA
    lora: LoraParams = field(default_factory=lambda: LoraParams(r=8, alpha=16, dropout=0.0))


@dataclass
class TransplantConfig:
    """Hidden-state transplant verification (methods/transplant.py), on data/candidates/<task>."""

    # "all", or the decoder layers whose outputs are transplanted (0-based). A layer's output reaches later tokens only
    # through the attention of the layers after it: the last layer alone cannot move the verdict.
    layers: Literal["all"] | list[int] = "all"
    detach_pass1: bool = False  # false: gradients flow through the transplanted states into pass 1
    residual_fp64: bool = False  # the residual stream in float64 through the hooked layers (sublayers compute in the model dtype)
    masked: bool = False  # the ablation: every candidate identifier in the argument replaced by "_" (set per stage)
    transplant: bool = True  # false: the control without replacement, same prompts, pass 2 alone (set per stage)
    steps: int = 16
    batch_size: int = 4
    lr: float = 5.0e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 8  # steps between curve points (and at step 0 and the last step)


@dataclass
class TransplantParams(TransplantConfig):
    tasks: list[str] = field(default_factory=lambda: ["svamp"])  # candidates@<task> and the transplant stages run on these
    n_curve: int = 16  # train and test items evaluated at each curve point (seeded); the final evaluation takes all
    lora: LoraParams = field(default_factory=lambda: LoraParams(r=8, alpha=16, dropout=0.0))


@dataclass
class Params:
    lr: float
    seed: int
    scale: Literal["tiny", "demo", "full"]
    scales: dict[str, ScaleConfig]
    tasks: list[str]
    task_specs: dict[str, dict[str, Any]]
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: TrainConfig = field(default_factory=TrainConfig)
    cot_distill: TrainConfig = field(default_factory=TrainConfig)
    drafts: DraftsConfig = field(default_factory=DraftsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    dpo: DPOParams = field(default_factory=DPOParams)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    codi: CODIParams = field(default_factory=CODIParams)
    markovian: MarkovianParams = field(default_factory=MarkovianParams)
    transplant: TransplantParams = field(default_factory=TransplantParams)
    cot_sft: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    @property
    def sizes(self) -> ScaleConfig:
        return self.scales[self.scale]

    def train_config(self, method: str) -> TrainConfig:
        if method not in ("sft", "cot_distill", "cot_sft"):
            raise ConfigError(f"unknown training method {method!r}; expected sft, cot_distill or cot_sft")
        return getattr(self, method)

    def learning_rate(self, method: str) -> float:
        own = self.train_config(method).lr
        return self.lr if own is None else own

    def epochs(self, method: str) -> float:
        own = self.train_config(method).epochs
        return self.sizes.epochs if own is None else own

    def model_name(self) -> str:
        return self.sizes.model if self.model.name == "auto" else self.model.name


# Range checks beyond types: (predicate, description)
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "lr": (lambda v: v is None or 0 < v < 1, "a learning rate in (0, 1)"),
    "epochs": (lambda v: v is None or v > 0, "> 0"),
    "batch_size": (lambda v: v is None or v >= 1, ">= 1"),
    "eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "grad_accum": (lambda v: v >= 1, ">= 1"),
    "n_train": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "n_test": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "max_length": (lambda v: v >= 16, ">= 16"),
    "r": (lambda v: v >= 1, ">= 1"),
    "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "confidence": (lambda v: 0 < v < 1, "in (0, 1)"),
    "few_shot": (lambda v: v >= 0, ">= 0"),
    "logging_steps": (lambda v: v >= 1, ">= 1"),
    "max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "concurrency": (lambda v: v >= 1, ">= 1"),
    "local_batch_size": (lambda v: v >= 1, ">= 1"),
    "timeout_s": (lambda v: v > 0, "> 0"),
    "max_retries": (lambda v: v >= 0, ">= 0"),
    "temperature": (lambda v: 0 <= v <= 2, "in [0, 2]"),
    "max_tokens": (lambda v: v >= 1, ">= 1"),
    "min_reasoning_words": (lambda v: v >= 0, ">= 0"),
    "max_reasoning_words": (lambda v: v >= 1, ">= 1"),
    "argument_correct_rate": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "drop_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "dr_beta": (lambda v: v > 0, "> 0"),
    "beta": (lambda v: v > 0, "> 0"),
    "n_pairs": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "n_attribution": (lambda v: v >= 1, ">= 1"),
    "n_steps": (lambda v: v >= 2, ">= 2"),
    "prj_dim": (lambda v: v is None or v >= 1, ">= 1 or null"),
    "prj_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "distill_loss_factor": (lambda v: v >= 0, ">= 0"),
    "ref_loss_factor": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "max_grad_norm": (lambda v: v > 0, "> 0"),
    "probe_questions": (lambda v: v >= 1, ">= 1"),
    "probe_top_k": (lambda v: v >= 1, ">= 1"),
    "steps": (lambda v: v >= 1, ">= 1"),
    "questions_per_step": (lambda v: v >= 1, ">= 1"),
    "group_size": (lambda v: v >= 1, ">= 1"),
    "cot_length": (lambda v: v >= 1, ">= 1"),
    "answer_tokens": (lambda v: v >= 1, ">= 1"),
    "actor_reward_weight": (lambda v: v >= 0, ">= 0"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "ppo_epsilon": (lambda v: 0 < v < 1, "in (0, 1)"),
    "ppo_epochs": (lambda v: v >= 1, ">= 1"),
    "kl_penalty": (lambda v: v >= 0, ">= 0"),
    "expert_iteration": (lambda v: v is None or v >= 0, ">= 0 or null"),
    "expert_iteration_warmup": (lambda v: v >= 0, ">= 0"),
    "eval_every": (lambda v: v >= 1, ">= 1"),
    "save_every": (lambda v: v >= 1, ">= 1"),
    "n_eval": (lambda v: v >= 1, ">= 1"),
    "max_ppo_ratio": (lambda v: v > 1, "> 1"),
    "max_kl": (lambda v: v > 0, "> 0"),
    "max_repetition": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "n_curve": (lambda v: v >= 1, ">= 1"),
}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, item_tp = typing.get_args(tp)
        return {k: _coerce(v, item_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported param type {tp} for {key}")


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown param (known keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required param is missing")
            continue
        value = _coerce(data[name], hints[name], key)
        check = _RANGES.get(name)
        if check and not isinstance(value, dict) and not check[0](value):
            raise ConfigError(f"{key}: {value!r} is out of range (expected {check[1]})")
        kwargs[name] = value
    return cls(**kwargs)


# Variant flags belong to the stage's command (markovian@ / non_markovian@, transplant@ / transplant_masked@ /
# no_transplant@): in params.yaml a stage would overwrite them, so there they are an error.
STAGE_ARGUMENTS = {"markovian": ("markovian",), "transplant": ("masked", "transplant")}


def parse_params(data: dict[str, Any]) -> Params:
    for section, keys in STAGE_ARGUMENTS.items():
        for key in keys:
            if isinstance(data.get(section), dict) and key in data[section]:
                raise ConfigError(f"{section}.{key}: set by the stage's variant argument (see dvc.yaml's {section} "
                                  "stages), not by params; remove it from params.yaml")
    params = _build(Params, data)
    for name in params.tasks:
        if name not in params.task_specs:
            raise ConfigError(f"tasks: {name!r} has no entry under task_specs (defined: {sorted(params.task_specs)})")
    for section in ("teacher", "judge"):
        env_name = getattr(params, section).api_key_env
        if env_name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env_name):
            # Never echo the value: it may be the key itself, pasted where its variable's name belongs.
            raise ConfigError(f"{section}.api_key_env: must be the NAME of an environment variable (letters, digits, "
                              "_), not a key; export the key in that variable instead")
    if params.filter.min_reasoning_words > params.filter.max_reasoning_words:
        raise ConfigError("filter.min_reasoning_words: larger than filter.max_reasoning_words")
    for name in params.transplant.tasks:
        if name not in params.task_specs:
            raise ConfigError(f"transplant.tasks: {name!r} has no entry under task_specs (defined: {sorted(params.task_specs)})")
    if isinstance(params.transplant.layers, list) and (not params.transplant.layers or min(params.transplant.layers) < 0):
        raise ConfigError(f"transplant.layers: {params.transplant.layers!r} must be 'all' or a non-empty list of layer "
                          "indices >= 0")
    for name in params.dpo.tasks:
        if name not in params.tasks:
            raise ConfigError(f"dpo.tasks: {name!r} is not in tasks {params.tasks} (Phase C trains on its filtered data)")
    for name, round_ in params.dpo.rounds.items():
        if name in ("dpo", *params.tasks) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ConfigError(f"dpo.rounds.{name}: a round needs a new lower-case name (letters, digits, _)")
        earlier = ["dpo", *list(params.dpo.rounds)[: list(params.dpo.rounds).index(name)]]
        if round_.start not in earlier:
            raise ConfigError(f"dpo.rounds.{name}.start: {round_.start!r} is not dpo or an earlier round ({earlier})")
    for i, pair in enumerate(params.compare.pairs):
        if not re.fullmatch(r"[\w.-]+@[\w.-]+ vs [\w.-]+@[\w.-]+", pair):
            raise ConfigError(f"compare.pairs[{i}]: {pair!r} is not 'model@task vs model@task'")
    for name in params.codi.tasks:
        if name not in params.task_specs:
            raise ConfigError(f"codi.tasks: {name!r} has no entry under task_specs (defined: {sorted(params.task_specs)})")
    for key in ("num_latent", "inf_latent_iterations"):
        if getattr(params.codi, key) < 1:
            raise ConfigError(f"codi.{key}: {getattr(params.codi, key)!r} is out of range (expected >= 1)")
    for name in params.markovian.tasks:
        if name not in params.task_specs:
            raise ConfigError(f"markovian.tasks: {name!r} has no entry under task_specs (defined: {sorted(params.task_specs)})")
    if params.markovian.temperature <= 0:
        raise ConfigError(f"markovian.temperature: {params.markovian.temperature!r} must be > 0 (CoTs are sampled)")
    if params.judge.backend == "oracle":
        raise ConfigError("judge.backend: 'oracle' cannot judge; use local or openai")
    for name in ("tiny", "demo", "full"):
        if name not in params.scales:
            raise ConfigError(f"scales.{name}: required scale is missing")
    return params


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        data = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(load_yaml(path))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for MLflow params: {"sft": {"lora": {"r": 16}}} -> {"sft.lora.r": 16}."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}
