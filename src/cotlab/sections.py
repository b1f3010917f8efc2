"""Every params section with the config class its stages parse it with, and a check of them all.

A stage parses only the sections it reads (Params.section), so that it imports, and depends on, only their code.
This module imports every method and job, so no stage imports it: `python -m cotlab.sections [params.yaml]` checks
the whole file at once (`make repro` runs it before `dvc repro`, so a bad key anywhere fails in a second, not
when its stage is reached), and the tests use it to hold every default to params.yaml.
"""

from __future__ import annotations

import sys

from cotlab.config import SECTIONS, ConfigError, Params, load_params
from cotlab.data.candidates import CandidatesConfig
from cotlab.data.sources import check_task_spec
from cotlab.data.filtering import FilterConfig
from cotlab.evaluation.attribution import AttributionConfig
from cotlab.evaluation.compare import CompareConfig
from cotlab.methods.codi import CODIConfig
from cotlab.methods.dpo import DPOConfig
from cotlab.methods.markovian import MarkovianConfig
from cotlab.methods.sft import TrainConfig
from cotlab.methods.transplant import TransplantConfig
from cotlab.selfimprove.drafts import DraftsConfig
from cotlab.selfimprove.judge import JudgeConfig
from cotlab.teacher import TeacherConfig

CONFIG_CLASSES: dict[str, type] = {
    "sft": TrainConfig, "cot_distill": TrainConfig, "cot_sft": TrainConfig, "drafts": DraftsConfig,
    "teacher": TeacherConfig, "filter": FilterConfig, "candidates": CandidatesConfig, "dpo": DPOConfig,
    "attribution": AttributionConfig, "judge": JudgeConfig, "codi": CODIConfig, "markovian": MarkovianConfig,
    "transplant": TransplantConfig, "compare": CompareConfig,
}
assert set(CONFIG_CLASSES) == set(SECTIONS), "config.SECTIONS and CONFIG_CLASSES must name the same sections"


def all_sections(params: Params) -> dict[str, object]:
    """Every section built and checked, then every task spec; the first bad key raises ConfigError naming it."""
    sections = {name: params.section(name, cls) for name, cls in CONFIG_CLASSES.items()}
    for task, spec in params.task_specs.items():
        check_task_spec(task, spec)
    return sections


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "params.yaml"
    try:
        all_sections(load_params(path))
    except ConfigError as e:
        print(f"cotlab: {path}: {e}", file=sys.stderr)
        return 2
    print(f"cotlab: {path}: every section and task spec is valid")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
