"""Batched greedy generation.

Prompts are sorted by length so each batch pads little, left-padded so every row's generation starts at the
same position, and returned in the original order.

A row ends at the end-of-turn token, or, given a `stop` pattern (the template's, from cotlab.prompts), as soon as
its text matches it: "The answer is: X" followed by a newline ends a CoT, so a 128-token cap is reached only by
outputs that never give an answer line. A stop pattern always ends with a newline, so a row's text is decoded and
matched only on the steps where it emits one. A row is truncated when it hit max_new_tokens without either.

`generation.backend` (params.yaml) picks transformers or vLLM (load_generator). vLLM has no regex stop: it decodes
each row to eos or the cap and the row is cut afterwards where the pattern would have stopped it, so texts and flags
are those of the transformers path.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from cotlab.config import ConfigError
from cotlab.models import checked_base, load_checkpoint, load_tokenizer, read_manifest, resolve_device
from cotlab.progress import progress


@dataclass
class Generation:
    text: str
    truncated: bool
    n_new_tokens: int


class StopOnPattern:
    """A transformers StoppingCriteria: True for each row whose new text matches `pattern`."""

    def __init__(self, tokenizer, pattern: re.Pattern, prompt_length: int):
        self.tokenizer, self.pattern, self.prompt_length = tokenizer, pattern, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = self.tokenizer.batch_decode(input_ids[:, -1:])
        for row, piece in enumerate(last):
            if "\n" in piece:
                text = self.tokenizer.decode(input_ids[row, self.prompt_length:], skip_special_tokens=True)
                done[row] = self.pattern.search(text) is not None
        return done


def _criteria(tokenizer, stop: str | None, prompt_length: int):
    if stop is None:
        return None
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StopOnPattern, StoppingCriteria):
        pass

    return StoppingCriteriaList([_Stop(tokenizer, re.compile(stop), prompt_length)])


MIN_SHARED_PREFIX = 16  # tokens: a shorter shared prefix saves less than copying its cache per batch costs


def shared_prefix_length(token_ids: Sequence[Sequence[int]], minimum: int = MIN_SHARED_PREFIX) -> int:
    """The number of leading tokens every prompt shares (the chat template, a system prompt, few-shot exemplars, a
    universe), leaving each prompt at least one token of its own; 0 below `minimum`."""
    n = min(len(ids) for ids in token_ids) - 1
    first = token_ids[0]
    for ids in token_ids[1:]:
        n = next((k for k in range(n) if ids[k] != first[k]), n)
    return n if n >= minimum else 0


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
             stop: str | None = None, desc: str = "generate", prefix_cache: bool = True) -> list[Generation]:
    """`model`: a transformers model or a VLLMGenerator (load_generator); `stop`: a regular expression ending in a
    newline; a row whose new text matches it stops there. `prefix_cache`: the tokens all prompts share are run once
    and their KV cache copied into every batch (each row is its prompt's own tokens either way: the padding sits
    between the shared prefix and the row's rest, masked, with the positions of the unpadded prompt)."""
    if stop is not None and not stop.endswith("\\n"):
        raise ValueError(f"stop pattern {stop!r} must end with a newline (\\n): rows are matched when they emit one")
    if isinstance(model, VLLMGenerator):  # vLLM caches shared prefixes itself
        return model.generate(tokenizer, prompts, max_new_tokens, stop, desc)
    device = next(model.parameters()).device
    stop_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    pattern = re.compile(stop) if stop else None
    token_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    shared = shared_prefix_length(token_ids) if prefix_cache and len(prompts) > 1 else 0
    prefix = torch.tensor([token_ids[0][:shared]], device=device)
    cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).cache if shared else None
    order = sorted(range(len(prompts)), key=lambda i: len(token_ids[i]))
    results: list[Generation | None] = [None] * len(prompts)
    with progress(total=len(prompts), desc=desc, unit="prompt") as bar:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            rests = [token_ids[i][shared:] for i in index]
            width = max(len(r) for r in rests)
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rests], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rests], device=device)
            kwargs = {}
            if shared:
                ids = torch.cat([prefix.expand(len(index), -1), ids], dim=1)
                mask = torch.cat([torch.ones(len(index), shared, dtype=mask.dtype, device=device), mask], dim=1)
                kwargs["cache"] = copy.deepcopy(cache)
                kwargs["cache"].batch_repeat_interleave(len(index))
            prompt_length = ids.shape[1]
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=_criteria(tokenizer, stop, prompt_length),
                **kwargs,
            )
            new_tokens = output[:, prompt_length:]
            for row, i in zip(new_tokens.tolist(), index):
                end = next((k for k, tok in enumerate(row) if tok in stop_ids), None)
                # Rows that finished early are padded to the batch's length: not truncation.
                results[i] = _generation(tokenizer, row if end is None else row[:end], end is not None, pattern)
            bar.update(len(index))
    return results  # type: ignore[return-value]


def _generation(tokenizer, kept: list[int], ended: bool, pattern: re.Pattern | None) -> Generation:
    """`ended`: the row stopped at eos/pad before the cap. A row that stopped on its pattern at the very last token
    is not truncated either."""
    text = tokenizer.decode(kept, skip_special_tokens=True)
    stopped = pattern is not None and pattern.search(text) is not None
    return Generation(text=text, truncated=not ended and not stopped, n_new_tokens=len(kept))


