# Two commands for a new machine with Python 3.11, pip, gcc and make:
#   make up     start the local system on embedded servers and show it working
#   make test   lint, type-check and run the whole suite against real servers
# Both create .venv and install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BUF    := .tools/node_modules/.bin/buf
CYPHER_LS_VERSION := 2.0.0-next.38
CYPHER_LS := .tools/.cypher-language-support-$(CYPHER_LS_VERSION)
PY_SRC := services tests scripts bench
# `make test` runs pytest in this many processes (pytest-xdist), each starting its own
# servers once: on 2 cores two halve the time (most of a test is waiting on servers).
# TEST_WORKERS=0 runs it in this process alone.
TEST_WORKERS ?= 2

.PHONY: install up down status test chaos lint proto proto-check buf-lint cypher-lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[local,dev]'
	@touch $(STAMP)

install: $(STAMP)

up: install
	$(BIN)/jetsource up

down: install
	$(BIN)/jetsource infra down

status: install
	$(BIN)/jetsource infra status

test: install lint
	$(BIN)/pytest -n $(TEST_WORKERS)

chaos: install
	$(BIN)/pytest -m chaos -s

lint: install proto-check buf-lint cypher-lint
	$(BIN)/ruff check $(PY_SRC)
	$(BIN)/ruff format --check $(PY_SRC)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/yamllint --strict -c deploy/yamllint.yaml docker-compose.yml helm/jetsource/Chart.yaml helm/jetsource/values.yaml helm/jetsource/values-production.yaml

proto: install
	$(BIN)/python scripts/genproto.py

proto-check: install
	$(BIN)/python scripts/genproto.py --check

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@1.75.0

# buf comes from npm: lint the contracts where npm exists, say so where it does not.
buf-lint:
	@if command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(BUF) && $(BUF) lint && echo "buf lint: clean"; \
	else echo "buf lint skipped: npm not found"; fi

$(CYPHER_LS):
	npm install --silent --no-audit --no-fund --save-exact --prefix .tools @neo4j-cypher/language-support@$(CYPHER_LS_VERSION)
	@touch $@

# Neo4j's own Cypher grammar and semantic analysis (from npm, like buf) over every
# statement the graph model sends: a statement ArcadeDB accepts but Neo4j 5 rejects fails.
cypher-lint: install
	@if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(CYPHER_LS) && \
		$(BIN)/python -m tests.cypher_collect >.tools/cypher-statements.json && \
		node scripts/cypher-lint.mjs --summary --strict <.tools/cypher-statements.json; \
	else echo "cypher lint skipped: npm not found"; fi

# Every benchmark, beside its peers, into bench/results.md (the README's tables, each
# figure beside its aim). Minutes, on a quiet machine. `make bench BENCH_ARGS=--quick`:
# small sizes, about a minute, checks the benchmarks run (their figures mean nothing).
bench: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[local,dev,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
