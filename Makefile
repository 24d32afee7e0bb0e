# The two commands of the README. Both create .venv with the interpreter in $(PYTHON) (3.10+).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench schema clean

demo: $(VENV)/.server   ## local MLflow server (SQLite, in .importer-demo/), sample_logs/ imported
	$(BIN)/importer demo

test: $(VENV)/.test     ## the whole test suite, against real mlflow servers it starts itself
	$(BIN)/python -m pytest

bench: $(VENV)/.test    ## throughput and memory figures (minutes; not a test)
	$(BIN)/python bench/bench_import.py

schema: $(VENV)/.test   ## regenerate the checked-in JSON Schemas and the service's OpenAPI document
	$(BIN)/importer schema > schemas/run-manifest.schema.json
	$(BIN)/importer schema --bundle > schemas/bundle.schema.json
	$(BIN)/python -m importer.service.app > schemas/service.openapi.json

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	touch $@

$(VENV)/.server: $(VENV)/.created pyproject.toml
	$(BIN)/python -m pip install -q -e ".[server,tensorboard,wandb]"
	touch $@

$(VENV)/.test: $(VENV)/.created pyproject.toml
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.server

clean:
	rm -rf $(VENV) .importer-demo
