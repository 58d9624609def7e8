# loopline: `make demo` runs the whole loop on embedded defaults; `make test` runs every test.
# Both create the virtual environment (.venv) on first use and reuse it afterwards.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Every package of the environment at the exact version CI verified; `make lock` regenerates it.
CONSTRAINTS := constraints.txt
LOCK_VENV := .venv-lock

export LOOPLINE_HOME ?= $(CURDIR)/.loopline
export PREFECT_HOME ?= $(LOOPLINE_HOME)/prefect
export BENTOML_HOME ?= $(LOOPLINE_HOME)/bentoml
# No network here, and no phoning home on a laptop either.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: venv lock demo test test-fast lint system-deps bench prefect-ui mlflow-ui clean

venv: $(STAMP)

# torch first and alone: `torch==2.13.0` is a local CPU build on these machines; letting pip
# resolve torch through Lightning would fetch the newest CUDA build (several GB). Everything is
# installed at the versions in constraints.txt, so a fresh clone gets the set CI verified.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	$(PY) -m pip check
	touch $(STAMP)

# Upgrading is this one command: resolve pyproject.toml's ranges afresh in a throwaway
# environment and write what was installed to constraints.txt; then `make test` decides.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	$(LOCK_VENV)/bin/python -m pip check
	$(LOCK_VENV)/bin/python scripts/write_constraints.py $(LOCK_VENV)/bin/python $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

demo: $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint system-deps
	$(PY) -m pytest

# PostgreSQL and Chromium from Debian's archive, for the scale-out and UI test tiers.
system-deps:
	bash scripts/system-deps.sh

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Every benchmark of bench/, side by side with its peer; results in bench/results.json and .md.
bench: $(STAMP)
	$(PY) -m bench

prefect-ui: $(STAMP)
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 --workers 1 \
	  --backend-store-uri sqlite:///$(LOOPLINE_HOME)/mlflow/mlflow.db

clean:
	rm -rf $(LOOPLINE_HOME)
