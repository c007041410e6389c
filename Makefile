# Two commands for a new user (see README.md):
#   make reproduce   # build .venv if missing, then run the workflow on config/config.yaml
#   make test        # build .venv if missing, then run the test suite (TEST_WORKERS pytest-xdist workers)
#   make test-fast   # the unit and shape tests, without the slow ones (pytest -m "(unit or shape) and not slow")
#   make smoke       # the workflow on its tiny config, .test/config/config.yaml (results in .test/results/)
#   make docs        # regenerate the measured tables of README.md and docs/ from docs/results/
PYTHON ?= python3.11
VENV ?= .venv
CORES ?= all
# The suite on three workers: tests that share a long fixture (a SLURM cluster, a workflow run) stay on one
# worker each (pytest.mark.xdist_group); the rest is spread over the others. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: reproduce test test-fast smoke lint dryrun report benchmark docs clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

reproduce: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=25

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "(unit or shape) and not slow"

smoke: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES) --directory .test

lint: $(VENV)/.installed
	$(BIN)/snakemake --lint

dryrun: $(VENV)/.installed
	$(BIN)/snakemake -n --cores $(CORES)

benchmark: $(VENV)/.installed
	$(BIN)/python -m benchmarks

docs: $(VENV)/.installed
	$(BIN)/python -m strdiffusion docs

clean:
	rm -rf results/builtin results/tables logs .snakemake
