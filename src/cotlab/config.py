"""Typed, validated params.

params.yaml is parsed as YAML 1.2 (ruamel): `dvc exp run -S lr=5e-5` writes `5e-05`, which YAML 1.1 parsers
(PyYAML) read as a string. Every section is a dataclass; an unknown key, a wrong type or an out-of-range value
raises ConfigError naming the dotted key and the bad value.
"""

from __future__ import annotations

import dataclasses
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
class TaskSize:
    n_train: int | None = None  # None = all
    n_test: int | None = None


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
    # per-task n_train / n_test for this scale, where a check needs more rows than the others to show its effect
    task_sizes: dict[str, TaskSize] = field(default_factory=dict)


@dataclass
class ModelConfig:
    name: str = "auto"  # auto = the scale's model
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # The tiny random init's seed. Not the run's `seed`: a seed sweep trains every seed from one base, as it would
    # from pretrained weights, and the base is prepared (at demo scale, converted from GGUF) once, not per seed.
    init_seed: int = 0


@dataclass
class ComputeConfig:
    """How training stages run: one process, or `num_processes` under `accelerate launch` (DDP by default; FSDP,
    DeepSpeed or several machines through an accelerate config file). On CPU the processes use the gloo backend."""

    num_processes: int = 1  # > 1: every training stage runs under `accelerate launch` (one process per GPU)
    accelerate_config: str | None = None  # a file written by `accelerate config --config_file F`; None = plain DDP
    main_process_port: int | None = None  # None = a free port per stage run (queued experiments never collide)


@dataclass
class GenerationConfig:
    """The one generation backend of drafts, evaluation and Markovian sampling."""

    backend: Literal["auto", "transformers", "vllm"] = "auto"  # auto: vLLM when installed and the model is on CUDA
    gpu_memory_utilization: float = 0.3  # vllm: the share of GPU memory vLLM may take (a trained model shares it)


@dataclass
class LoraParams:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class EvaluateConfig:
    few_shot: int = 2
    batch_size: int | None = None  # None = the scale's eval_batch_size
    stop_at_answer: bool = True  # stop a row after its "The answer is: X" line (false: run to eos or the cap)
    # Budget forcing (s1, Muennighoff et al. 2025): a row cut at the cap with no answer line gets "\nThe answer is:"
    # appended and up to the scale's max_new_tokens_direct more tokens, its answer read from those; false: scored as cut.
    force_answer: bool = True


# The sections a method or a job owns: each is parsed by its stage with the config class beside its code
# (Params.section), so a stage imports, and DVC makes it depend on, only the code whose knobs it reads.
SECTIONS = ("sft", "cot_distill", "cot_sft", "drafts", "teacher", "filter", "candidates", "dpo", "attribution",
            "judge", "codi", "markovian", "transplant", "compare")


