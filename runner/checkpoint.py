"""Resumable checkpoints and the saved trained model.

A checkpoint is ``<output_dir>/checkpoint/``: Accelerate's state (model,
optimizer, scheduler, RNG) plus ``meta.json`` (step, history, method state,
W&B run id). An adapter run's checkpoint holds only the weights that trained
(adapters, the head, and base layers a method changed, e.g. SAFE's merged
layers); a resume rebuilds the rest from the base model (``meta.json``
``weights``: ``trained`` or ``all``). It is written to a temporary folder and renamed into place, so a
crash while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import yaml
from safetensors import safe_open

from runner.adapters import kind_of
from runner.atomic_io import atomic_write_json, atomic_write_text
from runner.preflight.errors import RecordError, first_line
from runner.run_files import CHECKPOINT_SLOTS
from runner.runs import newest_checkpoint

CHECKPOINT = CHECKPOINT_SLOTS[0]
TRASH = ".checkpoint.trash"  # a folder being deleted (never read)


WEIGHTS_ALL, WEIGHTS_TRAINED = "all", "trained"


def _discard(folder: Path) -> None:
    """Delete a folder so that no kill leaves it half deleted under its name: rename to a trash name, then delete."""
    if not folder.exists():
        return
    trash = folder.with_name(f"{TRASH}{os.getpid()}.{folder.name.lstrip('.')}")
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def settle(output_dir: Path) -> Path | None:
    """After any kill inside :func:`save`: the newest complete checkpoint becomes ``checkpoint/`` and every other
    slot and trash folder goes (main process, before a save). Returns ``checkpoint/`` or None."""
    output_dir = Path(output_dir)
    for trash in output_dir.glob(f"{TRASH}*"):
        shutil.rmtree(trash, ignore_errors=True)
    newest = complete_checkpoint(output_dir)
    target = output_dir / CHECKPOINT
    if newest is not None and newest != target:
        _discard(target)  # partial or older: the newest complete one is elsewhere
        newest.rename(target)
    for name in CHECKPOINT_SLOTS[1:]:
        _discard(output_dir / name)
    if newest is None:
        _discard(target)  # a checkpoint/ without meta.json is not one
    return target if newest is not None else None


def _storage_error(exc: BaseException) -> OSError | None:
    """torch reports a full disk inside its zip writer as a RuntimeError ("unexpected pos", "file write failed"):
    the OSError it is (the runner's storage exit, 7), or None for any other error."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and any(s in text for s in ("unexpected pos", "file write failed", "No space left")):
        return OSError(errno.ENOSPC, f"no space left while writing the checkpoint ({first_line(exc)[:120]})")
    return None


def save(accelerator, output_dir: Path, meta: dict, keep: Callable[[str], bool] | None = None) -> Path:
    """Write the checkpoint; with ``keep``, only the model weights it accepts (an adapter run: adapters,
    head and any base layer a method changed), the rest is rebuilt from the base model on resume.

    Kill-safe at every instant: the new state goes to ``.checkpoint.tmp`` and is complete once its meta.json
    (written last, atomically) is; then ``checkpoint/`` -> ``.checkpoint.old``, ``.checkpoint.tmp`` ->
    ``checkpoint/``, and the old one is discarded. A resume reads the newest complete slot
    (:func:`complete_checkpoint`); the next save first :func:`settle` s whatever a kill left."""
    target = Path(output_dir) / CHECKPOINT
    tmp = Path(output_dir) / f".{CHECKPOINT}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        settle(output_dir)
        tmp.mkdir(parents=True)  # before any rank writes its RNG state into it
    accelerator.wait_for_everyone()
    handle = accelerator.register_save_state_pre_hook(_only(keep)) if keep is not None else None
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    except RuntimeError as exc:
        storage = _storage_error(exc)
        if storage is None:
            raise
        raise storage from exc
    finally:
        if handle is not None:
            handle.remove()
    # Every rank writes its own RNG state into tmp: none may still be writing when rank 0 renames it
    # (under load, rank 1 once found '.checkpoint.tmp' gone: "Parent directory ... does not exist").
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / "meta.json", {**meta, "weights": WEIGHTS_ALL if keep is None else WEIGHTS_TRAINED})
        old = Path(output_dir) / f".{CHECKPOINT}.old"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        _discard(old)
    accelerator.wait_for_everyone()
    return target


def complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint folder wherever a killed :func:`save` left it: ``checkpoint/``, the new
    copy (``.checkpoint.tmp``, complete once its meta.json is written) or the previous one (``.checkpoint.old``),
    the highest step first (runner.runs.newest_checkpoint)."""
    return newest_checkpoint(Path(output_dir))


def load_meta(output_dir: Path) -> dict | None:
    folder = complete_checkpoint(output_dir)
    if folder is None:
        return None
    try:
        with open(folder / "meta.json") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecordError(f"cannot read {folder / 'meta.json'} ({type(exc).__name__}: {exc}); the checkpoint is damaged: "
                          "start over in a new dir (or restore the file)") from exc


def load(accelerator, output_dir: Path, model=None) -> None:
    """Restore the checkpoint into the prepared objects; ``model`` (unwrapped) checks a trained-weights checkpoint.
    What a killed save left is settled first: the newest complete checkpoint becomes ``checkpoint/``."""
    if accelerator.is_main_process:
        settle(output_dir)
    accelerator.wait_for_everyone()
    folder = complete_checkpoint(output_dir)
    if folder is None:
        raise FileNotFoundError(f"{output_dir} holds no complete checkpoint")
    trained_only = (load_meta(output_dir) or {}).get("weights") == WEIGHTS_TRAINED
    try:
        if trained_only:  # the base model's weights came from model.name_or_path; these replace the rest
            if model is not None:
                _check_keys(model, folder)
            accelerator.load_state(str(folder), strict=False)
        else:
            accelerator.load_state(str(folder))
    except RecordError:
        raise
    except Exception as exc:  # noqa: BLE001 (SafetensorError, pickle and shape errors, truncated files)
        first = first_line(exc)[:300]
        raise RecordError(f"cannot read the checkpoint {folder} ({type(exc).__name__}: {first}); it is damaged or "
                          "incomplete: start over in a new dir (or restore it)") from exc


def _only(keep: Callable[[str], bool]):
    """An Accelerate save-state hook that drops the weights ``keep`` rejects."""

    def hook(models, weights, output_dir) -> None:
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if keep(k)}

    return hook


def _check_keys(model, folder: Path) -> None:
    """A trained-weights checkpoint loads without strictness: make sure each of its weights has a place in the model."""
    path = folder / "model.safetensors"
    if not path.is_file():
        return
    with safe_open(str(path), framework="pt") as f:
        saved = set(f.keys())
    unknown = saved - set(model.state_dict())
    if unknown:
        raise RecordError(f"the checkpoint {folder} holds weights this model does not have ({', '.join(sorted(unknown)[:3])}, "
                          f"...); it was made with another model or adapter: start over in a new dir")


def save_trained_model(model, tokenizer, target: Path, config: dict) -> None:
    """Adapters (in their kind's format: PEFT's, ours) or the full model, with tokenizer and config."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    kind = kind_of(model)  # runner.adapters: each kind saves in its own format
    if kind is not None:
        kind.save(model, target, config)
    else:
        model.save_pretrained(str(target), safe_serialization=True)
    tokenizer.save_pretrained(str(target))
    atomic_write_text(target / "run_config.yaml", yaml.safe_dump(config, sort_keys=False))
