VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The proxy and its runtime dependencies only: all `make run` needs.
RUN_STAMP := $(VENV)/.installed-runtime
# Node.js is only for `make test`'s official-SDK check; the proxy and the demo need Python.
NODE_STAMP := tests/clients/node_modules/.installed

.PHONY: install lock run test lint fmt bench soak mutate dist clean

SOAK_MINUTES ?= 10

install: $(STAMP)

# Both install exactly the hashed pins of a lock file (requirements/), then the project
# itself (editable, no dependencies, built by the locked setuptools). `make run` takes
# the runtime pins only; the dev tools come on top for install, test and lint.
INSTALL_PROJECT := $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .

$(RUN_STAMP): pyproject.toml requirements/runtime.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/runtime.lock
	$(INSTALL_PROJECT)
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP) pyproject.toml requirements/dev.lock
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	touch $(STAMP)

# Re-resolves both lock files from pyproject.toml, keeping the pins they hold where the
# bounds still allow them; `make lock LOCK_ARGS=--upgrade` takes the newest allowed.
# Commit them with the pyproject.toml change.
LOCK := $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes
lock: $(STAMP)
	$(LOCK) $(LOCK_ARGS) pyproject.toml requirements/build.in -o requirements/runtime.lock
	$(LOCK) $(LOCK_ARGS) --extra tracing pyproject.toml requirements/build.in -o requirements/image.lock
	$(LOCK) $(LOCK_ARGS) --extra dev pyproject.toml requirements/build.in -o requirements/dev.lock

$(NODE_STAMP): tests/clients/package-lock.json
	npm ci --prefix tests/clients --no-audit --no-fund --silent
	touch $(NODE_STAMP)

# PORT=N: the proxy's port (default 8080)
run: $(RUN_STAMP)
	$(VENV)/bin/vipps-proxy demo $(if $(PORT),--port $(PORT))

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_imports.py tests/test_aiohttp_seam.py  # no import circles; aiohttp's private parts in one seam

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