def _pattern_end(tokenizer, pattern: re.Pattern, tokens: list[int]) -> int | None:
    """The length at which StopOnPattern stops `tokens`: the first token with a newline after which the new text
    matches."""
    for k, tok in enumerate(tokens):
        if "\n" in tokenizer.decode([tok]) and pattern.search(tokenizer.decode(tokens[:k + 1],
                                                                               skip_special_tokens=True)):
            return k + 1
    return None


# ---------------------------------------------------------------- backends

def resolve_backend(backend: str, on_cuda: bool) -> str:
    """generation.backend -> "transformers" or "vllm"; auto: vLLM when it is installed and the model is on CUDA."""
    has_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "vllm" and not (has_vllm and on_cuda):
        raise ConfigError(f"generation.backend: 'vllm' needs the vllm package and a CUDA device (vllm installed: "
                          f"{has_vllm}, model on CUDA: {on_cuda}); use auto or transformers")
    return "vllm" if backend == "vllm" or (backend == "auto" and has_vllm and on_cuda) else "transformers"


_ENGINES: dict[tuple, object] = {}
_LORA_IDS = itertools.count(1)


def vllm_engine(base_path, gpu_memory_utilization: float, dtype: str | None = None, lora_rank: int | None = None):
    """One vLLM engine per base model (and LoRA capacity) per process, reused by every later checkpoint on it: they
    differ only in their adapter, and vLLM does not reliably give a dropped engine's GPU memory back."""
    from vllm import LLM

    rank = None if lora_rank is None else max(8, 1 << (lora_rank - 1).bit_length())  # vLLM's ranks: powers of 2
    key = (str(Path(base_path).resolve()), gpu_memory_utilization, dtype, rank)
    if key not in _ENGINES:
        lora = {} if rank is None else {"enable_lora": True, "max_lora_rank": rank}
        # dtype: the base's stored one, as transformers loads it (vLLM's auto would halve a float32 base).
        _ENGINES[key] = LLM(model=key[0], gpu_memory_utilization=gpu_memory_utilization, dtype=dtype or "auto",
                            seed=0, **lora)
    return _ENGINES[key]


def lora_request(path):
    """The adapter folder as a LoRARequest with an id of its own: vLLM caches adapters by id, so a reused id would
    serve the adapter loaded first."""
    from vllm.lora.request import LoRARequest

    n = next(_LORA_IDS)
    return LoRARequest(f"adapter-{n}", n, str(path))


class VLLMGenerator:
    """vLLM behind generate(): `engine` is a vllm.LLM on the base model (or anything with its generate: tests pass a
    fake), `lora` the checkpoint's adapter as a LoRARequest, None for the base itself."""

    def __init__(self, engine, lora=None):
        self.engine, self.lora = engine, lora

    def generate(self, tokenizer, prompts: Sequence[str], max_new_tokens: int, stop: str | None,
                 desc: str) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        stop_ids = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id} - {None})
        # ignore_eos + stop_token_ids: stop where transformers does (the tokenizer's eos, and pad, which the
        # transformers rows are cut at), not also at extra eos ids of the model's generation config.
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, ignore_eos=True, stop_token_ids=stop_ids)
        # Token ids tokenized as the transformers path does (no special tokens added: the chat template has them).
        inputs = [TokensPrompt(prompt_token_ids=tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        pattern = re.compile(stop) if stop else None
        with progress(total=len(prompts), desc=desc, unit="prompt") as bar:
            outputs = self.engine.generate(inputs, params, lora_request=self.lora, use_tqdm=False)
            bar.update(len(prompts))
        results = []
        for out in outputs:
            row = list(out.outputs[0].token_ids)
            end = next((k for k, tok in enumerate(row) if tok in stop_ids), None)
            kept = row if end is None else row[:end]
            cut = _pattern_end(tokenizer, pattern, kept) if pattern is not None else None
            # A row shorter than the cap ended (whether or not vLLM kept its stop token in token_ids).
            results.append(_generation(tokenizer, kept if cut is None else kept[:cut],
                                       end is not None or len(row) < max_new_tokens, pattern))
        return results


def load_generator(path, device: str, generation):
    """(model, tokenizer, manifest) for generate() by `generation` (params.generation): the checkpoint through
    load_checkpoint (transformers, a LoRA adapter merged), or a VLLMGenerator: vLLM serves a LoRA checkpoint as its
    base model's engine plus the adapter folder (a LoRARequest), not as a merged in-memory model. A checkpoint it
    cannot serve so (a 4-bit base, extra modules such as added embedding rows) stays on transformers under auto."""
    path = Path(path)
    manifest = read_manifest(path)
    base = manifest["kind"] == "base"
    plain = base or (manifest["quantization"] == "none" and not manifest.get("extra_modules"))
    backend = resolve_backend(generation.backend, resolve_device(device) == "cuda")
    if backend == "vllm" and not plain:
        if generation.backend == "vllm":
            extra = sorted(manifest.get("extra_modules") or {})
            raise ConfigError(f"generation.backend: 'vllm' cannot serve {path} (quantization "
                              f"{manifest['quantization']!r}, extra modules {extra}); use auto or transformers")
        backend = "transformers"
    if backend == "transformers":
        return load_checkpoint(path, device)
    base_path = path if base else checked_base(path, manifest)
    engine = vllm_engine(base_path, generation.gpu_memory_utilization, read_manifest(base_path).get("dtype"),
                         None if base else manifest["adapter"]["r"])
    return VLLMGenerator(engine, None if base else lora_request(path)), load_tokenizer(path), manifest
