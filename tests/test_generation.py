"""The vLLM backend of generation (cotlab.evaluation.generate, Markovian sampling), without vLLM: a fake `vllm`
package whose engine decodes with transformers and answers in vLLM's shapes. The vLLM path must give exactly the
transformers path's Generations: vLLM has no regex stop, so its rows are cut afterwards where the pattern would
have stopped them."""
import dataclasses
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from conftest import LORA
from cotlab.config import ConfigError, GenerationConfig
from cotlab.evaluation import generate as G
from cotlab.methods import markovian as M
from cotlab.models import load_checkpoint, load_for_training, read_manifest, save_adapter
from cotlab.schema import Example

SAMPLING_DEFAULTS = dict(n=1, temperature=1.0, top_k=-1, top_p=1.0, max_tokens=16, min_tokens=0, ignore_eos=False,
                         stop_token_ids=None)


@dataclasses.dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class FakeLLM:
    """vllm.LLM.generate on a transformers model: the prompts decoded as one left-padded batch, each row returned as
    vLLM does (its token ids up to and including a stop token), n rows per prompt. Records what it was given."""

    keep_stop = True  # whether a row's stop token stays in its token_ids (cotlab must not depend on it)

    def __init__(self, model, tokenizer=None, **kwargs):
        if isinstance(model, str):  # built by vllm_engine from the base folder
            self.path, (model, tokenizer, _) = model, load_checkpoint(model, "cpu")
        self.model, self.tokenizer, self.kwargs, self.calls = model, tokenizer, kwargs, []

    @torch.no_grad()
    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        rows = [p["prompt_token_ids"] for p in prompts]
        self.calls.append({"prompt_token_ids": rows, "params": params, "lora_request": lora_request})
        pad, width = self.tokenizer.pad_token_id, max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        stops = set(params.stop_token_ids or []) | (set() if params.ignore_eos else {self.tokenizer.eos_token_id})
        kwargs = dict(max_new_tokens=params.max_tokens, min_new_tokens=params.min_tokens,
                      num_return_sequences=params.n, do_sample=params.temperature > 0, pad_token_id=pad)
        if stops:
            kwargs["eos_token_id"] = sorted(stops)
        if params.temperature > 0:
            kwargs.update(temperature=params.temperature, top_k=0, top_p=1.0)
        new = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, width:].tolist()
        cut = [next((row[:k + self.keep_stop] for k, t in enumerate(row) if t in stops), row) for row in new]
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=tuple(c))
                                               for c in cut[i * params.n:(i + 1) * params.n]])
                for i in range(len(rows))]


@pytest.fixture
def fake_vllm(monkeypatch):
    """The few vllm names cotlab uses, as importable modules (TokensPrompt is vLLM's TypedDict: a dict)."""
    modules = {name: types.ModuleType(name) for name in ("vllm", "vllm.inputs", "vllm.lora", "vllm.lora.request")}
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec("vllm") finds it
        monkeypatch.setitem(sys.modules, name, module)
    modules["vllm"].LLM = FakeLLM
    modules["vllm"].SamplingParams = lambda **kw: types.SimpleNamespace(**{**SAMPLING_DEFAULTS, **kw})
    modules["vllm.inputs"].TokensPrompt = dict
    modules["vllm.lora.request"].LoRARequest = LoRARequest
    monkeypatch.setattr(G, "_ENGINES", {})


class Script:
    """Steers the tiny random model: its greedy next token is the one after the first earlier occurrence of the
    row's last token (an induction head), so each prompt spells out its continuation. The embedding hook sees every
    token the model reads, so it keeps each row's history."""

    def __init__(self, model):
        self.rows = []
        self.handles = [model.get_input_embeddings().register_forward_hook(self.read),
                        model.get_output_embeddings().register_forward_hook(self.steer)]

    def read(self, module, args, output):
        ids = args[0].tolist()
        self.rows = ids if len(ids[0]) > 1 else [r + t for r, t in zip(self.rows, ids)]

    def steer(self, module, args, logits):
        logits = logits.clone()
        for b, row in enumerate(self.rows):
            j = next((k for k in range(len(row) - 1) if row[k] == row[-1]), None)
            if j is not None:
                logits[b, -1, row[j + 1]] += 1e4
        return logits


STOP = r"The answer is: \w+\n"
PROMPTS = ["Let me think.\nThe answer is: yes\nLet",  # -> " me think.\nThe answer is: yes\n": stopped by STOP
           "x a b c a",  # -> " b c a b c ...": truncated
           "go one two three<|im_end|>four one"]  # -> " two three", then eos


@pytest.fixture
def scripted(tiny_base):
    model, tokenizer, _ = load_checkpoint(tiny_base, "cpu")
    script = Script(model)
    yield model, tokenizer
    for handle in script.handles:
        handle.remove()


