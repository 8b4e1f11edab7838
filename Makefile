# r1flow: `make run` installs (into .venv, if none yet) and runs the default recipe; `make test` runs the tests.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
FIND    := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)
RECIPE  ?= configs/default.yaml

.PHONY: run test test-slow install bench clean servers stop-servers

$(BIN)/r1flow: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode $(FIND) -e '.[dev]'
	touch $(BIN)/r1flow

install: $(BIN)/r1flow

run: install
	$(BIN)/r1flow data ensure $(RECIPE)
	$(BIN)/r1flow run $(RECIPE)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

servers: install    # Prefect :4200 and MLflow :5000 on 127.0.0.1 for this project (see README "Team set-up")
	$(BIN)/r1flow server start

stop-servers: install
	$(BIN)/r1flow server stop

bench: install
	$(BIN)/uv pip install -q --python $(BIN)/python $(FIND) -e '.[dev,bench]'
	$(BIN)/python bench/rollout.py

clean:
	rm -rf .r1flow runs mlruns mlflow.db
