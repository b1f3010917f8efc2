import pytest
from ruamel.yaml import YAML

from cotlab.config import ConfigError, load_params, load_yaml, parse_params


def params_dict():
    return load_yaml("params.yaml")


def test_repository_params_are_valid():
    params = load_params("params.yaml")
    assert params.scale in ("tiny", "demo", "full")
    assert set(params.tasks) <= set(params.task_specs)


def test_dvc_exp_float_spelling_is_a_float(tmp_path):
    # `dvc exp run -S lr=5e-5` writes 5e-05: a string for YAML 1.1 parsers, a float for us.
    text = open("params.yaml").read().replace("lr: 1.0e-3", "lr: 5e-05", 1)
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params.lr == 5e-05
    assert params.learning_rate("sft") == 5e-05  # sections with lr: null fall back to the top level


def test_section_lr_overrides_top_level():
    data = params_dict()
    data["cot_distill"]["lr"] = 1e-3
    params = parse_params(data)
    assert params.learning_rate("cot_distill") == 1e-3
    assert params.learning_rate("sft") == params.lr


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
    ],
)
def test_bad_params_name_the_key(mutate, key):
    data = params_dict()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    assert str(err.value).startswith(key)


def test_yaml_is_parsed_as_1_2(tmp_path):
    (tmp_path / "p.yaml").write_text("a: 5e-05\nb: yes\n")
    data = load_yaml(tmp_path / "p.yaml")
    assert data == {"a": 5e-05, "b": "yes"}
    assert YAML(typ="safe").load("x: 1e-3")["x"] == 1e-3