@pytest.mark.parametrize("max_new_tokens", [10, 16])  # 10: the pattern's row stops on its very last token
@pytest.mark.parametrize("stop", [STOP, None])
def test_vllm_path_gives_the_transformers_generations(scripted, fake_vllm, stop, max_new_tokens):
    model, tokenizer = scripted
    engine = FakeLLM(model, tokenizer)
    reference = G.generate(model, tokenizer, PROMPTS, max_new_tokens, batch_size=2, stop=stop)
    assert G.generate(G.VLLMGenerator(engine), tokenizer, PROMPTS, max_new_tokens, stop=stop) == reference
    engine.keep_stop = False
    assert G.generate(G.VLLMGenerator(engine), tokenizer, PROMPTS, max_new_tokens, stop=stop) == reference
    answer = " me think.\nThe answer is: yes\n"
    expected = [(answer, False, 10) if stop else (None, True, max_new_tokens),
                (None, True, max_new_tokens), (" two three", False, 2)]
    for gen, (text, truncated, n) in zip(reference, expected):
        assert (gen.truncated, gen.n_new_tokens) == (truncated, n) and text in (None, gen.text)
    if stop is None:
        assert reference[0].text.startswith(answer)  # the pattern's row runs on without its stop
    call = engine.calls[-1]
    assert call["prompt_token_ids"] == [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    params = call["params"]
    assert (params.temperature, params.max_tokens, params.stop_token_ids) == (0.0, max_new_tokens,
                                                                            [tokenizer.eos_token_id])


def test_load_generator_serves_a_lora_checkpoint_as_base_plus_adapter(tiny_base, fake_vllm, monkeypatch, tmp_path):
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    out = tmp_path / "sft"
    save_adapter(model, tokenizer, out, tiny_base, "sft", "cot", "none", {})
    monkeypatch.setattr(G, "resolve_backend", lambda backend, on_cuda: "vllm")  # as on CUDA
    generator, tok, manifest = G.load_generator(out, "cpu", GenerationConfig(backend="vllm",
                                                                             gpu_memory_utilization=0.25))
    assert isinstance(generator, G.VLLMGenerator) and manifest["method"] == "sft"
    assert generator.lora.lora_path == str(out)
    engine = generator.engine
    assert engine.path == str(Path(tiny_base).resolve())
    assert engine.kwargs == {"gpu_memory_utilization": 0.25, "dtype": read_manifest(tiny_base)["dtype"], "seed": 0,
                             "enable_lora": True, "max_lora_rank": 8}  # the base's stored dtype, as transformers
    G.generate(generator, tok, ["a b a"], 3)
    assert engine.calls[-1]["lora_request"] is generator.lora
    # another checkpoint on the same base: the same engine, a LoRARequest with an id of its own
    again, _, _ = G.load_generator(out, "cpu", GenerationConfig(backend="vllm", gpu_memory_utilization=0.25))
    assert again.engine is engine and again.lora.lora_int_id != generator.lora.lora_int_id
    base, _, _ = G.load_generator(tiny_base, "cpu", GenerationConfig(backend="vllm"))
    assert base.lora is None and "enable_lora" not in base.engine.kwargs


def test_backend_resolution_without_vllm(tiny_base):
    assert importlib.util.find_spec("vllm") is None
    assert G.resolve_backend("auto", True) == "transformers"
    with pytest.raises(ConfigError, match=r"generation.backend: 'vllm' needs the vllm package.*installed: False"):
        G.resolve_backend("vllm", True)
    model, _, _ = G.load_generator(tiny_base, "cpu", GenerationConfig())
    assert isinstance(model, torch.nn.Module)


def test_backend_resolution_with_vllm(fake_vllm):
    assert G.resolve_backend("auto", True) == "vllm"
    assert G.resolve_backend("auto", False) == G.resolve_backend("transformers", True) == "transformers"
    with pytest.raises(ConfigError, match=r"generation.backend.*model on CUDA: False"):
        G.resolve_backend("vllm", False)


def test_vllm_sampler_gives_exactly_length_tokens_n_rows_per_prompt(actor, fake_vllm, tmp_path):
    model, tokenizer = actor
    engine = FakeLLM(model, tokenizer)
    sampler = M.VLLMSampler(model, tokenizer, "unused", tmp_path, engine=engine)
    prompts = [M.cot_prompt_ids(tokenizer, ex, 7) for ex in
               [Example(id=f"a{i}", question=f"{i} + 2 =", answer=str(i + 2), answer_type="number") for i in range(2)]]
    eos = tokenizer.eos_token_id
    hook = model.get_output_embeddings().register_forward_hook(  # eos made likely: only min_tokens holds it off
        lambda m, i, out: out.index_add(-1, torch.tensor([eos]), torch.full((*out.shape[:-1], 1), 50.0, dtype=out.dtype)))
    try:
        cots = sampler.sample(prompts, 3, 7, 1.0)
        greedy = sampler.sample(prompts, 1, 5, 0.0, adapter=False)
    finally:
        hook.remove()
    assert cots.shape == (6, 7) and greedy.shape == (2, 5)
    sampled, frozen = engine.calls
    assert sampled["prompt_token_ids"] == prompts and frozen["lora_request"] is None
    assert (Path(sampled["lora_request"].lora_path) / "adapter_config.json").is_file()


def test_budget_forcing_on_vllm_gives_the_transformers_rows(tiny_base, fake_vllm, examples):
    """evaluate's forced answers (cotlab.evaluation.run) go through generate(): on vLLM as one more engine call, on
    the forced rows only, with the same rows as transformers."""
    from cotlab.evaluation.run import FORCED_ANSWER_CUE, evaluate

    model, tokenizer, _ = load_checkpoint(tiny_base, "cpu")
    test = examples["test"]
    reference = evaluate(model, tokenizer, test, "cot", 3, 4, force_answer_tokens=5)
    engine = FakeLLM(model, tokenizer)
    assert evaluate(G.VLLMGenerator(engine), tokenizer, test, "cot", 3, 4, force_answer_tokens=5) == reference
    forced = [p for p in reference[0] if p["forced"]]
    assert forced and len(engine.calls) == 2
    second = engine.calls[1]
    assert second["params"].max_tokens == 5
    assert second["prompt_token_ids"] == [tokenizer(p["prompt"] + p["output"].split(FORCED_ANSWER_CUE)[0]
                                                    + FORCED_ANSWER_CUE, add_special_tokens=False)["input_ids"]
                                          for p in forced]