@dataclass
class Params:
    """The shared sections, typed; the others raw in `sections` until a stage asks for one with its class."""

    lr: float
    seed: int
    scale: Literal["tiny", "demo", "full"]
    scales: dict[str, ScaleConfig]
    tasks: list[str]
    task_specs: dict[str, dict[str, Any]]
    model: ModelConfig = field(default_factory=ModelConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> ScaleConfig:
        return self.scales[self.scale]

    def split_sizes(self, task: str) -> TaskSize:
        """(n_train, n_test) of a task at this scale: its `task_sizes` row where it has one, else the scale's."""
        return self.sizes.task_sizes.get(task, TaskSize(self.sizes.n_train, self.sizes.n_test))

    def section(self, name: str, cls: type):
        """The `name` section built as `cls` (a dataclass whose defaults equal params.yaml's values): unknown keys,
        wrong types and out-of-range values raise ConfigError naming `name.key`; so do the class's own checks, in
        `__post_init__` (the section alone) and in an optional `check(params)` (the section against the shared
        ones, e.g. its tasks against task_specs)."""
        if name not in SECTIONS:
            raise ConfigError(f"{name}: not a params section (sections: {', '.join(SECTIONS)})")
        config = build(cls, self.sections.get(name), name)
        if hasattr(config, "check"):
            try:
                config.check(self)
            except ConfigError as e:
                raise ConfigError(f"{name}.{e}") from None
        return config

    def resolve(self, section):
        """The section with a null `lr` set to the top-level lr and a null `epochs` to the scale's epochs."""
        values = {}
        if getattr(section, "lr", 0) is None:
            values["lr"] = self.lr
        if getattr(section, "epochs", 0) is None:
            values["epochs"] = self.sizes.epochs
        return dataclasses.replace(section, **values)

    def tasks_of(self, system: str) -> list[str]:
        """The tasks a system with tasks of its own runs on (dvc.yaml's foreach over `<system>.tasks`), checked by
        parse_params: stages that only need the list, such as compare, need not import the system's code."""
        return list(self.sections[system]["tasks"])

    def model_name(self, system: str | None = None) -> str:
        return self.model_source(system)[0]

    def model_source(self, system: str | None = None) -> tuple[str, str]:
        """(the model a base folder is prepared from, the param that names it). The shared base (system None, and
        a system whose `<system>.model` is null): `model.name`, whose auto is the scale's model. A system of SYSTEMS
        with a model of its own: `<system>.model` (prepare_system_model@<system> writes it to models/base_<system>)."""
        if system is not None:
            own = _system_model(self.sections, system)
            if own is not None:
                return own, f"{system}.model"
        return (self.sizes.model if self.model.name == "auto" else self.model.name), "model.name"

    def as_dict(self) -> dict[str, Any]:
        """Every param as params.yaml nests them (for MLflow)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sections"}
        return {**shared, **self.sections}


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
    "num_processes": (lambda v: v >= 1, ">= 1"),
    "main_process_port": (lambda v: v is None or 1024 <= v < 65536, "a port in [1024, 65536) or null"),
    "gpu_memory_utilization": (lambda v: 0 < v <= 1, "in (0, 1]"),
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
        return build(tp, value, key)
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


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """`data` (a mapping from YAML or a manifest) as the dataclass `cls`, every value checked; errors name
    `prefix.key`."""
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
    try:
        return cls(**kwargs)
    except ConfigError as e:  # __post_init__ names the key within its section
        raise ConfigError(f"{prefix}.{e}" if prefix else str(e)) from None


# Variant flags belong to the stage's command (dvc.yaml's matrix over each variant: markovian@markovian-<task> and
# markovian@non_markovian-<task>, transplant@{transplant,transplant_masked,no_transplant}-<task>): in params.yaml a
# stage would overwrite them, so there they are an error.
STAGE_ARGUMENTS = {"markovian": ("markovian",), "transplant": ("masked", "transplant")}


# The systems that run on tasks of their own: dvc.yaml's foreach lists, so params.yaml must give them. Each may also
# take a base model of its own (`<system>.model`; null = the shared one), in models/base_<system>.
SYSTEMS = ("codi", "markovian", "transplant")


def _system_tasks(sections: dict[str, Any], system: str) -> list[str]:
    value = (sections.get(system) or {}).get("tasks")
    if value is None:
        raise ConfigError(f"{system}.tasks: required param is missing (dvc.yaml's {system} stages run on it)")
    return _coerce(value, list[str], f"{system}.tasks")


def _system_model(sections: dict[str, Any], system: str) -> str | None:
    """`<system>.model`: null (the shared base) or the system's own model (embedded | tiny-random | a Hugging Face id
    | a local path)."""
    if system not in SYSTEMS:
        raise ConfigError(f"{system}: not a system with a base model of its own ({', '.join(SYSTEMS)})")
    value = _coerce((sections.get(system) or {}).get("model"), str | None, f"{system}.model")
    if value in ("auto", ""):
        raise ConfigError(f"{system}.model: {value!r}; null is the shared base (model.name, whose auto is the scale's "
                          "model), or name the system's own: embedded | tiny-random | a Hugging Face id | a local path")
    return value


def parse_params(data: dict[str, Any]) -> Params:
    """The shared sections typed and checked; the others kept raw for Params.section. A stage catches a bad key in
    its own sections when it starts; `python -m cotlab.sections` (run first by `make repro`) checks them all."""
    if not isinstance(data, dict):
        raise ConfigError(f"params: expected a mapping, got {data!r}")
    for section, keys in STAGE_ARGUMENTS.items():
        for key in keys:
            if isinstance(data.get(section), dict) and key in data[section]:
                raise ConfigError(f"{section}.{key}: set by the stage's variant argument (see dvc.yaml's {section} "
                                  "stages), not by params; remove it from params.yaml")
    if "sections" in data:
        raise ConfigError("sections: unknown param")
    sections = {name: data[name] for name in SECTIONS if name in data}
    for name, value in sections.items():
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
    params = build(Params, {k: v for k, v in data.items() if k not in SECTIONS})
    params.sections = sections
    for key, names in [("tasks", params.tasks)] + [(f"{s}.tasks", _system_tasks(sections, s)) for s in SYSTEMS]:
        for name in names:
            if name not in params.task_specs:
                raise ConfigError(f"{key}: {name!r} has no entry under task_specs (defined: {sorted(params.task_specs)})")
    for system in SYSTEMS:
        _system_model(sections, system)
    for scale, config in params.scales.items():
        for name in config.task_sizes:
            if name not in params.task_specs:
                raise ConfigError(f"scales.{scale}.task_sizes: {name!r} has no entry under task_specs")
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
