"""What makes the default run fast: bf16 where the CPU has native bf16 (trainable parameters stay fp32), generation
that stops when the answer is complete, stages without model work that import no torch, the base's CoTs shared."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import LORA
from cotlab import models
from cotlab.evaluation.generate import generate
from cotlab.models import load_checkpoint, load_for_training, prepare_base, read_manifest, save_adapter
from cotlab.prompts import ANSWER_LINE_STOP, FIRST_LINE_STOP, TEMPLATE_STOPS
from cotlab.selfimprove.drafts import DRAFT_STOP

ROOT = Path(__file__).resolve().parents[1]

EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD_XEON = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
SAPPHIRE = "flags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd crc32 atomics\n"


@pytest.mark.parametrize("cpuinfo, native", [(EPYC, True), (OLD_XEON, False), (SAPPHIRE, True), (GRAVITON3, True),
                                             (GRAVITON2, False), ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert models.cpu_has_native_bf16(cpuinfo) is native


def test_auto_dtype_is_bf16_only_on_cpus_with_native_bf16(monkeypatch):
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert models.resolve_dtype("auto", "cpu") == torch.bfloat16
    assert models.resolve_dtype("float32", "cpu") == torch.float32  # model.dtype: float32 forces the old path
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert models.resolve_dtype("auto", "mps") == torch.float32


def test_bf16_base_trains_an_fp32_adapter_and_the_manifests_say_so(tmp_path):
    base = tmp_path / "base"
    assert prepare_base("tiny-random", base, dtype="bfloat16")["dtype"] == "bfloat16"
    model, tokenizer, _ = load_for_training(base, "cpu", "none", LORA, None)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    loss = model(**tokenizer(["The answer is: Yes"], return_tensors="pt"), labels=tokenizer(
        ["The answer is: Yes"], return_tensors="pt")["input_ids"]).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    manifest = save_adapter(model, tokenizer, tmp_path / "ckpt", base, "sft", "direct", "none", params={})
    assert manifest["dtype"] == {"base": "bfloat16", "trainable": ["float32"]}
    reloaded, _, _ = load_checkpoint(tmp_path / "ckpt", "cpu")
    assert {p.dtype for n, p in reloaded.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    upcast, _, _ = load_checkpoint(tmp_path / "ckpt", "cpu", dtype="float32")  # attribution's gradients
    assert {p.dtype for p in upcast.parameters()} == {torch.float32}


class Script:
    """Forces each row of a tiny model to write a given text, token by token (a hook on the LM head)."""

    def __init__(self, model, tokenizer, texts):
        self.rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
        self.step = 0
        self.handle = model.get_output_embeddings().register_forward_hook(self.force)

    def force(self, module, inputs, logits):
        forced = torch.full_like(logits[:, -1], -1e4)
        for row, ids in enumerate(self.rows):
            forced[row, ids[min(self.step, len(ids) - 1)]] = 1e4
        self.step += 1
        logits = logits.clone()
        logits[:, -1] = forced
        return logits


def test_generation_stops_each_row_after_its_answer_line(tiny_base, tokenizer):
    model, _, _ = load_checkpoint(tiny_base, "cpu")
    rambling = " and then another question nobody asked" * 8  # far past the cap
    texts = ["Two and two.\nThe answer is: 4\nNow" + rambling, "Counting on" + rambling, "Short.\nThe answer is: Yes"]
    prompts = ["Question: what is 2 + 2?"] * 3
    limit = 40
    script = Script(model, tokenizer, texts)
    try:
        plain = generate(model, tokenizer, prompts, limit, batch_size=3)
        script.step = 0
        stopped = generate(model, tokenizer, prompts, limit, batch_size=3, stop=TEMPLATE_STOPS["cot"])
    finally:
        script.handle.remove()
    assert plain[0].truncated and plain[0].n_new_tokens == limit
    first_line = "Two and two.\nThe answer is: 4\n"
    assert stopped[0].text.startswith(first_line) and stopped[0].text.count("\n") == 2
    assert not stopped[0].truncated and stopped[0].n_new_tokens < plain[0].n_new_tokens
    # A row without an answer line runs to the cap, as before; one that ends with eos is unchanged.
    assert stopped[1].text == plain[1].text and stopped[1].truncated
    assert stopped[2].text == plain[2].text == "Short.\nThe answer is: Yes" and not stopped[2].truncated


def test_stop_patterns_end_the_format_they_belong_to():
    import re

    def stops(pattern, text):
        return re.search(pattern, text) is not None

    assert stops(ANSWER_LINE_STOP, "so 3 + 4 = 7.\nThe answer is: 7\n")
    assert stops(ANSWER_LINE_STOP, "Final Assessment: the answer is: **YES**\n")
    assert stops(ANSWER_LINE_STOP, "The answer is:\nCarol\n")  # the value on the next line
    assert not stops(ANSWER_LINE_STOP, "The answer is: 7")  # the line may not be over yet: " 7" -> " 72"
    assert not stops(ANSWER_LINE_STOP, "Think step by step, then finish with the answer.\n")
    assert stops(FIRST_LINE_STOP, " Yes\n") and not stops(FIRST_LINE_STOP, " \n")
    assert stops(DRAFT_STOP, "Answer: No - fish need water.\nQuestions: Can it breathe air? For how long?\n")
    assert not stops(DRAFT_STOP, "Answer: No - fish need water.\n")
    with pytest.raises(ValueError, match="must end with a newline"):
        generate(None, None, ["x"], 4, stop=r"The answer is: \w+")


def test_stages_without_model_work_import_no_torch():
    """The data, filter, teacher (oracle), candidates and compare stages start in well under a second of imports."""
    code = """
