import pytest
from ruamel.yaml import YAML

from cotlab.config import ConfigError, load_params, load_yaml, parse_params
from cotlab.methods.sft import TrainConfig
from cotlab.sections import CONFIG_CLASSES, all_sections


def params_dict():
    return load_yaml("params.yaml")


def test_repository_params_are_valid():
    params = load_params("params.yaml")
    assert params.scale in ("tiny", "demo", "full")
    assert set(params.tasks) <= set(params.task_specs)
    sections = all_sections(params)
    assert set(sections) == set(CONFIG_CLASSES) and sections["codi"].tasks == params.sections["codi"]["tasks"]


def test_the_params_check_names_a_bad_key_in_any_section(tmp_path):
    """`python -m cotlab.sections` (run by `make repro` before DVC) fails at once on a key only a late stage reads."""
    import subprocess
    import sys

    good = subprocess.run([sys.executable, "-m", "cotlab.sections", "params.yaml"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    text = open("params.yaml").read().replace("probe_top_k: 5", "probe_top_kk: 5", 1)
    assert "probe_top_kk" in text
    (tmp_path / "params.yaml").write_text(text)
    bad = subprocess.run([sys.executable, "-m", "cotlab.sections", str(tmp_path / "params.yaml")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "codi.probe_top_kk: unknown param" in bad.stderr


def test_dvc_exp_float_spelling_is_a_float(tmp_path):
    # `dvc exp run -S lr=5e-5` writes 5e-05: a string for YAML 1.1 parsers, a float for us.
    text = open("params.yaml").read().replace("lr: 1.0e-3", "lr: 5e-05", 1)
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params.lr == 5e-05
    assert params.resolve(params.section("sft", TrainConfig)).lr == 5e-05  # lr: null falls back to the top level


def test_section_lr_overrides_top_level():
    data = params_dict()
    data["cot_distill"]["lr"] = 1e-3
    params = parse_params(data)
    assert params.resolve(params.section("cot_distill", TrainConfig)).lr == 1e-3
    assert params.resolve(params.section("sft", TrainConfig)).lr == params.lr
    assert params.resolve(params.section("sft", TrainConfig)).epochs == params.sizes.epochs


def test_a_task_size_overrides_the_scale_for_that_task_only():
    data = params_dict()
    data["scale"] = "tiny"
    data["scales"]["tiny"]["task_sizes"] = {"svamp": {"n_train": 5, "n_test": None}}
    params = parse_params(data)
    assert (params.split_sizes("svamp").n_train, params.split_sizes("svamp").n_test) == (5, None)
    assert (params.split_sizes("gsm8k").n_train, params.split_sizes("gsm8k").n_test) == (24, 12)


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d["sft"].update(batch_sise=4), "sft.batch_sise"),
        (lambda d: d.update(lr="fast"), "lr"),
        (lambda d: d.update(lr=3.0), "lr"),
        (lambda d: d.update(scale="huge"), "scale"),
        (lambda d: d["sft"]["lora"].update(r=0), "sft.lora.r"),
        (lambda d: d["sft"].update(padding_free="yes"), "sft.padding_free"),
        (lambda d: d["scales"]["tiny"].update(n_train=-1), "scales.tiny.n_train"),
        (lambda d: d.update(tasks=["nope"]), "tasks"),
        (lambda d: d["scales"]["demo"].update(task_sizes={"nope": {"n_test": 5}}), "scales.demo.task_sizes"),
        (lambda d: d["scales"]["demo"].update(task_sizes={"svamp": {"n_test": 0}}),
         "scales.demo.task_sizes.svamp.n_test"),
        (lambda d: d.pop("seed"), "seed"),
        (lambda d: d["dpo"].update(tasks=["gsm8k", "svamp"]), "dpo.tasks"),
        (lambda d: d["dpo"]["schedule"][1].update(calibration="mean"), "dpo.schedule[1].calibration"),
        (lambda d: d["dpo"]["schedule"][0].update(beta=0), "dpo.schedule[0].beta"),
        (lambda d: d["dpo"].update(drop_fraction=1.0), "dpo.drop_fraction"),
        (lambda d: d["dpo"].update(rounds={"round1": {"start": "round2"}, "round2": {"start": "dpo"}}),
         "dpo.rounds.round1.start"),
        (lambda d: d["dpo"].update(rounds={"dpo": {"start": "dpo"}}), "dpo.rounds.dpo"),
        (lambda d: d["judge"].update(backend="oracle"), "judge.backend"),
        (lambda d: d["judge"].update(api_key_env="sk-abc123"), "judge.api_key_env"),
        (lambda d: d["markovian"].update(markovian=False), "markovian.markovian"),  # a stage argument
        (lambda d: d["transplant"].update(masked=True), "transplant.masked"),
        (lambda d: d["codi"].update(num_latent=0), "codi.num_latent"),
        (lambda d: d["codi"].update(tasks=["nope"]), "codi.tasks"),
        (lambda d: d["markovian"].update(temperature=0.0), "markovian.temperature"),
        (lambda d: d["transplant"].update(layers=[]), "transplant.layers"),
        (lambda d: d["filter"].update(min_reasoning_words=500), "filter.min_reasoning_words"),
        (lambda d: d["compare"].update(pairs=["codi vs cot_sft"]), "compare.pairs[0]"),
        (lambda d: d.update(codi=[1, 2]), "codi"),
        (lambda d: d.update(sectoins={}), "sectoins"),
    ],
)
def test_bad_params_name_the_key(mutate, key):
    data = params_dict()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        all_sections(parse_params(data))
    assert str(err.value).startswith(key)


def test_yaml_is_parsed_as_1_2(tmp_path):
    (tmp_path / "p.yaml").write_text("a: 5e-05\nb: yes\n")
    data = load_yaml(tmp_path / "p.yaml")
    assert data == {"a": 5e-05, "b": "yes"}
    assert YAML(typ="safe").load("x: 1e-3")["x"] == 1e-3


def _defaults(cls) -> dict:
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _disagreements(defaults: dict, section, prefix: str) -> list[str]:
    """Keys whose default differs from the value params.yaml gives them, recursing into sub-configs (whose
    defaults are the section's own, e.g. codi's LoRA rank). A None in params.yaml means "derived elsewhere" (the
    top-level lr, the scale's epochs), which no default can mirror."""
    import dataclasses

    found = []
    for name, default in defaults.items():
        value = getattr(section, name, None)
        if value is None:
            continue
        if dataclasses.is_dataclass(default) and dataclasses.is_dataclass(value):
            found += _disagreements(vars(default), value, f"{prefix}.{name}")
        elif default != value and not (isinstance(default, tuple) and list(default) == value):
            found.append(f"{prefix}.{name}: default {default!r}, params.yaml {value!r}")
    return found


def test_no_default_disagrees_with_params_yaml():
    """params.yaml is the one place values live: every default of a section's config class (beside its method) and
    of the shared sections equals the value params.yaml gives, so code that builds a config without params.yaml (a
    test, a benchmark, a notebook) gets the pipeline's recipe, not another one; and params.yaml sets every key, so no
    default shapes a pipeline output. Sections that share one class (sft, cot_distill, cot_sft: TrainConfig) are
    held to the first of them, sft."""
    import dataclasses

    from cotlab.config import Params

    params = load_params("params.yaml")
    found = []
    for f in dataclasses.fields(Params):
        if f.default_factory is not dataclasses.MISSING and f.name != "sections":
            found += _disagreements(vars(f.default_factory()), getattr(params, f.name), f.name)
    for name, cls in CONFIG_CLASSES.items():
        section = params.section(name, cls)
        if name not in ("cot_distill", "cot_sft"):
            found += _disagreements(_defaults(cls), section, name)
        missing = sorted({f.name for f in dataclasses.fields(cls)} - set(params.sections[name]) - {"markovian",
                                                                                                   "masked", "transplant"})
        found += [f"{name}.{key}: not set in params.yaml" for key in missing]
    assert not found, "defaults that disagree with params.yaml:\n  " + "\n  ".join(found)
