"""The training recipe: setup, an explicit Accelerate loop, evaluation, results.

Reading order: :func:`run` -> :class:`Recipe` (``setup``, ``train``,
``evaluate``, ``finish``). Everything a run measures ends up in
``<output_dir>/results.json`` and, on the main process, in W&B.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs
from omegaconf import DictConfig
from tqdm.auto import tqdm

from runner import checkpoint, data as data_lib, lm, measure, record_builder, run_clock, run_files, runs, train_setup, train_state
from runner.atomic_io import atomic_write_text
from runner.jobs import reset_accelerate_state
from runner.methods import build_method
from runner.preflight.errors import ConfigError
from runner.preflight.schema import is_lm_task
from runner.results import (
    STATUS_FAILED, STATUS_INTERRUPTED, flatten, identity, keep_previous_record, read_record, write_failure, write_record,
)
from runner.stop_signals import FINISH, POST_TRAIN, TRAIN, RunInterrupted, StopSignals
from runner.tasks import compute_metrics, predictions_from_logits
from runner.tracking import Tracker

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss is {loss} at step {step}; lower trainer.lr or enable gradient clipping (trainer.max_grad_norm)")
        self.step = step


@dataclass
class TrainedRun:
    """What a stage after training (head pruning) gets of a completed run: not the recipe."""

    cfg: DictConfig
    model: Any  # unwrapped (no DDP); PEFT-wrapped under adapters
    tokenizer: Any
    data: Any  # runner.data.TaskData
    device: torch.device
    tracker: Any
    step: int
    is_main: bool


def use_tf32(setting, device: torch.device) -> bool:
    """``trainer.tf32``: TF32 matmuls and convolutions on CUDA (auto: on a GPU); returns whether they are on."""
    on = device.type == "cuda" if setting == "auto" else bool(setting)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
        return on
    return False


class Recipe:
    """One fine-tuning run. Methods plug in through :class:`runner.methods.TrainingMethod`."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.output_dir = Path(cfg.output_dir)
        self.timer = measure.PhaseTimer()
        self.resumes: list[dict] = []  # {step, time_carried} per resume (train_state.restore)
        self.method = build_method(cfg)
        ddp = DistributedDataParallelKwargs(**self.method.ddp_kwargs())
        self.accelerator = Accelerator(
            mixed_precision=cfg.trainer.mixed_precision,
            gradient_accumulation_steps=cfg.trainer.grad_accum_steps,
            cpu=bool(cfg.trainer.cpu),
            kwargs_handlers=[ddp],
            # the shuffle order depends on (seed, epoch) only, so a resumed run sees the same batches
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        self.device = self.accelerator.device
        self.tf32 = use_tf32(cfg.trainer.tf32, self.device)
        self.compiled = None  # trainer.compile: the compiled training module (see compile_model)
        self.is_main = self.accelerator.is_main_process
        self.history: list[dict] = []  # one record per optimizer step
        self.peak_saved: float | None = None  # the largest saved-for-backward bytes of a step so far
        self.step_meter: measure.StepMeter | None = None  # train() makes it
        self.meter_state: dict | None = None  # a checkpoint's step meter state, for train() to restore
        self.evals: list[dict] = []
        self.global_step = 0
        self.epoch = 0
        self.tracker: Tracker | None = None
        self.started = False  # True once the run dir holds something worth keeping
        self.eval_flop_meter = measure.FlopMeter(cfg.trainer.count_flops)
        self.signals = StopSignals()  # SIGINT/SIGTERM over the whole run (runner.stop_signals)
        self.lock = runs.DirLock(self.output_dir)
        self.resume_state: dict | None = None
        self.causal_lm = is_lm_task(cfg.task)  # text in, perplexity out (runner.lm)
        self.fingerprint: dict = {}
        self.accepted_changes: list[str] = []  # resume_accept_changes=true: what changed since the checkpoint

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Everything before the first step (runner.train_setup): dir, data, model, what trains, the
        optimizer and schedule, the method, and on resume the checkpoint."""
        train_setup.setup(self)

    # ------------------------------------------------------------------ train

    def _batches(self, epoch: int):
        """This epoch's batches, skipping those already trained on when resuming."""
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        if self.length_sampler is not None:  # trainer.group_by_length: the order depends on (seed, epoch) only
            self.length_sampler.set_epoch(epoch)
        done = self.global_step * self.cfg.trainer.grad_accum_steps - epoch * len(self.train_loader)
        if done > 0:
            return self.accelerator.skip_first_batches(self.train_loader, done)
        return self.train_loader

    def train(self) -> None:
        """The loop: forward, backward, step, then per optimizer step its record, the method's hook,
        the checks, evaluation and checkpoints as configured."""
        acc, tcfg = self.accelerator, self.cfg.trainer
        self.step_meter = measure.StepMeter(acc.unwrap_model(self.model), tcfg.count_flops, tcfg.measure_activations,
                                            self.device, check_every=tcfg.activations_check_every)
        if self.meter_state:
            self.step_meter.load_state_dict(self.meter_state)
        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="train", disable=not self._show_bars(),
                   dynamic_ncols=True)
        measure.reset_cuda_peaks(self.device)
        self.model.train()
        # the trainable set changes only when a method acts (setup, restore, on_step_end)
        self.trainable, self.signature = self._trainable()
        self.signals.enter(TRAIN)  # a signal now finishes the step, saves a checkpoint, stops
        with self.timer.phase("train", self.device):
            self.step_meter.started = run_clock.now()  # the first step's time starts inside the train phase
            for epoch in range(self.global_step // self.steps_per_epoch, self.num_epochs):
                self.epoch = epoch
                for batch in self._batches(epoch):
                    if not self._micro_step(batch):
                        continue  # accumulating gradients
                    self._end_step(bar)
                    if self.global_step >= self.total_steps:
                        break
                if self.global_step >= self.total_steps:
                    break
                if not tcfg.eval_every_steps:
                    self.evaluate()
                if not tcfg.checkpoint_every_steps:
                    train_state.save_checkpoint(self)
                self.step_meter.started = run_clock.now()  # the epoch's evaluation is not the next step's time
        bar.close()

    def _micro_step(self, batch: dict) -> bool:
        """Forward and backward of one micro-batch, the optimizer step when gradients sync; True then."""
        acc, meter, tcfg = self.accelerator, self.step_meter, self.cfg.trainer
        # dropout depends on (seed, step, process) only, so a resumed run replays it exactly;
        # trainer.dropout_seed redraws the masks alone (the same weights, head and data order)
        dropout_seed = tcfg.dropout_seed
        dropout_seed = self.cfg.seed if dropout_seed is None else dropout_seed
        torch.manual_seed(hash((dropout_seed, self.global_step, meter.micro, acc.process_index)) % 2**63)
        chunks = data_lib.split_batch(batch, self._splits(batch), self.pad_multiple)
        with acc.accumulate(self.model):
            for i, (chunk, weight) in enumerate(chunks):
                # gradients of all but the last chunk stay local (DDP syncs once, after the last)
                with acc.no_sync(self.model) if i < len(chunks) - 1 else contextlib.nullcontext():
                    with meter.counting(chunk, self.signature):
                        with meter.saving(chunk, self.signature):
                            loss = self._forward_module(chunk)(**chunk).loss
                        acc.backward(loss * weight)
                meter.add(chunk, loss, weight)
            if acc.sync_gradients and tcfg.max_grad_norm:
                acc.clip_grad_norm_(self.trainable, tcfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return acc.sync_gradients

    def _splits(self, batch: dict) -> int:
        """Into how many chunks this micro-batch runs: the method's count, or 1 where the method allows it
        (``whole_within_peak``: SAFE's budget_mode after t_f) and the whole micro-batch's forward is
        predicted to save no more bytes for backward than the run's peak so far. A batch whose bytes the
        meter cannot predict yet (its chunks' lengths still being learned, or measuring off) stays split."""
        k = self.method.micro_batch_splits(self.global_step)
        if k <= 1 or not self.method.whole_within_peak(self.global_step):
            return k
        n = len(batch["input_ids"])
        predicted = self.step_meter.predict_saved(batch, self.signature, rows=-(-n // k))  # the first chunk's rows
        return 1 if self.peak_saved is not None and predicted is not None and predicted <= self.peak_saved else k

    def _forward_module(self, batch: dict):
        """The compiled module (``trainer.compile``), or the eager one on steps that measure: the FLOP
        counter and saved-tensor hooks see each op only in eager mode."""
        if self.compiled is None or self.step_meter.will_measure(batch, self.signature):
            return self.model
        return self.compiled

    def _end_step(self, bar) -> None:
        """After an optimizer step: its record, the method's hook, logging, the checks, eval and checkpoint."""
        tcfg = self.cfg.trainer
        self.global_step += 1
        record = {"step": self.global_step, "epoch": self.epoch, **self.step_meter.end_step(),
                  "lr": self.scheduler.get_last_lr()[0], "trainable_params": sum(p.numel() for p in self.trainable)}
        update = self.method.on_step_end(self.ctx, self.global_step)
        record.update(update.metrics)
        self.adopt(update.model)
        self.trainable, self.signature = self._trainable()
        self.history.append(record)
        if record.get("saved_bytes") is not None:  # the running max of the history's (rebuilt on resume)
            self.peak_saved = max(self.peak_saved or 0, record["saved_bytes"])
        if self.global_step % tcfg.log_every_steps == 0 or self.global_step == 1:
            self.tracker.log({f"train/{k}": v for k, v in record.items() if k != "step" and _is_number(v)}, self.global_step)
        self._check_step(record["loss"])  # NaN/inf or a signal: stop here, on every process
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        between = self.global_step < self.total_steps
        if tcfg.eval_every_steps and self.global_step % tcfg.eval_every_steps == 0 and between:
            self.evaluate()
        if tcfg.checkpoint_every_steps and self.global_step % tcfg.checkpoint_every_steps == 0 and between:
            train_state.save_checkpoint(self)
        self.step_meter.started = run_clock.now()  # eval and checkpoints are not the next step's time

    def _show_bars(self) -> bool:
        """Progress bars on the main process, when asked for (``trainer.progress_bar``) and stderr is a
        terminal: a log file or a cluster job's output gets the step records, not bar redraws."""
        return bool(self.is_main and self.cfg.trainer.progress_bar and sys.stderr.isatty())

    def adopt(self, model) -> None:
        """Train ``model`` from now on when a method handed back a new wrapper (SAFE after freezing under DDP)."""
        if model is not None:
            self.model = self.ctx.model = model
            self.compile_model()

    def compile_model(self) -> None:
        """``trainer.compile``: ``torch.compile`` the (wrapped) training module, with dynamic shapes so
        variable-length batches do not recompile per length; rebuilt whenever the wrapper changes."""
        if self.cfg.trainer.compile:
            self.compiled = torch.compile(self.model, dynamic=True)

    def release_model(self, synchronize: bool) -> None:
        """Drop the (DDP-wrapped) model and optimizer while the process group still lives, every rank at
        the same point (``synchronize``, after a completed run): a DDP reducer destroyed after the group
        was torn down waits forever for a peer that has exited."""
        if synchronize and self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()
        for name in ("model", "optimizer", "ctx", "method", "train_loader", "eval_loaders", "scheduler"):
            if hasattr(self, name):
                setattr(self, name, None)
        self.accelerator.free_memory()
        gc.collect()
        if synchronize and self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()

    def _trainable(self) -> tuple[list, int]:
        """The parameters that train now, and the signature the FLOP cache keys on."""
        return [p for p in self.model.parameters() if p.requires_grad], measure.trainable_signature(self.model)

    def _check_step(self, loss: float) -> None:
        """Stop on a non-finite loss or a signal, on every process at the same step."""
        flags = torch.tensor([0.0 if math.isfinite(loss) else 1.0, 1.0 if self.signals.signum else 0.0], device=self.device)
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, "sum")
        if flags[0].item() > 0:
            raise TrainingDiverged(self.global_step, loss)
        if flags[1].item() > 0:
            self._stop_with_checkpoint(TRAIN)

    def stop_if_signalled(self) -> None:
        """After each part of the final stage: a signal that arrived stops the run here (every process agrees)."""
        flag = torch.tensor([1.0 if self.signals.signum else 0.0], device=self.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, "sum")
        if flag.item() > 0:
            self._stop_with_checkpoint(FINISH)

    def _stop_with_checkpoint(self, stage: str) -> None:
        train_state.save_checkpoint(self)
        raise RunInterrupted(self.signals.signum or signal.SIGTERM, self.global_step, checkpoint_step=self.global_step, stage=stage)

    # ------------------------------------------------------------------- eval

    @torch.no_grad()
    def evaluate(self) -> dict:
        if self.causal_lm:
            return self._evaluate_lm()
        acc, task = self.accelerator, self.cfg.task
        self.model.eval()
        metrics: dict = {}
        flops = 0
        with self.timer.phase("eval", self.device):
            for i, (split, loader) in enumerate(self.eval_loaders.items()):
                logits_all, labels_all, losses = [], [], []
                for batch in tqdm(loader, desc=f"eval {split}", leave=False, disable=not self._show_bars()):
                    with self.eval_flop_meter.context(measure.batch_key(batch)) as fl:
                        out = self.model(**batch)
                    flops += fl.flops or 0
                    logits, labels, loss = acc.gather_for_metrics((out.logits, batch["labels"], out.loss.reshape(1).expand(len(batch["labels"]))))
                    logits_all.append(logits.float().cpu())
                    labels_all.append(labels.cpu())
                    losses.append(loss.float().cpu())
                logits = torch.cat(logits_all).numpy()
                labels = torch.cat(labels_all).numpy()
                preds = predictions_from_logits(logits, task.is_regression)
                split_metrics = compute_metrics(task.metrics, preds, labels)
                split_metrics["loss"] = float(torch.cat(losses).mean())
                split_metrics["num_examples"] = int(len(labels))
                prefix = "" if i == 0 else f"{split}/"
                metrics.update({prefix + k: v for k, v in split_metrics.items()})
        flops = self.sum_across_processes(flops)
        metrics["flops"] = flops
        record = {"step": self.global_step, "epoch": self.epoch, **metrics}
        self.evals.append(record)
        self.tracker.log({f"eval/{k}": v for k, v in metrics.items() if _is_number(v)}, self.global_step)
        self.model.train()
        return metrics

    def _evaluate_lm(self) -> dict:
        """Perplexity on every eval file (exp of the mean NLL over all its target tokens) and zero-shot
        multiple-choice accuracy on every ``task.mc_files`` set (runner.lm)."""
        acc = self.accelerator
        self.model.eval()
        metrics: dict = {}
        flops = 0
        with self.timer.phase("eval", self.device), torch.no_grad():
            for i, (split, loader) in enumerate(self.eval_loaders.items()):
                nll = tokens = 0.0
                for batch in tqdm(loader, desc=f"eval {split}", leave=False, disable=not self._show_bars()):
                    with self.eval_flop_meter.context(measure.batch_key(batch)) as fl:
                        out = self.model(**batch)
                    flops += fl.flops or 0
                    # every process's examples, the duplicates that even out the last batch dropped
                    ll, n = acc.gather_for_metrics(lm.token_log_likelihoods(out.logits, batch["labels"]))
                    nll, tokens = nll - float(ll.double().sum()), tokens + float(n.sum())
                prefix = "" if i == 0 else f"{split}/"
                metrics.update({prefix + k: v for k, v in lm.perplexity_metrics(nll, int(tokens)).items()})
            for name, rows in self.data.choices.items():
                if acc.num_processes > 1:
                    raise ConfigError("task.mc_files: multiple-choice evaluation runs in one process; evaluate the saved run alone")
                model = acc.unwrap_model(self.model)
                scores = lm.score_choices(model, rows, self.tokenizer, int(self.cfg.trainer.max_seq_length),
                                          int(self.cfg.trainer.eval_batch_size), self.device)
                metrics.update({f"{name}/{k}": v for k, v in scores.items()})
        metrics["flops"] = self.sum_across_processes(flops)
        record = {"step": self.global_step, "epoch": self.epoch, **metrics}
        self.evals.append(record)
        self.tracker.log({f"eval/{k}": v for k, v in metrics.items() if _is_number(v)}, self.global_step)
        self.model.train()
        return metrics

    def sum_across_processes(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(t, "sum").item())

    def max_across_processes(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        return float(self.accelerator.gather(t.reshape(1)).max().item())


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def write_step_history(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in history))


def run(cfg: DictConfig, post_train=None) -> dict:
    """Run one experiment end to end; returns the results dict.

    results.json always tells the truth: ``running`` from the start of a fresh
    run, ``completed`` only after everything was measured and saved; ``failed``
    or ``interrupted`` (with what was done so far, and the checkpoint a resume
    continues from) otherwise. Bad input found before training writes nothing.
    SIGINT/SIGTERM are handled over the whole run (:mod:`runner.stop_signals`).
    ``post_train(trained: TrainedRun) -> dict``, if given, runs after the model and
    results are saved (head pruning: :func:`runner.prune.stage.after_training`);
    the sections it returns are added to results.json.
    """
    try:
        recipe = Recipe(cfg)
    except BaseException:
        reset_accelerate_state()  # sweep: a half-built Accelerator must not leak into the next job
        raise
    with recipe.signals.installed(recipe.output_dir):
        return _run(recipe, post_train)


@dataclass
class RunState:
    """What a run's stages hand on: the saved model, then the completed training record."""

    model_dir: Path | None = None
    record: dict | None = None  # set once the training record is written


def train_stage(recipe: Recipe, state: RunState) -> None:
    """Set up, train, evaluate the final step, save the model; a signal from the end of training on
    stops after the current part, with a checkpoint."""
    recipe.setup()
    recipe.train()
    recipe.signals.enter(FINISH)
    if not recipe.evals or recipe.evals[-1]["step"] != recipe.global_step:
        recipe.evaluate()
    recipe.stop_if_signalled()
    with recipe.timer.phase("save"):
        state.model_dir = train_state.save_model(recipe)
    recipe.stop_if_signalled()


def report_stage(recipe: Recipe, state: RunState) -> None:
    """Assemble the record (runner.record_builder) and write it with the per-step history and the
    tracker's summary (main process)."""
    record = record_builder.completed_record(recipe, state.model_dir)
    recipe.stop_if_signalled()
    if recipe.is_main:
        record["wandb"] = {"run_id": recipe.tracker.run_id, "dir": recipe.tracker.run_dir}
        write_step_history(recipe.output_dir / run_files.STEPS, recipe.history)
        write_record(recipe.output_dir, record)
        recipe.tracker.summary(flatten(record))
    state.record = record


def post_train_stage(post_train):
    """A stage after the training record is complete (head pruning: runner.prune.stage.after_training):
    ``post_train(TrainedRun) -> dict`` of sections added to the record; a signal stops it at once."""

    def stage(recipe: Recipe, state: RunState) -> None:
        recipe.signals.enter(POST_TRAIN)
        state.record.update(post_train(TrainedRun(
            cfg=recipe.cfg, model=recipe.accelerator.unwrap_model(recipe.model), tokenizer=recipe.tokenizer,
            data=recipe.data, device=recipe.device, tracker=recipe.tracker, step=recipe.global_step,
            is_main=recipe.is_main)))
        if recipe.is_main:
            write_record(recipe.output_dir, state.record)

    return stage


def stages(post_train=None) -> list:
    """A run, in order: train, report, then the stage after training if any."""
    return [train_stage, report_stage] + ([post_train_stage(post_train)] if post_train is not None else [])


def _run(recipe: Recipe, post_train) -> dict:
    exit_code = 1
    state = RunState()
    try:
        for run_stage in stages(post_train):
            run_stage(recipe, state)
        exit_code = 0
        return state.record
    except BaseException as exc:
        stage, recipe.signals.stage = recipe.signals.stage, FINISH  # a first signal now waits until the record is written
        status = STATUS_INTERRUPTED if isinstance(exc, (RunInterrupted, KeyboardInterrupt)) else STATUS_FAILED
        if recipe.is_main and (state.record is not None or recipe.started):
            write_failure_record(recipe, state.record, status, exc, stage)
        raise
    finally:
        if recipe.tracker is not None:
            try:
                recipe.tracker.finish(exit_code)
            except Exception as exc:  # noqa: BLE001 (a full disk must not hide the run's own error)
                log.warning("closing the tracker failed: %s", exc)
        recipe.lock.release()
        recipe.release_model(synchronize=exit_code == 0)
        recipe.accelerator.end_training()
        reset_accelerate_state()  # sweep: the next job in this process gets a fresh Accelerator


def error_text(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt: stopped at once by a second signal (resume=true continues from checkpoint_step)"
    return f"{type(exc).__name__}: {exc}"


def write_failure_record(recipe: Recipe, trained: dict | None, status: str, exc: BaseException, stage: str) -> None:
    """The record of a run that did not complete (:func:`runner.results.write_failure`), written even on a
    full disk: the full record, else a small one, else the previous record stays (a fresh run's
    ``running`` one). A resumed attempt that fails before it gets past the previous record's step
    keeps that record (the attempt is added to its ``attempts``): a failed resume never wipes what
    the interrupted run had written."""
    error = error_text(exc)
    out = recipe.output_dir
    where = {"step": recipe.global_step, "checkpoint_step": None}
    try:
        if trained is not None:  # training finished; the stage after it failed: keep every number
            write_record(out, {**trained, "status": status, "stage": POST_TRAIN, "error": error})
            return
        meta = checkpoint.load_meta(out)  # inside: a disk that fails here still gets the small record
        where["checkpoint_step"] = meta["global_step"] if meta is not None else None
        previous = read_record(out) or {}
        if previous and recipe.resume_state is not None and recipe.global_step <= int(previous.get("step") or 0):
            keep_previous_record(out, previous, status, error, recipe.global_step)
            return
        write_step_history(out / run_files.STEPS, recipe.history)
        write_failure(out, status, error, stage=stage, who=identity(recipe.cfg), **where,
                           # what resume=true continues from (steps after it are lost with this attempt)
                           checkpoint=str(checkpoint.complete_checkpoint(out)) if meta is not None else None,
                           attempts=previous.get("attempts", []) if recipe.resume_state is not None else [],
                           eval_history=recipe.evals)
        if recipe.tracker is not None:
            recipe.tracker.summary({"status": status, "error": error})
        return
    except OSError as write_error:
        log.warning("writing the full failure record failed (%s); writing a small one", write_error)
    try:
        write_failure(out, status, error, stage=stage, who={"run_name": recipe.cfg.run_name}, **where)
    except OSError as write_error:
        log.warning("writing the failure record failed too (%s); %s keeps its previous record", write_error,
                    out / run_files.RESULTS)
