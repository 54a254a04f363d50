# The two commands of the README's quick start. Each installs what it needs on a fresh machine.
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= disabled

.PHONY: install run test lint bench tables docs

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) run.py --multirun experiment=default
	$(PY) scripts/make_tables.py

tables: install
	$(PY) scripts/make_tables.py

test: install  # FAST=1 skips the slow end-to-end runs
	$(PY) -m pytest -q $(if $(FAST),-m "not slow")

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) scripts/bench_prune.py

docs: install  # the documentation site (docs/, mkdocs.yml) into build/site; warnings are errors
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site