import runpy, sys
for stage in ("data", "filter", "teacher", "candidates", "compare"):
    runpy.run_path(f"stages/{stage}.py", run_name="not_main")
heavy = sorted(m for m in ("torch", "transformers", "trl", "peft", "captum", "mlflow") if m in sys.modules)
print(",".join(heavy))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_a_stage_without_model_work_runs_without_torch(tmp_path):
    """The whole run, not just the imports: data@strategyqa seeds its generators (stage_main) and writes its splits
    without torch or transformers ever loaded (torch's import alone is ~3 s of a stage's start-up)."""
    text = (ROOT / "params.yaml").read_text().replace("scale: demo", "scale: tiny")
    (tmp_path / "params.yaml").write_text(text)
    code = f"""
import runpy, sys
sys.argv = [{str(ROOT / "stages" / "data.py")!r}, "strategyqa"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("heavy:" + ",".join(sorted(m for m in ("torch", "transformers") if m in sys.modules)))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "data/tasks/strategyqa/train.jsonl").is_file()
    assert "heavy:\n" in out.stdout, out.stdout  # nothing after the marker: neither was loaded


def test_the_base_cots_are_made_once_for_both_protocols(tiny_base, tokenizer, monkeypatch):
    from cotlab.data.sources import load_task
    from cotlab.methods import markovian as M

    model, _, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    test = load_task("arithmetic", {"source": "reasoning_gym", "dataset": "chain_sum",
                                    "config": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}},
                     4, 6, seed=0)["test"]
    protocol = dict(tokenizer=tokenizer, examples=test, cot_length=6, answer_tokens=3, batch_size=4,
                    cot_adapter=False)
    calls = []
    sample = M.TransformersSampler.sample
    monkeypatch.setattr(M.TransformersSampler, "sample", lambda self, *a, **k: calls.append(1) or sample(self, *a, **k))
    cache: dict = {}
    markovian = M.two_stage(model, False, markovian=True, cot_cache=cache, **protocol)
    shared = M.two_stage(model, False, markovian=False, cot_cache=cache, **protocol)
    n_shared = len(calls)
    fresh = M.two_stage(model, False, markovian=False, **protocol)
    assert n_shared == 2 and len(calls) == 4  # 6 questions in batches of 4: 2 sampling calls per protocol run
    assert set(cache) == {ex.id for ex in test}
    assert shared == fresh and [r["cot"] for r in markovian] == [r["cot"] for r in fresh]
    assert json.dumps(shared) == json.dumps(fresh)
