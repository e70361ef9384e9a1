# The README's two commands are `make run` and `make test`; both install first if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-all bench data clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

run: install
	$(BIN)/bandit-sim run
	$(BIN)/python scripts/update_readme.py

# lint-imports checks the layers (contracts in pyproject.toml) before the tests run.
test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -m ''

# Kernel throughput vs NumPy/MABWiser, router latency, token-model fit time, serve overhead (JSON under results/bench).
bench: install
	$(BIN)/bandit-sim bench --out results/bench
	$(BIN)/python benchmarks/bench_router.py --out results/bench/router.json
	$(BIN)/python -m benchmarks.bench_tokens --out results/bench/tokens.json
	$(BIN)/python benchmarks/bench_serve.py --out results/bench/serve.json
	$(BIN)/python scripts/update_readme.py

# Rebuild the bundled parquet files from ../shared/datasets (maintainers only).
data: install
	$(BIN)/python scripts/build_bundled_data.py --src ../shared/datasets --out bandit_sim/data/bundled

clean:
	rm -rf $(VENV) build *.egg-info
