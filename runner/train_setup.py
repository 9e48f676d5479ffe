"""Everything a training run does before its first step, on the :class:`runner.train.Recipe` it
fills: the seed, ``model.pooling=auto`` resolved, the dir locked and checked (fresh, or the same run
resumed), data and model loaded, the head and what trains, the data loaders, the run dir's first
files and the tracker, the optimizer, Accelerate's wrappers, the step counts and LR schedule, the
method's context, and on resume the checkpoint restored. Bad input stops here, before anything is
logged or written.

Each function takes the :class:`runner.train.Recipe` it fills (``recipe``; not imported here,
which would make an import cycle).
"""

from __future__ import annotations

import logging
import math
import sys

import numpy as np
import torch
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from transformers import get_scheduler

from runner import checkpoint, data as data_lib, run_files, runs, train_state
from runner.adapters import parameter_counts, prepare_trainable, target_modules, trained_head_modules
from runner.arch import architecture_of
from runner.atomic_io import atomic_write_text
from runner.classifier_heads import head_parameter_count, settle_pooling, start_regression_bias
from runner.methods import LoopContext
from runner.models import check_per_layer_methods, load_model_and_tokenizer, model_source, resolve_model_path
from runner.preflight.config import resolved_config
from runner.preflight.errors import ConfigError
from runner.results import STATUS_COMPLETED, read_record, write_running
from runner.tracking import Tracker

log = logging.getLogger(__name__)


def setup(recipe) -> None:
    cfg = recipe.cfg
    with recipe.timer.phase("setup"):
        set_seed(cfg.seed)
        model_path = resolve_model_path(cfg.model.name_or_path)  # a missing local model fails before the data is read
        resolve_pooling_of(recipe, model_path)  # before the resume check: config.yaml holds the resolved choice
        recipe.lock.acquire()  # one run per dir at a time
        recipe.resume_state = check_output_dir(recipe)
        model = load_model_and_data(recipe)  # bad input stops here, before anything is logged or written
        recipe.fingerprint = experiment_fingerprint(recipe)
        if recipe.resume_state is not None:  # the same experiment, not only the same config.yaml
            recipe.accepted_changes = runs.check_same_experiment(recipe.resume_state.get("fingerprint"), recipe.fingerprint,
                                                               bool(cfg.get("resume_accept_changes")))
        start_record(recipe)
        prepare(recipe, model)
        recipe.adopt(recipe.method.setup(recipe.ctx))  # SAFE with safe.policy=static freezes (and may re-wrap) here
        if recipe.resume_state is not None:
            train_state.restore(recipe, recipe.resume_state)



def experiment_fingerprint(recipe) -> dict:
    """What a resume must find unchanged (results.json "fingerprint", each checkpoint's meta.json)."""
    n = recipe.accelerator.num_processes
    return {"weights": recipe.model_source.get("weights"), "data": data_lib.fingerprint(recipe.data), "world_size": n,
            "effective_batch": int(recipe.cfg.trainer.batch_size) * int(recipe.cfg.trainer.grad_accum_steps) * n}



def load_model_and_data(recipe):
    """Data, model, tokenizer, the head and what trains, and the data loaders; returns the model."""
    cfg = recipe.cfg
    recipe.data = data_lib.load_task_splits(cfg.task)
    model, recipe.tokenizer = load_model_and_tokenizer(cfg.model, cfg.task)
    # which model ran (results.json "model_source"); the weights' fingerprint only for training runs
    recipe.model_source = model_source(cfg.model, resolve_model_path(cfg.model.name_or_path), model.config)
    check_per_layer_methods(cfg, model.config)  # ALBERT: SAFE and pruning refuse before training
    check_sequence_length(int(cfg.trainer.max_seq_length), recipe.tokenizer, model.config, list(cfg.task.text_keys))
    recipe.head = start_head(recipe, model)
    if cfg.method.uses_adapters:  # what trains beside the adapters, named on the plain model
        recipe.head["trains"] = trained_head_modules(model, cfg)
        recipe.head["adapter_targets"] = target_modules(model, cfg.adapter)  # auto / all-linear as resolved
    if cfg.trainer.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"trainer.gradient_checkpointing=true: transformers' {type(model).__name__} has no "
                              f"gradient checkpointing; set it to false")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model = prepare_trainable(model, cfg)
    recipe.param_counts = parameter_counts(model)
    if cfg.method.uses_adapters:
        recipe.head["params_trainable"] = head_parameter_count(model, recipe.head["trains"])
    recipe.train_loader, recipe.eval_loaders = data_lib.build_dataloaders(cfg, recipe.data, recipe.tokenizer, recipe.accelerator)
    recipe.length_sampler = recipe.train_loader.sampler if isinstance(recipe.train_loader.sampler, data_lib.LengthGroupedSampler) else None
    recipe.pad_multiple = data_lib.pad_multiple(cfg.trainer, recipe.accelerator.device.type)  # chunks keep it
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("no trainable parameters; check method and adapter settings")
    return model



