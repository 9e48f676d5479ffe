"""Assembling a finished training run's record (:class:`runner.results.Results`) from what its
:class:`runner.train.Recipe` measured: who the run is, final metrics, memory, FLOPs, time, the
learning check (and its plot), sharpness, the method's report and the files written.

The recipe runs the loop and keeps the raw measurements (``history``: one record per optimizer
step, ``evals``, the phase timer, the step meter); this module turns them into the record's
sections, summing or taking the maximum over processes where each process saw its own batches.

Each function takes the :class:`runner.train.Recipe` (``recipe``; not imported here, which would
make an import cycle) after its loop has run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from runner import curves, lm, measure, provenance, run_files
from runner.results import STATUS_COMPLETED, Results
from runner.sharpness import sharpness_of_run


log = logging.getLogger(__name__)

# how each section was measured, as the record says it
SAVED_FOR_BACKWARD_METHOD = (
    "saved-tensor hooks (unique storages, parameters excluded) on the first lengths of each batch shape "
    "and trainable set and on every trainer.activations_check_every-th micro-batch; the others predicted "
    "exactly (quadratic in the padded length), checked by every hooked one")
FLOPS_METHOD = (
    "torch.utils.flop_counter on real batches (forward+backward), cached per batch shape and "
    "trainable set; other sequence lengths predicted exactly from three counted ones (FLOPs per "
    "example are quadratic in length; a fourth count checks it); CPU flash-attention formulas "
    "registered; summed over processes")


def completed_record(recipe, model_dir: Path) -> Results:
    """The whole record of a run whose training, final evaluation and model save are done (status
    ``completed``; ``wandb`` is added by the main process when it writes it)."""
    cfg = recipe.cfg
    record = training_record(recipe)
    record["learning"] = learning_section(recipe, record["metrics"])
    if cfg.trainer.sharpness.enabled and recipe.is_main:
        with recipe.timer.phase("sharpness"):
            record["sharpness"] = sharpness_of_run(recipe.accelerator, recipe.model, recipe.train_loader, cfg)
    record["method_report"] = recipe.method.report(recipe.ctx, recipe.history)
    record["artifacts"] = {"model": str(model_dir), "steps": run_files.STEPS, "config": run_files.CONFIG}
    record["status"] = STATUS_COMPLETED
    return record


def training_record(recipe) -> Results:
    """Who the run is, its final metrics, and its memory, FLOPs and time sections."""
    cfg = recipe.cfg
    final_eval = recipe.evals[-1] if recipe.evals else {}
    data = recipe.data
    return {
        "run_name": cfg.run_name,
        "task": cfg.task.name,
        "model": cfg.model.short_name,
        "model_source": recipe.model_source,
        "method": cfg.method.name,
        "adapter": cfg.adapter.name if cfg.method.uses_adapters else None,
        "seed": cfg.seed,
        "metrics": {k: v for k, v in final_eval.items() if k not in ("step", "epoch", "flops")},
        "main_metric": cfg.task.main_metric,
        "eval_history": recipe.evals,
        "memory": memory_section(recipe),
        "flops": flops_section(recipe),
        "time": time_section(recipe),
        "params": recipe.param_counts,
        "fingerprint": {**recipe.fingerprint, "resume_accepted_changes": recipe.accepted_changes},
        "head": recipe.head,
        "steps": {"total": recipe.global_step, "per_epoch": recipe.steps_per_epoch, "epochs": recipe.num_epochs},
        "data": {"source": data.source, "train_examples": len(data.train),
                 "holdout_examples": len(data.holdout) if data.holdout is not None else 0,
                 "eval_examples": {k: len(v) for k, v in data.evals.items()},
                 "input": data.input},  # per split: file, rows read, skipped, used; LM cuts and drops
        "provenance": provenance.collect(recipe.device, cfg.seed, recipe.accelerator.num_processes),
        "compute": {"device": recipe.device.type, "mixed_precision": cfg.trainer.mixed_precision,
                    "tf32": recipe.tf32, "compile": bool(cfg.trainer.compile)},
    }


def memory_section(recipe) -> dict:
    steps = recipe.history
    state = measure.model_state_bytes(recipe.accelerator.unwrap_model(recipe.model), recipe.optimizer)
    state["grad_bytes"] = state["trainable_param_bytes"]  # one gradient per trainable weight at each optimizer step
    saved = [s["saved_bytes"] for s in steps if s.get("saved_bytes") is not None]
    saved_peak = recipe.max_across_processes(max(saved, default=0))
    memory = {
        "saved_for_backward_peak_bytes": int(saved_peak),
        "saved_for_backward_mean_bytes": float(np.mean(saved)) if saved else None,
        "saved_for_backward_measured_micro_batches": recipe.step_meter.saved_measured,
        "saved_for_backward_predicted_micro_batches": recipe.step_meter.saved_predicted,
        "saved_for_backward_method": SAVED_FOR_BACKWARD_METHOD if recipe.cfg.trainer.measure_activations else None,
        **state,
        "state_plus_saved_peak_bytes": int(saved_peak + state["param_bytes"] + state["grad_bytes"] + state["optimizer_state_bytes"]),
        "process_max_rss_bytes": measure.max_rss_bytes(),
        **measure.cuda_peaks(recipe.device),
        # CUDA: the peak allocated memory of each phase (train, eval, ...); empty on a CPU
        "cuda_peak_bytes_by_phase": dict(recipe.timer.peak_bytes),
    }
    if recipe.device.type == "cuda":
        alloc = [s["cuda_allocated_bytes"] for s in steps if "cuda_allocated_bytes" in s]
        memory["cuda_allocated_mean_bytes"] = float(np.mean(alloc)) if alloc else None
    return memory


def flops_section(recipe) -> dict:
    steps = recipe.history
    # method_flops: compute a method spends outside the training forward/backward (SAFE's probe)
    step_flops = [s["flops"] + (s.get("method_flops") or 0) for s in steps if s.get("flops") is not None]
    train_flops = recipe.sum_across_processes(sum(step_flops))
    eval_passes = [e["flops"] for e in recipe.evals]
    return {
        "train_total": train_flops,
        "train_per_step_mean": train_flops / max(1, len(steps)),
        "eval_per_pass": eval_passes[-1] if eval_passes else None,
        "eval_total": float(sum(eval_passes)),
        "counted_train_shapes": recipe.step_meter.flop_meter.counted_steps,
        "predicted_train_shapes": recipe.step_meter.flop_meter.predicted_steps,
        "method": FLOPS_METHOD,
    }


def time_section(recipe) -> dict:
    history = recipe.history
    tokens = recipe.sum_across_processes(sum(s["tokens"] for s in history))
    # evaluation between epochs runs inside the train phase; the final one after it
    train_s = recipe.timer.without("train", "eval")
    step_times = [s["step_time_s"] for s in history]
    n_examples = len(recipe.data.train)
    return {
        "setup_s": recipe.timer.seconds.get("setup", 0.0),
        "train_s": train_s,
        "eval_s": recipe.timer.seconds.get("eval", 0.0),
        "step_mean_s": float(np.mean(step_times)) if step_times else None,
        "step_median_s": float(np.median(step_times)) if step_times else None,
        "train_samples_per_s": (n_examples * recipe.num_epochs / train_s
                                if train_s > 0 and not recipe.cfg.trainer.max_steps else None),
        "train_tokens_per_s": tokens / train_s if train_s > 0 else None,
        # what FLOP counting and saved-tensor hooks cost (an estimate; see measure.measurement_overhead_s)
        "measure_overhead_s": measure.measurement_overhead_s(history),
        "measured_steps": sum(1 for s in history if s.get("measured")),
        "resumes": recipe.resumes,
        "paused_s": recipe.timer.paused_s,
    }


def learning_section(recipe, final_metrics: dict) -> dict:
    """The final main metric against a constant prediction, and learning_curve.png (main process)."""
    cfg = recipe.cfg
    task = cfg.task
    if recipe.causal_lm:  # the constant prediction: the training tokens' unigram frequencies
        loader = next(iter(recipe.eval_loaders.values()))
        trivial = lm.trivial_levels(recipe.train_loader.dataset["labels"], loader.dataset["labels"], len(recipe.tokenizer))
    else:
        eval_split = next(iter(recipe.data.evals.values()))
        trivial = curves.trivial_levels(list(task.metrics), recipe.data.train["label"], eval_split["label"], task.is_regression)
    section = curves.learning_check(task.main_metric, final_metrics, trivial)
    if section.get("warning"):
        log.warning(section["warning"])
    if recipe.is_main:
        try:
            path = curves.plot_learning_curve(
                recipe.output_dir / run_files.LEARNING_CURVE, recipe.history, recipe.evals, list(task.metrics), trivial,
                title=f"{cfg.run_name}: {task.name}, {cfg.method.name}, pooling={cfg.model.pooling}",
            )
            recipe.tracker.log_image("learning_curve", path, recipe.global_step)
            section["plot"] = path.name
        except Exception as exc:  # a plot must never fail a finished run
            log.warning("learning curve plot failed: %s", exc)
    return section
