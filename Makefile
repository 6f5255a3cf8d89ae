# StreamMachine: `make run` shows a live demo, `make test` runs the whole suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-versions check lint format bench bench-quick chaos soak clean docs docs-build

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	REDIS_URL=memory:// $(BIN)/streammachine run examples/demo.py:app --dashboard

test: $(STAMP)
	$(BIN)/pytest -q

test-versions: $(STAMP)
	$(BIN)/python scripts/test_versions.py

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

chaos: $(STAMP)
	$(BIN)/python scripts/chaos.py

# One minute of the seeded soak per server (CI): `make soak SERVER=6.2 [SEED=N] [SOAK_S=60]`.
SOAK_S ?= 60
soak: $(STAMP)
	$(BIN)/python scripts/chaos.py --soak $(SOAK_S) $(if $(SERVER),--server $(SERVER)) $(if $(SEED),--seed $(SEED))

# Every benchmark, its variants in alternating rounds (ROUNDS=5 by default); figures only, never a
# pass/fail on time. bench-quick: tiny sizes and 2 rounds, to prove they all still run.
ROUNDS ?= 5
bench: $(STAMP)
	@for script in scripts/bench_*.py; do echo "== $$script"; $(BIN)/python $$script --rounds $(ROUNDS) || exit 1; done

bench-quick: $(STAMP)
	@for script in scripts/bench_*.py; do echo "== $$script"; $(BIN)/python $$script --quick || exit 1; done

# The documentation site (mkdocs.yml): served with live reload, or built strictly into site/.
docs: $(STAMP)
	$(BIN)/mkdocs serve

docs-build: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist site *.egg-info