def start_record(recipe) -> None:
    """The run dir gets its config, the tracker and (fresh run) a ``running`` record."""
    cfg = recipe.cfg
    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    if recipe.is_main:
        atomic_write_text(recipe.output_dir / run_files.CONFIG, OmegaConf.to_yaml(OmegaConf.create(resolved_config(cfg))))
    if recipe.resume_state is not None and recipe.is_main:  # one metrics record per step, whatever happened
        runs.trim_metrics(recipe.output_dir / run_files.METRICS, recipe.resume_state["global_step"])
    run_id = (recipe.resume_state or {}).get("wandb_run_id")
    recipe.tracker = Tracker(cfg, recipe.output_dir, recipe.is_main, resolved_config(cfg), run_id=run_id)
    recipe.started = True
    if recipe.is_main and recipe.resume_state is None:  # a small record first: a run that dies leaves one
        write_running(recipe.output_dir, cfg)
    if recipe.is_main:  # bad input has been ruled out by now: it gets its one error line alone
        print(f"run dir: {recipe.output_dir}", file=sys.stderr, flush=True)



def prepare(recipe, model) -> None:
    """Optimizer, Accelerate's wrappers, the step counts and the LR schedule, the method's context."""
    cfg = recipe.cfg
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay)
    prepared = recipe.accelerator.prepare(model, optimizer, recipe.train_loader, *recipe.eval_loaders.values())
    recipe.model, recipe.optimizer, recipe.train_loader = prepared[:3]
    recipe.compile_model()
    recipe.eval_loaders = dict(zip(recipe.eval_loaders, prepared[3:]))
    recipe.steps_per_epoch = math.ceil(len(recipe.train_loader) / cfg.trainer.grad_accum_steps)
    if cfg.trainer.max_steps:
        recipe.total_steps = int(cfg.trainer.max_steps)
        recipe.num_epochs = math.ceil(recipe.total_steps / recipe.steps_per_epoch)
    else:
        recipe.num_epochs = int(cfg.trainer.epochs)
        recipe.total_steps = recipe.num_epochs * recipe.steps_per_epoch
    recipe.scheduler = get_scheduler(
        cfg.trainer.lr_schedule, recipe.optimizer,
        num_warmup_steps=int(cfg.trainer.warmup_ratio * recipe.total_steps),
        num_training_steps=recipe.total_steps,
    )
    recipe.ctx = LoopContext(
        cfg=cfg, accelerator=recipe.accelerator, model=recipe.model, optimizer=recipe.optimizer,
        train_loader=recipe.train_loader, total_steps=recipe.total_steps, tracker=recipe.tracker,
        output_dir=recipe.output_dir, steps_per_epoch=recipe.steps_per_epoch,
    )



def resolve_pooling_of(recipe, model_path: str) -> None:
    """``model.pooling=auto`` becomes the pooling used, so config.yaml and a later
    ``prune.from_run`` see the real choice (a causal LM pools nothing)."""
    recipe.pooling_source = settle_pooling(recipe.cfg, model_path)
    if recipe.pooling_source is not None:
        log.info("pooling: %s (%s)", recipe.cfg.model.pooling, recipe.pooling_source)


def start_head(recipe, model) -> dict:
    """Regression: the output bias starts at the training-label mean (runner.classifier_heads)."""
    head = {"pooling": recipe.cfg.model.pooling, "pooling_source": recipe.pooling_source, "regression_bias_init": None,
            "trains": "every weight", "params_trainable": None}
    if recipe.causal_lm:  # the LM head reads every position
        head.update(pooling=None, pooling_source=None)
    if recipe.cfg.task.is_regression:  # on resume the checkpoint's weights replace it
        labels = np.asarray(recipe.data.train["label"], dtype=np.float64)
        head["regression_bias_init"] = start_regression_bias(model, float(labels.mean()))
    return head



def check_output_dir(recipe) -> dict | None:
    """Never overwrite or mix into another run's record; resume only the same run from a checkpoint."""
    previous = (read_record(recipe.output_dir) or {}).get("status")
    meta = checkpoint.load_meta(recipe.output_dir)
    if recipe.cfg.resume:
        if previous == STATUS_COMPLETED:
            raise ConfigError(f"{recipe.output_dir} holds a completed run; nothing to resume")
        if meta is None:
            raise ConfigError(f"resume=true but {recipe.output_dir} holds no checkpoint; point hydra.run.dir at an interrupted run")
        runs.check_same_settings(recipe.output_dir, resolved_config(recipe.cfg))
        return meta
    runs.check_fresh(recipe.output_dir)
    return None


def check_sequence_length(max_seq_length: int, tokenizer, model_config, text_keys) -> None:
    """``trainer.max_seq_length`` within what the tokenizer needs and the model's positions allow."""
    special = tokenizer.num_special_tokens_to_add(pair=len(text_keys) > 1)
    low = special + len(text_keys)  # one token of each text
    positions = architecture_of(model_config).max_positions(model_config)  # RoBERTa's start after the padding index
    if max_seq_length < low:
        raise ConfigError(f"trainer.max_seq_length={max_seq_length} leaves no room for the text: the tokenizer adds "
                          f"{special} special tokens; use at least {low} (128 is usual)")
    if positions > 0 and max_seq_length > positions:
        raise ConfigError(f"trainer.max_seq_length={max_seq_length} exceeds the model's {positions} positions; "
                          f"use trainer.max_seq_length={positions} or less")
