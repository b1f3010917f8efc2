"""The source write-ups' own configurations on one GPU, one preset per research system.

A preset is a flat mapping of params.yaml's dotted keys to values, applied as `dvc exp run -S key=value` flags, so
an experiment records exactly what it changed and the rest of params.yaml stays as it is. Each value cites the
table's row; where the source write-up's setting has no cotlab key, or the table gives no value, a comment says so and the
key keeps params.yaml's value. Each system with a model of its own (codi, markovian, transplant) names it in
`<system>.model`, so its base (models/base_<system>) never changes another system's outputs.

    python -m cotlab.presets --list                  the presets, their models and the source write-up's reported results
    python -m cotlab.presets codi                    the preset's -S flags, shell-quoted
    python -m cotlab.presets --targets codi          the DVC targets that run the system (and what they need)
    python -m cotlab.presets --command codi          the whole `dvc exp run` line
    python -m cotlab.presets markovian --task svamp  Markovian on another of the source write-up's datasets

    eval "dvc exp run -n codi-paper $(python -m cotlab.presets codi) eval_codi codi_probe"

Offline, the Hugging Face ids fail at once (cotlab.hub) with an error naming the key that holds them.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from typing import Any

# The row "CODI (personal relations)": meta-llama/Llama-3.2-1B-Instruct; 6 latents, LoRA r128 alpha32 on
# q,k,v,o,up,down,gate; projection 2048; distill factor 20; 10 epochs; lr 8e-4 cosine; batch 32 x grad-accum 2;
# bf16; seed 42; 2,700 train / 750 test with the universe.
CODI = {
    "scale": "full",
    "seed": 42,
    "model.dtype": "bfloat16",  # bf16
    "codi.model": "meta-llama/Llama-3.2-1B-Instruct",
    "codi.tasks": ["personal_relations", "personal_relations_no_universe"],  # with the universe (43.7%), without (14.8%)
    "scales.full.n_train": 2700,  # 2,700 train / 750 test (the scale's sizes: every task of the run gets them)
    "scales.full.n_test": 750,
    "codi.num_latent": 6,  # 6 latents
    "codi.inf_latent_iterations": 6,
    "codi.prj_dim": 2048,  # projection 2048
    "codi.distill_loss_factor": 20,  # distill factor 20
    "codi.epochs": 10,  # 10 epochs
    "codi.lr": 8.0e-4,  # lr 8e-4 cosine
    "codi.lr_scheduler": "cosine",
    "codi.batch_size": 32,  # batch 32 x grad-accum 2 (the reference's GSM8k-Aug script: 32 x 4; docs/codi_reference_notes.md)
    "codi.grad_accum": 2,
    "codi.bf16": True,
    "codi.lora.r": 128,  # LoRA r128 alpha32 on q,k,v,o,up,down,gate
    "codi.lora.alpha": 32,
    "codi.lora.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"],
    # Not in the row: the reference code's LoRA dropout (zhenyi4/codi train.py L135; docs/codi_reference_notes.md §5)
    "codi.lora.dropout": 0.1,
    # Not in the row: GSM8k-Aug (-S 'codi.tasks=[gsm8k_aug]', needs the hub) built as the reference builds it
    # (zhenyi4/codi train.py L235, L263-287): << >> kept, the length filter at the Llama script's 200
    # (scripts/train_llama1b_gsm8k-aug.sh L43), the question fed raw. params.yaml keeps cotlab's earlier form.
    "task_specs.gsm8k_aug.annotations": "keep",
    "task_specs.gsm8k_aug.max_token_num": 200,
    "task_specs.gsm8k_aug.question_format": "raw",
    # No seed value: cot_sft (the CoT-SFT baseline) and the few-shot base's exemplars (evaluate.few_shot) keep
    # params.yaml's; the source write-up's 43.8% few-shot baseline names no shot count.
}

# The row "Markovian": meta-llama/Llama-3.1-8B-Instruct; actor_reward_weight 1.0; parallel (GRPO) sampling; LoRA r8
# alpha16; lr 1e-4; KL 0.1; temperature 1.0 (1.5 wiki); normalize_loss; CoT length GSM8K 100, MMLU 150, MathQA 150,
# AQuA 50, SVAMP 50, ARC 50 (PPO on), wiki 50; batch 12 (wiki 16); 4k-16k batches. The source write-up's own advice after its
# failures (lr 5e-5, batch 32, eval every 500-1000 batches, actor_reward_weight 0.5, no PPO with actor reward) is not
# the configuration it ran; `-S` any of them on top.
MARKOVIAN = {
    "scale": "full",
    "markovian.model": "meta-llama/Llama-3.1-8B-Instruct",
    "markovian.tasks": ["gsm8k"],  # GSM8K; another of the source write-up's datasets: MARKOVIAN_TASKS (--task)
    "markovian.cot_length": 100,  # CoT length GSM8K 100
    "markovian.actor_reward_weight": 1.0,
    # The reference's form: its actor reward is scored under no_grad (src/evaluation.py L223), so the runs behind the
    # row had no gradient through the answer's log-prob; the actor's reward reaches it only through the advantage
    "markovian.actor_reward_gradient": False,
    "markovian.questions_per_step": 1,  # parallel (GRPO) sampling: a batch is one question's group of CoTs
    "markovian.group_size": 12,  # batch 12
    "markovian.lora.r": 8,  # LoRA r8 alpha16
    "markovian.lora.alpha": 16,
    "markovian.lora.dropout": 0.1,  # not in the row: the reference's (params.yaml's markovian.lora comment)
    "markovian.lr": 1.0e-4,
    "markovian.kl_penalty": 0.1,  # KL 0.1
    "markovian.kl_form": "reference",  # the reference's KL positions (calculate_mean_kl, src/train.py L732-740)
    "markovian.temperature": 1.0,
    "markovian.normalize_loss": True,
    "markovian.use_ppo": False,  # PPO on for ARC only
    "markovian.steps": 4000,  # 4k-16k batches: the low end
    # Not in the row (no EI there): the reference's skip period, EI_SKIP_INITIAL = 25 batches, for `-S expert_iteration`
    "markovian.expert_iteration_warmup": 25,
    # No seed value for the rest; cotlab's evaluation during training and checkpoints every 500 steps (the advice's
    # "eval every 500-1000 batches"); max_grad_norm keeps params.yaml's 1.0 (the advice's value too).
    "markovian.eval_every": 500,
    "markovian.save_every": 500,
}

# Markovian on the source write-up's other datasets: the row's CoT length, temperature, batch and PPO per dataset. arc, mmlu,
# mathqa and wiki load from the hub (task_specs); svamp and aqua are shipped.
MARKOVIAN_TASKS: dict[str, dict[str, Any]] = {
    "gsm8k": {},
    "svamp": {"markovian.cot_length": 50},
    "aqua": {"markovian.cot_length": 50},
    "mmlu": {"markovian.cot_length": 150},
    "mathqa": {"markovian.cot_length": 150},
    # PPO on, the reference's (src/train.py L543-548): one ratio per CoT against the frozen model, the clipped
    # objective replacing the KL and actor-reward terms, one update per batch; the collapse guard stays on
    "arc": {"markovian.cot_length": 50, "markovian.use_ppo": True, "markovian.ppo_form": "reference",
            "markovian.ppo_epochs": 1},
    "wiki": {"markovian.cot_length": 50, "markovian.temperature": 1.5, "markovian.group_size": 16},
}

# The row "Self-improving (StrategyQA)": microsoft/Phi-3.5-mini-instruct, QLoRA 4-bit; LoRA r16 alpha32 dropout 0.1,
# all projections; Phase A/B: max_length 2048, 3 epochs, batch 2 x grad-accum 16, lr 2e-4, bf16; Phase C: 4 epochs,
# batch 2, lr 1e-5, beta schedule 0.05 / 0.1 + calibration / 0.1 + robust; 200 train samples; drafts max 35 new
# tokens; teacher gpt-4.1-nano, max_tokens 150, temperature 0.3.
_PHASE_AB = {
    "quantization": "4bit",  # QLoRA 4-bit (CUDA only)
    "lora.r": 16,  # LoRA r16 alpha32 dropout 0.1, all projections
    "lora.alpha": 32,
    "lora.dropout": 0.1,
    "lora.target_modules": "all-linear",
    "epochs": 3,
    "batch_size": 2,  # batch 2 x grad-accum 16
    "grad_accum": 16,
    "lr": 2.0e-4,
}
SELF_IMPROVING = {
    "scale": "full",
    "model.name": "microsoft/Phi-3.5-mini-instruct",  # the shared base (models/base): the self-improving system's
    "model.dtype": "bfloat16",  # bf16
    "tasks": ["strategyqa"],
    "dpo.tasks": ["strategyqa"],
    "scales.full.n_train": 200,  # 200 train samples
    "scales.full.max_length": 2048,  # Phase A/B max_length 2048 (the scale's: DPO's too)
    **{f"sft.{k}": v for k, v in _PHASE_AB.items()},
    **{f"cot_distill.{k}": v for k, v in _PHASE_AB.items()},
    # Phase C: 4 epochs, batch 2, lr 1e-5, beta 0.05 / 0.1 + calibration / 0.1 + robust. The calibration the write-up
    # names is Cal-DPO (cal_dpo); batch_mean, the other reading, has a log 2 floor and does not train (params.yaml).
    # No quantization key: DPO trains the Phase B adapter on the bf16 base. Its gradient accumulation is not in the
    # row (params.yaml's).
    "dpo.schedule": [
        {"epochs": 1, "beta": 0.05, "calibration": "none", "robust": "none"},
        {"epochs": 2, "beta": 0.1, "calibration": "cal_dpo", "robust": "none"},
        {"epochs": 1, "beta": 0.1, "calibration": "cal_dpo", "robust": "drop_top"},
    ],
    "dpo.batch_size": 2,
    "dpo.lr": 1.0e-5,
    "drafts.max_new_tokens": 35,  # drafts max 35 new tokens
    "teacher.backend": "openai",  # teacher gpt-4.1-nano (needs OPENAI_API_KEY; -S teacher.backend=oracle runs offline)
    "teacher.model": "gpt-4.1-nano",
    "teacher.max_tokens": 150,
    "teacher.temperature": 0.3,
}

# The row "Transplant": a LLaMA-7B Alpaca (any 7B instruct model); residual stream in float64; flash attention;
# candidates from an LLM teacher on math word problems (AddSub, SingleOP, SVAMP, MultiArith, ASDiv, GSM8K, SingleEq,
# SimulEq); argument correct 59% (test 64%); ~12,000 training samples before overfitting.
TRANSPLANT = {
    "scale": "full",
    # Any 7B instruct model: an open, ungated one (the source write-up's LLaMA-7B Alpaca has no maintained hub checkpoint)
    "transplant.model": "Qwen/Qwen2.5-7B-Instruct",
    "transplant.residual_fp64": True,  # residual stream in float64
    # Flash attention: no cotlab key (transformers' default attention, SDPA, on CUDA).
    # The shipped ones of the source write-up's problems; AddSub, SingleOP, MultiArith, ASDiv, SingleEq, SimulEq are not shipped
    # (a `local` task_specs entry takes any of them).
    "transplant.tasks": ["svamp", "gsm8k"],
    # argument correct 59% (test 64%): one rate for both splits here
    "candidates.argument_correct_rate": 0.59,
    # The source write-up's LLM teacher is not named: the candidates keep params.yaml's teacher (the oracle; -S teacher.backend=
    # openai -S teacher.model=... for an LLM's).
    # ~12,000 training samples: 3,000 steps of params.yaml's batch of 4 (the source write-up's batch is not in the row)
    "transplant.steps": 3000,
    "transplant.eval_every": 100,  # no seed value: 31 curve points
}

PRESETS: dict[str, dict[str, Any]] = {
    "codi": CODI,
    "markovian": MARKOVIAN,
    "self_improving": SELF_IMPROVING,
    "transplant": TRANSPLANT,
}

# The DVC targets that run each system (DVC adds what they need upstream: its data, its base model, its training).
# compare is left out: it reads every system's evaluations, so it would run every stage the preset's scale changes.
TARGETS: dict[str, list[str]] = {
    "codi": ["eval_codi", "codi_probe"],
    "markovian": ["eval_markovian"],
    "self_improving": ["eval_base", "evaluate", "eval_dpo", "attribution", "judge"],
    "transplant": ["transplant"],
}

# What the source write-up reported, to read the experiment's metrics against.
REPORTED = {
    "codi": "43.7% with the universe (few-shot base 43.8%, no universe 14.8%)",
    "markovian": "(the row reports no accuracy; its failures: PPO ratio explosion, mode collapse)",
    "self_improving": "Phase A 59.4%, Phase B 51.5% on StrategyQA",
    "transplant": "best 79% (the argument's own correctness 59%, test 64%)",
}

# The param that names each preset's model.
MODEL_KEYS = {"codi": "codi.model", "markovian": "markovian.model", "self_improving": "model.name",
              "transplant": "transplant.model"}


def preset(system: str, task: str | None = None) -> dict[str, Any]:
    """The preset of `system` (a key of PRESETS); for markovian, `task` picks another of the source write-up's datasets."""
    if system not in PRESETS:
        raise KeyError(f"{system!r}: no such preset (presets: {', '.join(PRESETS)})")
    values = dict(PRESETS[system])
    if task is not None:
        if system != "markovian" or task not in MARKOVIAN_TASKS:
            raise KeyError(f"--task {task!r}: only markovian takes a task ({', '.join(MARKOVIAN_TASKS)})")
        values.update({"markovian.tasks": [task], **MARKOVIAN_TASKS[task]})
    return values


