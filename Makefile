# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
# Both do all the set-up on a fresh machine. Everything lives in .venv; torch is installed as the
# CPU build first (TORCH_SPEC) so that resolving the project never pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit data bench chaos clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/pyrecover demo

data: setup
	$(BIN)/pyrecover data prepare

lint: setup
	$(BIN)/ruff check controller worker shared migrations tests bench
	$(BIN)/ruff format --check controller worker shared tests bench

typecheck: setup
	$(BIN)/mypy controller shared

# Two phases (tests/suite.py): one test at a time, then the tests that mostly wait on SLURM
# several at once. Nothing collected in both phases fails too: an empty run proves nothing.
test: lint typecheck
	@$(BIN)/python tests/suite.py $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/run_all.py

# The fault-injection suite with more trials than CI runs (PYRECOVER_CHAOS_TRIALS, default 100;
# PYRECOVER_CHAOS_SEED replays a run), then the fault cases on the real SLURM cluster (tests marked
# chaos: node failure, preemption, hangs, divergence, report outage, corrupt checkpoints)
# PYRECOVER_CHAOS_REPEAT times (default 3); ends with the table of figures (docs/fault-results.md).
chaos: setup
	@mkdir -p var && rm -f var/chaos-results.jsonl; rc=0; \
	PYRECOVER_CHAOS_RESULTS=var/chaos-results.jsonl PYRECOVER_CHAOS_TRIALS=$${PYRECOVER_CHAOS_TRIALS:-100} \
		$(BIN)/python -m pytest tests/fault -m "slow or not slow" -rfEs $(PYTEST_ARGS) || rc=$$?; \
	for i in $$(seq $${PYRECOVER_CHAOS_REPEAT:-3}); do \
		PYRECOVER_CHAOS_RESULTS=var/chaos-results.jsonl $(BIN)/python -m pytest tests/integration -m chaos \
			-rfEs $(PYTEST_ARGS) || rc=$$?; \
	done; \
	$(BIN)/python tests/fault/results_table.py var/chaos-results.jsonl; exit $$rc

clean:
	rm -rf $(VENV) var data .pytest_cache .mypy_cache .ruff_cache
