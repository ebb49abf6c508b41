VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Node.js is only for `make test`'s official-SDK check; the proxy and the demo need Python.
NODE_STAMP := tests/clients/node_modules/.installed

.PHONY: install run test lint fmt bench soak mutate dist clean

SOAK_MINUTES ?= 10

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): tests/clients/package-lock.json
	npm ci --prefix tests/clients --no-audit --no-fund --silent
	touch $(NODE_STAMP)

run: $(STAMP)
	$(VENV)/bin/vipps-proxy demo

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) -m bench

soak: $(STAMP)
	$(PY) -m scripts.soak --minutes $(SOAK_MINUTES)

# Mutation testing of the security-critical modules: slow, not part of `make test` or CI.
# MUTATE_ARGS e.g. "proxy/access.py --sample 40".
mutate: $(STAMP)
	nice -n 10 $(PY) -m scripts.mutate $(MUTATE_ARGS)

# The wheel and the sdist in $(DIST) (the wheel is built from the sdist, as pip would).
DIST ?= dist
dist: $(STAMP)
	rm -rf $(DIST)
	$(PY) -m build --outdir $(DIST) .

clean:
	rm -rf mutants dist build $(VENV) .mypy_cache .pytest_cache .ruff_cache