def apply(values: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """`data` (params.yaml, loaded) with each dotted key of `values` set in place, as `dvc exp run -S` sets it. A key
    params.yaml does not have is a KeyError: a typo never adds a key."""
    for dotted, value in values.items():
        *path, last = dotted.split(".")
        node = data
        for i, part in enumerate(path):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"{dotted}: params.yaml has no {'.'.join(path[:i + 1])}")
            node = node[part]
        if not isinstance(node, dict) or last not in node:
            raise KeyError(f"{dotted}: params.yaml has no such key")
        node[last] = value
    return data


_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./+-]*")
_RESERVED = re.compile(r"(?i)true|false|null|[+-]?(inf|nan)")


def override_value(value: Any) -> str:
    """`value` in Hydra's override grammar, which `dvc exp run -S key=value` parses: a list [a,b], a mapping {k:v},
    a string plain when it cannot be read as anything else, else double-quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and not _RESERVED.fullmatch(value):
            return value
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no override syntax for {value!r}")


def flags(values: dict[str, Any]) -> list[str]:
    """The `-S key=value` arguments (unquoted: one list item per shell word)."""
    return [arg for key, value in values.items() for arg in ("-S", f"{key}={override_value(value)}")]


def command(system: str, task: str | None = None) -> list[str]:
    name = f"{system.replace('_', '-')}-paper" + (f"-{task}" if task else "")
    return ["dvc", "exp", "run", "-n", name, *flags(preset(system, task)), *TARGETS[system]]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cotlab.presets", description=__doc__.split("\n\n")[0])
    parser.add_argument("system", nargs="?", help=f"one of {', '.join(PRESETS)}")
    parser.add_argument("--list", action="store_true", help="the presets, their models and reported results")
    parser.add_argument("--targets", action="store_true", help="the DVC targets that run the system")
    parser.add_argument("--command", action="store_true", help="the whole `dvc exp run` command")
    parser.add_argument("--task", help=f"markovian: one of {', '.join(MARKOVIAN_TASKS)}")
    args = parser.parse_args(argv)
    if args.list:
        for name, values in PRESETS.items():
            key = MODEL_KEYS[name]
            print(f"{name}: {key}={values[key]}; targets {' '.join(TARGETS[name])}; the source write-up: {REPORTED[name]}")
        return 0
    if args.system is None:
        parser.error("name a system, or --list")
    try:
        if args.targets:
            preset(args.system, args.task)  # the same errors as the flags
            print(" ".join(TARGETS[args.system]))
        elif args.command:
            print(shlex.join(command(args.system, args.task)))
        else:
            print(shlex.join(flags(preset(args.system, args.task))))
    except KeyError as e:
        print(f"cotlab.presets: {e.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
