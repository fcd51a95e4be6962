# Quick start: `make demo` runs the pipeline on a simulated head phantom; `make test` runs
# the test suite. Each creates the virtual environment .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean container-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qsm-bids demo qsm_bids_demo

test: $(STAMP)
	NIPYPE_NO_ET=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: $(STAMP)
	$(BIN)/ruff check qsm_bids tests benchmarks
	$(BIN)/ruff format --check qsm_bids tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_pipeline.py

container-check:
	scripts/container_check.sh

clean:
	rm -rf qsm_bids_demo work .pytest_cache
