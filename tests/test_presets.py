"""Per-system base models (codi, markovian, transplant: `<system>.model`, models/base_<system>) and the source write-ups' presets
(cotlab.presets): one system's model reaches only its own stages; every preset is valid params, round-trips through
`dvc exp run -S`'s own parser, and fails at once offline naming the key that holds its model."""
import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cotlab import presets
from cotlab.config import ConfigError, SYSTEMS, load_yaml, parse_params
from cotlab.sections import all_sections
from cotlab.stage import base_dir

ROOT = Path(__file__).resolve().parents[1]
# Every preset, and Markovian's on each of the source write-up's datasets.
CASES = [(name, None) for name in presets.PRESETS] + [("markovian", task) for task in presets.MARKOVIAN_TASKS]
IDS = [name if task is None else f"{name}-{task}" for name, task in CASES]


@pytest.fixture(scope="module")
def stages():
    """{address: (deps, param keys)} of every stage, foreach and matrix expanded by DVC, and each system's stages:
    what its presets' targets run, upstream stages included (as `dvc exp run <targets>` runs them)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        table = {}
        for stage in repo.index.stages:
            deps = [str(d.def_path) for d in stage.deps if not hasattr(d, "params")]
            keys = [k for d in stage.deps if hasattr(d, "params") for k in (d.params or [])]
            table[stage.addressing] = (deps, keys)
        systems = {name: {s.addressing for t in targets for s in repo.stage.collect(t, with_deps=True)}
                   for name, targets in presets.TARGETS.items()}
    return table, systems


# ---------------------------------------------------------------- per-system base models

def test_base_dirs_match_the_pipeline():
    assert base_dir() == "models/base"
    assert [base_dir(s) for s in SYSTEMS] == ["models/base_codi", "models/base_markovian", "models/base_transplant"]
    with pytest.raises(ValueError):
        base_dir("self_improving")


@pytest.mark.parametrize("system", SYSTEMS)
def test_a_systems_model_reaches_only_its_own_stages(stages, system):
    """Changing `<system>.model` re-runs prepare_system_model@<system> and the stages that read its base, all of them
    the system's own: no other stage has the param or the folder as a dep. And every stage of the system that reads
    a model reads its own base, never the shared models/base."""
    table, systems = stages
    own, folder = systems[system], base_dir(system)
    assert f"prepare_system_model@{system}" in own and "prepare_model" not in own
    outside = {name for name, (deps, keys) in table.items() if name not in own
               and (folder in deps or system in keys or f"{system}.model" in keys)}
    assert not outside, f"stages outside {system} that its model would re-run: {sorted(outside)}"
    for name in own - {f"prepare_system_model@{system}"}:
        deps, keys = table[name]
        assert "models/base" not in deps and "model.name" not in keys and "model" not in keys, name
        if any(d.startswith("models/") for d in deps):
            assert folder in deps, f"{name} reads a model but not {folder}"
    deps, keys = table[f"prepare_system_model@{system}"]
    assert f"{system}.model" in keys and "model" in keys  # null: the shared model.name, so it must follow it too
    # The model-loading stages of each system, by name (so a renamed stage cannot drop out of the check unseen)
    loading = {"codi": ["codi@personal_relations", "cot_sft@personal_relations", "eval_codi@personal_relations",
                        "codi_probe@personal_relations"],
               "markovian": ["markovian@markovian-lockers", "markovian@non_markovian-lockers",
                             "eval_markovian@lockers"],
               "transplant": ["transplant@transplant-svamp", "transplant@transplant_masked-svamp",
                              "transplant@no_transplant-svamp"]}[system]
    assert all(folder in table[name][0] for name in loading)


def test_a_seed_sweep_prepares_each_base_once(stages):
    """The bases follow `model` (its `init_seed` seeds the tiny random init), not the run's `seed`: every seed of a
    sweep trains from the same base, and no seed experiment re-converts the embedded model."""
    table, _ = stages
    for name in ["prepare_model", *(f"prepare_system_model@{s}" for s in SYSTEMS)]:
        assert "seed" not in table[name][1] and "model" in table[name][1], name


def test_the_self_improving_stages_read_only_the_shared_base(stages):
    table, systems = stages
    own = systems["self_improving"]
    assert not any(d.startswith("models/base_") for name in own for d in table[name][0])
    assert not any(f"{s}.model" in table[name][1] or s in table[name][1] for name in own for s in SYSTEMS)


def test_a_systems_model_is_its_own_or_the_shared_one():
    data = load_yaml(ROOT / "params.yaml")
    params = parse_params(data)
    shared = params.model_name()
    assert all(params.model_source(s) == (shared, "model.name") for s in SYSTEMS)  # null: the shared base
    data = presets.apply({"codi.model": "tiny-random", "model.name": "some/other"}, copy.deepcopy(data))
    params = parse_params(data)
    assert params.model_source("codi") == ("tiny-random", "codi.model")
    assert params.model_source("markovian") == ("some/other", "model.name") == params.model_source()
    for bad in ("auto", 3):
        with pytest.raises(ConfigError, match="codi.model"):
            parse_params(presets.apply({"codi.model": bad}, copy.deepcopy(data)))


def run_stage(cwd, *args):
    return subprocess.run([sys.executable, str(ROOT / "stages" / "prepare_model.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_a_system_with_a_null_model_gets_the_shared_base_byte_for_byte(tmp_path):
    """prepare_system_model@codi with codi.model null writes the shared model: the same weights as models/base (so
    DVC's cache keeps one copy), under models/base_codi, and nothing else."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text().replace("scale: demo", "scale: tiny", 1))
    for args in ([], ["codi"]):
        result = run_stage(tmp_path, *args)
        assert result.returncode == 0, result.stderr[-2000:]
    shared, own = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in (base_dir(), base_dir("codi")))
    assert own["base_model"]["name"] == "tiny-random" and own["fingerprint"] == shared["fingerprint"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["base", "base_codi"]


# ---------------------------------------------------------------- presets

@pytest.mark.parametrize("name,task", CASES, ids=IDS)
def test_every_preset_is_valid_params(name, task):
    """Applied to params.yaml, a preset parses and every section validates; each key exists in params.yaml (a typo
    is an error, never a new key); each system runs the source write-up's model on the scale sized for one GPU."""
    values = presets.preset(name, task)
    params = parse_params(presets.apply(values, load_yaml(ROOT / "params.yaml")))
    sections = all_sections(params)
    assert params.scale == "full"
    system = None if name == "self_improving" else name
    assert params.model_source(system) == (values[presets.MODEL_KEYS[name]], presets.MODEL_KEYS[name])
    assert params.model_name(system) not in ("embedded", "tiny-random")
    if name == "self_improving":
        assert sections["sft"].quantization == sections["cot_distill"].quantization == "4bit"
        assert sections["dpo"].epochs == 4 and params.sizes.n_train == 200
    if name == "codi":
        assert sections["codi"].lora.r == 128 and sections["codi"].epochs == 10 and params.seed == 42
    if task is not None:
        assert sections["markovian"].tasks == [task]


def test_the_codi_preset_builds_gsm8k_aug_rows_the_references_way(monkeypatch, tokenizer):
    """The CODI preset's task_specs.gsm8k_aug, through the hub loader (faked offline with rows shaped like
    zen-E/GSM8k-Aug's), and the length filter CODI's training applies give the reference's training rows: those of
    tests/test_codi_reference.py's transcription of zhenyi4/codi train.py L235, L263-287 (<< >> kept, raw question,
    max_token_num 200 as scripts/train_llama1b_gsm8k-aug.sh L43). params.yaml keeps the earlier form, by name."""
    import datasets

    from cotlab import hub
    from cotlab.data.sources import load_task
    from cotlab.methods import codi as C
    from test_codi_reference import ROWS, reference_icot

    test_rows = [{"question": "T1?", "cot": "<<5-4=1>>", "answer": "1"}]
    monkeypatch.setattr(hub, "offline_unless_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda hub_id, subset, split: {"train": ROWS, "test": test_rows}[split])
    data = load_yaml(ROOT / "params.yaml")
    spec = parse_params(presets.apply(presets.preset("codi"), copy.deepcopy(data))).task_specs["gsm8k_aug"]
    assert spec == {"source": "hub", "dataset": "gsm8k_aug", "annotations": "keep", "max_token_num": 200,
                    "question_format": "raw"}
    train = load_task("gsm8k_aug", spec, None, None, 0)["train"]
    kept = [ex for ex in train if C.within_max_token_num(tokenizer, ex)]
    expected = [e for r in ROWS if (e := reference_icot(r, tokenizer, 200)) is not None]
    assert len(kept) < len(train) and [(ex.question, ex.reasoning, C.answer_text(ex)) for ex in kept] == expected
    earlier = load_task("gsm8k_aug", parse_params(data).task_specs["gsm8k_aug"], None, None, 0)["train"]
    assert [ex.metadata["question_format"] for ex in earlier] == ["labelled"] * len(train)
    assert not any("<<" in ex.reasoning or "max_token_num" in ex.metadata for ex in earlier)


def test_a_misspelt_key_is_an_error_not_a_new_param():
    with pytest.raises(KeyError, match="codi.modle"):
        presets.apply({"codi.modle": "x"}, load_yaml(ROOT / "params.yaml"))
    with pytest.raises(KeyError, match="scales.huge"):
        presets.apply({"scales.huge.model": "x"}, load_yaml(ROOT / "params.yaml"))


@pytest.mark.parametrize("name,task", CASES, ids=IDS)
def test_the_printed_flags_round_trip_through_dvc(name, task, tmp_path):
    """The line `python -m cotlab.presets <system>` prints, split as a shell splits it and applied by DVC's own
    `-S` parser (Hydra's override grammar), gives params.yaml with exactly the preset's values."""
    from dvc.utils.hydra import apply_overrides

    argv = [name] + (["--task", task] if task else [])
    line = subprocess.run([sys.executable, "-m", "cotlab.presets", *argv], capture_output=True, text=True,
                          check=True).stdout.strip()
    words = shlex.split(line)
    assert words[0::2] == ["-S"] * (len(words) // 2)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(tmp_path / "params.yaml", words[1::2])
    expected = presets.apply(presets.preset(name, task), load_yaml(ROOT / "params.yaml"))
    assert load_yaml(tmp_path / "params.yaml") == expected


def test_the_cli_lists_presets_targets_and_commands():
    run = lambda *a: subprocess.run([sys.executable, "-m", "cotlab.presets", *a], capture_output=True,  # noqa: E731
                                    text=True)
    listed = run("--list").stdout
    assert all(line.split(":")[0] in presets.PRESETS for line in listed.strip().splitlines())
    assert "codi.model=meta-llama/Llama-3.2-1B-Instruct" in listed and "43.7%" in listed
    assert run("--targets", "codi").stdout.split() == ["eval_codi", "codi_probe"]
    command = shlex.split(run("--command", "transplant").stdout)
    assert command[:5] == ["dvc", "exp", "run", "-n", "transplant-paper"] and command[-1] == "transplant"
    bad = run("nothing")
    assert bad.returncode == 2 and "no such preset" in bad.stderr
    assert run("codi", "--task", "svamp").returncode == 2


def test_the_readme_gives_each_system_its_preset_and_targets():
    readme = (ROOT / "README.md").read_text()
    for name, targets in presets.TARGETS.items():
        pattern = rf"\$\(python -m cotlab\.presets {name}\) {re.escape(' '.join(targets))}\""
        assert re.search(pattern, readme), f"README: no command for the {name} preset with targets {targets}"


def test_every_preset_fails_at_once_offline_naming_its_key(tmp_path, monkeypatch):
    """Offline, each preset's Hugging Face id is looked up in offline mode (cotlab.hub, as prepare_model does): the
    load fails at once with ModelLoadError naming the key that holds the id. The stage itself too, for CODI's:
    prepare_system_model@codi exits 2 naming codi.model and writes nothing. Skipped where the hub is reachable (it
    would download the models)."""
    import huggingface_hub.constants

    from cotlab import hub
    from cotlab.errors import ModelLoadError
    from cotlab.models import prepare_base

    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    import transformers  # noqa: F401 (imported before the clock starts)

    if not hub.offline_unless_reachable():
        pytest.skip("the hub is reachable: loading a preset's model would download it")
    for name, values in presets.PRESETS.items():
        params = parse_params(presets.apply(values, load_yaml(ROOT / "params.yaml")))
        model, key = params.model_source(None if name == "self_improving" else name)
        started = time.perf_counter()
        with pytest.raises(ModelLoadError, match=f"{re.escape(key)}: cannot load {re.escape(repr(model))}"):
            prepare_base(model, tmp_path / name, "float32", "cpu", params.model.init_seed, key=key)
        assert time.perf_counter() - started < 5, name
        assert not (tmp_path / name).exists()

    data = presets.apply(presets.PRESETS["codi"], load_yaml(ROOT / "params.yaml"))
    from ruamel.yaml import YAML

    YAML(typ="safe").dump(data, tmp_path / "params.yaml")
    result = run_stage(tmp_path, "codi")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "codi.model:cannotload'meta-llama/Llama-3.2-1B-Instruct'" in re.sub(r"\s+", "", result.stderr)
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("task", list(presets.MARKOVIAN_TASKS))
def test_markovian_presets_use_the_references_semantics(task):
    """The Markovian preset claims MarkovianTraining's runs (src/train.py and src/evaluation.py at 6c18282f): the actor
    reward without a gradient (evaluation.py L223 scores it under no_grad), the KL at the reference's positions
    (calculate_mean_kl, train.py L732-740), the expert-iteration skip period of EI_SKIP_INITIAL = 25 batches
    (src/constants.py; utils.py L582); ARC, the one row with PPO, the reference's PPO (one ratio per CoT against the
    frozen model, replacing the KL and actor terms: train.py L543-548, one update per batch), the collapse guard on."""
    from cotlab.methods.markovian import MarkovianConfig

    params = parse_params(presets.apply(presets.preset("markovian", task), load_yaml(ROOT / "params.yaml")))
    config = params.section("markovian", MarkovianConfig)
    assert config.actor_reward_weight == 1.0 and config.actor_reward_gradient is False
    assert config.kl_form == "reference" and config.expert_iteration_warmup == 25
    assert config.use_ppo == (task == "arc")
    if task == "arc":
        assert config.ppo_form == "reference" and config.ppo_epochs == 1
        assert 1 < config.collapse.max_ppo_ratio < float("inf") and config.collapse.max_kl < float("inf")
