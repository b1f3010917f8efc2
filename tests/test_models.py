"""Self-describing checkpoints: evaluation rebuilds the model from the manifest alone."""
import json
import shutil

import pytest
import torch

from conftest import LORA
from cotlab.evaluation.generate import generate
from cotlab.methods import sft
from cotlab.models import (ModelLoadError, load_checkpoint, load_for_training, prepare_base, read_manifest,
                           save_adapter)
from cotlab.prompts import render_prompt


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    from cotlab.data.sources import load_task

    train = load_task("strategyqa", {"source": "strategyqa"}, 24, 8, seed=0)["train"]
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    sft.train(model, tokenizer, train, sft.TrainConfig(epochs=2, batch_size=4, lr=2e-2), template="direct",
              max_length=512, seed=0, report_to=[])
    out = tmp_path_factory.mktemp("ckpt") / "sft"
    save_adapter(model, tokenizer, out, tiny_base, "sft", "direct", "none", params={"lr": 2e-2})
    return out


def test_base_manifest_and_safetensors(tiny_base):
    manifest = read_manifest(tiny_base)
    assert manifest["kind"] == "base" and manifest["base_model"]["name"] == "tiny-random"
    assert len(manifest["fingerprint"]) == 64
    assert list(tiny_base.glob("*.safetensors")) and not list(tiny_base.glob("*.bin"))
    assert set(manifest["libraries"]) >= {"torch", "transformers", "trl", "peft", "accelerate"}
    assert all(manifest["libraries"][name] for name in ("torch", "transformers", "trl", "peft"))


def test_prepare_model_writes_the_same_bytes_every_run(tiny_base, tmp_path):
    """models/base is a DVC out: a second run with the same params must give the same hash, file by file."""
    from cotlab.models import TINY

    prepare_base(TINY, tmp_path / "again", seed=0)
    files = sorted(f.name for f in tiny_base.iterdir())
    assert files == sorted(f.name for f in (tmp_path / "again").iterdir())
    assert [f for f in files if (tiny_base / f).read_bytes() != (tmp_path / "again" / f).read_bytes()] == []


def test_adapter_manifest_records_what_evaluation_needs(trained, tiny_base):
    manifest = read_manifest(trained)
    assert manifest["method"] == "sft" and manifest["quantization"] == "none"
    assert manifest["adapter"]["r"] == LORA["r"] and manifest["adapter"]["lora_alpha"] == LORA["alpha"]
    assert manifest["prompt"] == {"template": "direct", "version": "1", "with_draft": False}
    assert manifest["base_model"]["fingerprint"] == read_manifest(tiny_base)["fingerprint"]
    assert (trained / "adapter_model.safetensors").is_file()


def test_trained_adapter_generates_differently_from_the_base(trained, tiny_base, examples):
    base, tokenizer, _ = load_checkpoint(tiny_base, "cpu")
    tuned, tuned_tokenizer, manifest = load_checkpoint(trained, "cpu")
    prompts = [render_prompt(tokenizer, ex, manifest["prompt"]["template"]) for ex in examples["test"]]
    base_out = [g.text for g in generate(base, tokenizer, prompts, max_new_tokens=8)]
    tuned_out = [g.text for g in generate(tuned, tuned_tokenizer, prompts, max_new_tokens=8)]
    assert base_out != tuned_out
    assert sum("answer" in t.lower() for t in tuned_out) > sum("answer" in t.lower() for t in base_out)


def test_inference_checkpoints_merge_the_adapter_into_the_same_function(trained, tiny_base, examples):
    from peft import PeftModel

    merged, tokenizer, _ = load_checkpoint(trained, "cpu", dtype="float32")
    separate, _, _ = load_checkpoint(trained, "cpu", dtype="float32", merge_adapter=False)
    assert not isinstance(merged, PeftModel) and isinstance(separate, PeftModel)
    assert not any(p.requires_grad for model in (merged, separate) for p in model.parameters())
    ids = tokenizer([render_prompt(tokenizer, ex, "direct") for ex in examples["test"][:4]], return_tensors="pt",
                    padding=True)
    with torch.no_grad():
        merged_logits, separate_logits = (m(**ids).logits for m in (merged, separate))
        base_logits = load_checkpoint(tiny_base, "cpu", dtype="float32")[0](**ids).logits
    assert torch.allclose(merged_logits, separate_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-2)  # the adapter is in the merged weights


def test_adapter_refuses_a_different_base(trained, tmp_path):
    other = tmp_path / "base"
    prepare_base("tiny-random", other, seed=1)  # same architecture, other weights
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["base_model"]["path"] = "../base"
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="fingerprint"):
        load_checkpoint(ckpt, "cpu")


def test_adapter_refuses_another_prompt_version(trained, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["prompt"]["version"] = "0"
    manifest["base_model"]["path"] = str((trained / manifest["base_model"]["path"]).resolve())
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="prompt version 0"):
        load_checkpoint(ckpt, "cpu")


def test_unloadable_model_paths_fail_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="no manifest.json"):
        load_checkpoint(tmp_path / "missing", "cpu")
    with pytest.raises(ModelLoadError, match="model.name: cannot load"):
        prepare_base(str(tmp_path / "no-such-model"), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert not (tmp_path / ".out.partial").exists() or not any((tmp_path / ".out.partial").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal of QLoRA")
def test_4bit_on_cpu_is_a_clear_error(tiny_base):
    with pytest.raises(ModelLoadError, match="needs a CUDA device"):
        load_for_training(tiny_base, "cpu", "4bit", LORA, None)


def test_adapter_config_lists_target_modules_sorted(trained, tmp_path):
    """PEFT writes the module set `all-linear` resolves to in hash-seed order; sorted, the same weights give the
    same adapter folder (DVC's out hash) in every run."""
    from cotlab.models import stable_adapter_config

    saved = json.loads((trained / "adapter_config.json").read_text())["target_modules"]
    assert saved == sorted(saved) and read_manifest(trained)["adapter"]["target_modules"] == saved
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "target_modules": ["v_proj", "down_proj",
                                                                                          "q_proj"]}))
    assert stable_adapter_config(tmp_path)["target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"][0] == "down_proj"
