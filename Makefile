# The two set-up commands: `make serve` runs Levity on its embedded defaults,
# `make test` runs the whole suite (installing what it needs first).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve test test-fast lint bench clean

$(BIN)/levity: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,deploy,bench,postgresql]'
	touch $@

serve: $(BIN)/levity
	$(BIN)/levity serve

# Deploy tests need podman and a locally built Debian image: scripts/test-host-setup.sh
# installs and builds them (idempotent; needs root and apt, as on CI).
test: $(BIN)/levity
	bash scripts/test-host-setup.sh
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -ra

test-fast: $(BIN)/levity
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -ra -m "not deploy"

# The load benchmark (docs/benchmark.md): levity vs a plain ocpp-library server vs a
# websockets echo server, same client; per core (server pinned to the first CPU, client and
# receiver on the others: by call type, audit on/off, the reconnect storm), then the whole
# machine; prints the tables, writes bench.json and bench.png.
bench: $(BIN)/levity
	$(BIN)/python -m benchmarks.bench --per-core --json bench.json --plot bench.png $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info levity.db levity-spool levity-audit.jsonl
