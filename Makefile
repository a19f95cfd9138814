# Every target sets itself up: a fresh clone needs only python3 (3.11+).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all install demo test lint proto proto-check crds bench clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The operator's main job on its embedded default: emulated API server, simulated nodes, live status.
demo: $(STAMP)
	$(VENV)/bin/gadget-operator demo

## The whole suite: stale stubs, lint, types, tests (e2e tests run only with GADGET_E2E_KUBECONFIG).
test: $(STAMP) proto-check lint
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check operator tests bench tools
	$(VENV)/bin/ruff format --check operator tests bench tools
	$(VENV)/bin/mypy

proto: $(STAMP)
	$(PY) tools/protogen.py

proto-check: $(STAMP)
	$(PY) tools/protogen.py --check

crds: $(STAMP)
	$(PY) tools/crdgen.py

bench: $(STAMP)
	cd bench && ../$(PY) run.py $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info operator/*.egg-info
