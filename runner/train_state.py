"""What a training run saves and restores: the checkpoint a resume continues from (optimizer,
scheduler, RNG and the method's state through :mod:`runner.checkpoint`, the run's history in its
meta.json), and the trained model at the end.

Each function takes the :class:`runner.train.Recipe` (``recipe``; not imported here, which would
make an import cycle).
"""

from __future__ import annotations

import logging
from pathlib import Path

from runner import checkpoint, measure
from runner.adapters import is_adapter_param, is_head_param, layer_index
from runner.preflight.config import resolved_config

log = logging.getLogger(__name__)


def save_checkpoint(recipe) -> None:
    """The checkpoint of the step just done (an adapter run keeps only what trains or changed)."""
    meta = {
        "global_step": recipe.global_step, "epoch": recipe.epoch, "history": recipe.history, "evals": recipe.evals,
        "scheduler_state": recipe.scheduler.state_dict(),
        "method_state": recipe.method.state_dict(), "wandb_run_id": recipe.tracker.run_id if recipe.tracker else None,
        "meter_state": recipe.step_meter.state_dict() if recipe.step_meter is not None else None,
        "fingerprint": recipe.fingerprint,
        # the phase times so far, so that a resumed run's train_s is the whole run's (not the last session's)
        "timer_state": recipe.timer.state_dict(), "resumes": recipe.resumes,
    }
    keep = trained_weights(recipe) if recipe.cfg.method.uses_adapters else None
    checkpoint.save(recipe.accelerator, recipe.output_dir, meta, keep=keep)


def trained_weights(recipe):
    """What an adapter run's checkpoint keeps: adapters, the head, whatever trains, and base layers the method changed."""
    model = recipe.accelerator.unwrap_model(recipe.model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = recipe.method.changed_base_layers()

    def keep(name: str) -> bool:
        return is_adapter_param(name) or is_head_param(name) or name in trainable or layer_index(name) in changed

    return keep


def restore(recipe, meta: dict) -> None:
    # The method's state first: SAFE re-freezes adapters, which removes them from the
    # optimizer, so that the saved optimizer state then fits the param groups.
    recipe.adopt(recipe.method.load_state_dict(meta.get("method_state", {})))
    checkpoint.load(recipe.accelerator, recipe.output_dir, recipe.accelerator.unwrap_model(recipe.model))
    recipe.scheduler.load_state_dict(meta["scheduler_state"])
    recipe.global_step = meta["global_step"]
    recipe.history = meta.get("history", [])
    recipe.peak_saved = measure.history_peak(recipe.history)
    recipe.evals = meta.get("evals", [])
    recipe.meter_state = meta.get("meter_state")  # what the step meter had learned (train() hands it back)
    carried = "timer_state" in meta  # checkpoints before it: the time before this resume is not known
    if carried:
        recipe.timer.load_state_dict(meta["timer_state"])
    else:
        log.warning("the checkpoint at step %d predates carried phase times: time.train_s will count only what runs "
                    "from here", recipe.global_step)
    recipe.resumes = [*meta.get("resumes", []), {"step": recipe.global_step, "time_carried": carried}]
    log.info("resumed from step %d", recipe.global_step)


def save_model(recipe) -> Path:
    """The trained adapter (or full model), its tokenizer and resolved config, in ``<run dir>/model``."""
    target = recipe.output_dir / "model"
    recipe.accelerator.wait_for_everyone()
    if recipe.is_main:
        model = recipe.accelerator.unwrap_model(recipe.model)
        checkpoint.save_trained_model(model, recipe.tokenizer, target, resolved_config(recipe.cfg))
    recipe.accelerator.wait_for_everyone()
    return target
