"""How a job prunes: right after training, or on a saved run (``prune.from_run``).

``runner.app.execute`` validates the job once (``runner.preflight.validate``, which
returns the pruning settings), then runs :func:`after_training` as the
training recipe's post-train stage, or :func:`prune_saved_run` instead of
training when ``prune.from_run`` is set.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from runner import data as data_lib, provenance, run_files, runs
from runner.adapters import KINDS
from runner.atomic_io import atomic_write_text
from runner.classifier_heads import apply_pooling, saved_pooling, settle_pooling
from runner.models import load_model_and_tokenizer, resolve_model_path
from runner.preflight.config import resolved_config
from runner.preflight.errors import ConfigError, ModelError
from runner.preflight.schema import default_of, is_lm_task
from runner.prune import settings as settings_lib
from runner.prune.pipeline import PruneInputs, run_pruning
from runner.results import (
    STATUS_COMPLETED, STATUS_FAILED, STATUS_INTERRUPTED, flatten, read_record, record_problem, training_completed,
    write_failure, write_record,
)
from runner.secrets import scrub
from runner.stop_signals import POST_TRAIN, PRUNING, RunInterrupted, StopSignals
from runner.tracking import Tracker

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# After training
# ---------------------------------------------------------------------------


def after_training(settings: settings_lib.Pruning):
    """The post-train stage for :func:`runner.train.run`: prune the in-memory model of the completed
    run (a ``runner.train.TrainedRun``, not the recipe) with ``settings`` (validated once, by
    runner.preflight.validate); it adds ``{"pruning": ...}`` to the run's results."""

    def stage(trained) -> dict:
        if not trained.is_main:
            return {}
        cfg = trained.cfg
        inputs = _prune_inputs(cfg, cfg.trainer, model=trained.model, tokenizer=trained.tokenizer, task=cfg.task,
                               data=trained.data, output_dir=Path(cfg.output_dir), device=trained.device,
                               tracker=trained.tracker, step=trained.step)
        return {"pruning": run_pruning(inputs, settings)}

    return stage


def _prune_inputs(cfg: DictConfig, trainer: DictConfig, **fields) -> PruneInputs:
    """PruneInputs with the sequence length and batch sizes the model was trained with and this job's cache."""
    return PruneInputs(max_seq_length=int(trainer.max_seq_length), eval_batch_size=int(trainer.eval_batch_size),
                       train_batch_size=int(trainer.batch_size), data_cache_dir=_cache_dir(cfg), **fields)


def _cache_dir(cfg) -> Path | None:
    d = cfg.get("data_cache_dir")
    if not d:
        return None
    path = Path(str(d)).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------
# A saved run
# ---------------------------------------------------------------------------


def _source_config(src: Path) -> DictConfig:
    for candidate in (src / run_files.CONFIG, src / "model" / "run_config.yaml"):
        if candidate.is_file():
            return OmegaConf.load(candidate)
    raise ConfigError(f"prune.from_run={src} holds no config.yaml (nor model/run_config.yaml); is it a runner output dir?")


def _task_config(source_cfg: DictConfig, cfg: DictConfig) -> DictConfig:
    """The source run's task; its data_dir if that still exists, else this job's (a GLUE root such as $GLUE_DIR)."""
    task = OmegaConf.create(OmegaConf.to_container(source_cfg.task, resolve=True))
    src_dir = task.get("data_dir")
    if src_dir not in (None, "") and Path(str(src_dir)).expanduser().is_dir():
        return task
    with open_dict(task):
        task.data_dir = cfg.task.get("data_dir")
    return task


def _job_config(cfg: DictConfig, source_cfg: DictConfig, task: DictConfig) -> dict:
    """The config this pruning job really ran: the source run's task, model, adapter, method and
    trainer (what the pruned model is), this job's pruning settings, seed and logger."""
    job = resolved_config(cfg)
    source = OmegaConf.to_container(source_cfg, resolve=False)
    job.pop("safe", None)  # only a SAFE source has SAFE's knobs
    job.update({key: source[key] for key in ("model", "adapter", "safe", "method", "trainer") if key in source})
    job["task"] = OmegaConf.to_container(task, resolve=True)
    return scrub(job)


def load_trained_model(model_dir: Path, source_cfg: DictConfig, task: DictConfig):
    """The fine-tuned model of a saved run (LoRA merged, bottleneck adapters attached) and its tokenizer."""
    model_dir = Path(model_dir)
    if (model_dir / "pruned_heads.json").is_file():
        raise ModelError(f"{model_dir} is already pruned; prune the fine-tuned (unpruned) run instead")
    attn = source_cfg.model.get("attn_implementation", default_of("model.attn_implementation"))  # older runs: the default
    # the source's pooling (runs saved before model.pooling existed pooled with cls)
    mcfg = OmegaConf.merge(source_cfg.model, {"pooling": source_cfg.model.get("pooling") or "cls"})
    kind = next((k for k in KINDS.values() if k.found_in(model_dir)), None)  # runner.adapters
    if kind is not None:  # LoRA merged, bottleneck adapters attached
        base, tokenizer = load_model_and_tokenizer(mcfg, task)
        model = kind.load(model_dir, base, source_cfg)
    elif (model_dir / "config.json").is_file():
        if is_lm_task(task):
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation=attn)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), attn_implementation=attn)
            model = apply_pooling(model, saved_pooling(model))
        tokenizer = None
    else:
        raise ModelError(f"{model_dir} holds no adapters ({', '.join(KINDS)}) and no full model")
    if (model_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer is None:
        raise ModelError(f"{model_dir} holds no tokenizer")
    return model.eval(), tokenizer


def prune_saved_run(cfg: DictConfig, s: settings_lib.Pruning) -> dict:
    """Prune a saved fine-tuned run (``s.from_run``); results go to this job's output dir with a reference to the source."""
    src = Path(str(s.from_run)).expanduser().resolve()
    pretrained = (src / "config.json").is_file() and not (src / "model").is_dir()
    if pretrained:  # a model folder, not a run: prune the pretrained model as it is (the paper's LLaMA-2 setting)
        return _prune_pretrained(cfg, s, src)
    if not (src / "model").is_dir():
        raise ConfigError(f"prune.from_run={s.from_run}: no model/ folder there; give the output dir of a finished run "
                          f"or a model folder (with config.json)")
    src_results = read_record(src) or {}
    src_status = src_results.get("status")
    if src_status is not None and not training_completed(src_results):
        raise ConfigError(f"prune.from_run={s.from_run}: that run's results say {src_status} (step {src_results.get('step')}); "
                          f"prune a run whose training completed")
    source_cfg = _source_config(src)
    task = _task_config(source_cfg, cfg)
    out = _output_dir_apart_from(cfg, src, s)
    job_cfg = _job_config(cfg, source_cfg, task)
    with runs.DirLock(out):
        done = _claim(out, cfg, job_cfg)
        return done if done is not None else _prune_into(out, cfg, s, src, src_results, source_cfg, task, job_cfg)


def _output_dir_apart_from(cfg: DictConfig, src: Path, s: settings_lib.Pruning) -> Path:
    """This job's output dir, refused when it is the source, inside it, or holds it: a pruning job never
    writes into (or retires) what it prunes."""
    out = Path(cfg.output_dir).resolve()
    if out == src or out.is_relative_to(src) or src.is_relative_to(out):
        raise ConfigError(f"prune.from_run={s.from_run} and this job's output dir {out} overlap; a pruning job writes "
                          f"to a dir of its own, outside its source (leave hydra.run.dir alone or choose another)")
    return Path(cfg.output_dir)


def _resuming(cfg: DictConfig) -> bool:
    """``resume=auto`` or ``resume=true``: a pruning job may take over what an earlier attempt left."""
    return str(cfg.get("resume")).lower() in ("auto", "true")


def _claim(out: Path, cfg: DictConfig, job_cfg: dict) -> dict | None:
    """Make ``out`` this pruning job's (the caller holds its lock): a fresh dir is used as it is; with
    ``resume=auto`` (or ``true``), the same job's completed results are returned (nothing to do) and an
    attempt that did not complete (interrupted, failed, killed) is moved to ``.retired/`` and pruned
    again: pruning keeps no checkpoint. Anything else there (another job's run) is refused."""
    if not runs.traces(out) or not _resuming(cfg):
        runs.check_fresh(out)
        return None
    problem = record_problem(out)
    if problem:
        raise ConfigError(problem)
    changes = runs.settings_changes(out, job_cfg, most=3)
    if changes:
        raise ConfigError(f"{out} holds another run than this pruning job ({changes}); "
                          f"rerun with the settings it ran with, or choose another hydra.run.dir")
    previous = read_record(out) or {}
    if previous.get("status") == STATUS_COMPLETED:
        log.info("%s already completed; skipped (resume=%s)", out, cfg.get("resume"))
        return previous
    kept = runs.retire_traces(out)
    log.info("%s: the earlier attempt (%s) is kept in %s; pruning again", out, previous.get("status") or "no record", kept)
    return None


def _prune_pretrained(cfg: DictConfig, s: settings_lib.Pruning, src: Path) -> dict:
    """``prune.from_run=<model folder>``: prune a pretrained model without fine-tuning it, with this job's
    task (calibration on its training split, metrics on its eval split) and model settings."""
    if not is_lm_task(cfg.task):
        log.warning("prune.from_run=%s is a model folder: task %s's classifier starts untrained, so its metrics say little; "
                    "fine-tune first and prune the run", src, cfg.task.name)
    source_cfg = OmegaConf.merge(cfg, {"model": {"name_or_path": str(src)}})
    with open_dict(source_cfg):
        source_cfg.model.short_name = src.name
    out = _output_dir_apart_from(cfg, src, s)
    job_cfg = _job_config(cfg, source_cfg, cfg.task)
    with runs.DirLock(out):
        done = _claim(out, cfg, job_cfg)
        return done if done is not None else _prune_into(out, cfg, s, src, {}, source_cfg, cfg.task, job_cfg, pretrained=True)


def _prune_into(out: Path, cfg: DictConfig, s, src: Path, src_results: dict, source_cfg: DictConfig, task: DictConfig,
                job_cfg: dict, pretrained: bool = False) -> dict:
    """The pruning job proper, in a dir this process holds; SIGINT/SIGTERM stop it at once with an
    ``interrupted`` record (runner.stop_signals, stage ``pruning``)."""
    run_name = str(cfg.run_name)  # prune-<criterion>-<source run> (runner.preflight.config.run_label) unless the user named it
    atomic_write_text(out / run_files.CONFIG, OmegaConf.to_yaml(OmegaConf.create(job_cfg)))
    tcfg = OmegaConf.merge(cfg, {"run_name": run_name})
    tracker = Tracker(tcfg, out, True, job_cfg)
    device = _device(cfg)
    exit_code = 1
    try:
        with _pruning_signals(out):
            if pretrained:
                model, tokenizer = load_model_and_tokenizer(source_cfg.model, task)
                model.eval()
            else:
                model, tokenizer = load_trained_model(src / "model", source_cfg, task)
            data = data_lib.load_task_splits(task)
            inputs = _prune_inputs(cfg, source_cfg.get("trainer", cfg.trainer), model=model, tokenizer=tokenizer, task=task,
                                   data=data, output_dir=out, device=device, tracker=tracker, step=0, source_run=str(src))
            section = run_pruning(inputs, s)
        results = {
            "status": STATUS_COMPLETED,
            "run_name": run_name,
            "task": task.name,
            "model": source_cfg.model.get("short_name"),
            "method": f"prune:{s.criterion}",
            "source_run": str(src),
            "source": {"pretrained": True} if pretrained else
            {k: src_results.get(k) for k in ("status", "stage", "run_name", "method", "adapter", "seed", "metrics")},
            "metrics": section["primary"]["metrics"],
            "main_metric": task.main_metric,
            "pruning": section,
            "provenance": provenance.collect(device, int(cfg.seed), 1),
        }
        results["wandb"] = {"run_id": tracker.run_id, "dir": tracker.run_dir}
        write_record(out, results)
        tracker.summary(flatten({k: v for k, v in results.items() if k != "pruning"}))
        exit_code = 0
        return results
    except BaseException as exc:
        write_failure(out, _status_of(exc), f"{type(exc).__name__}: {exc}", stage="pruning",
                           who={"run_name": run_name, "task": task.name, "model": source_cfg.model.get("short_name"),
                                "method": f"prune:{s.criterion}", "seed": int(cfg.seed)}, source_run=str(src))
        raise
    finally:
        tracker.finish(exit_code)


def _pruning_signals(out: Path):
    """SIGINT/SIGTERM while pruning: stop at once (RunInterrupted, stage ``pruning``)."""
    signals = StopSignals()
    signals.stage = PRUNING
    return signals.installed(out)


def _status_of(exc: BaseException) -> str:
    """interrupted for a signal (the first, or a second one), failed for anything else."""
    return STATUS_INTERRUPTED if isinstance(exc, (RunInterrupted, KeyboardInterrupt)) else STATUS_FAILED


def _device(cfg: DictConfig) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cfg.trainer.get("cpu") else "cpu")


# ---------------------------------------------------------------------------
# Pruning after training, again
# ---------------------------------------------------------------------------


def needs_pruning_again(cfg: DictConfig) -> bool:
    """``resume=auto`` (or ``true``) on a run whose training completed but whose pruning after training was
    interrupted or failed: :func:`prune_trained_run_again` finishes it, without retraining."""
    if not _resuming(cfg):
        return False
    record = read_record(Path(cfg.output_dir))
    return record is not None and record.get("status") != STATUS_COMPLETED and training_completed(record)


def _pooling_settled(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with ``model.pooling=auto`` replaced as the run replaced it in its config.yaml
    (:func:`runner.classifier_heads.settle_pooling`), so that the two compare."""
    settled = copy.deepcopy(cfg)
    settle_pooling(settled, resolve_model_path(cfg.model.name_or_path))
    return settled


def prune_trained_run_again(cfg: DictConfig, s: settings_lib.Pruning) -> dict:
    """Prune the saved model of a run whose training completed (``model/``: LoRA merged, adapters attached,
    as ``prune.from_run`` loads it) in its own dir, with the settings it ran with; the earlier attempt's
    ``pruning/`` is kept under ``.retired/``. The record keeps every training number and gets the new
    ``pruning`` section; it says ``completed`` once that is written."""
    out = Path(cfg.output_dir)
    if int(os.environ.get("RANK", "0")) != 0:  # pruning after training runs on the main process only
        return read_record(out) or {}
    with runs.DirLock(out):
        record = read_record(out) or {}
        runs.check_same_settings(out, resolved_config(_pooling_settled(cfg)))
        source_cfg = _source_config(out)
        task = _task_config(source_cfg, cfg)
        if (out / "pruning").exists():
            runs.retire_traces(out, ["pruning"])
        tracker = Tracker(cfg, out, True, resolved_config(cfg), run_id=(record.get("wandb") or {}).get("run_id"))
        exit_code = 1
        try:
            with _pruning_signals(out):
                model, tokenizer = load_trained_model(out / "model", source_cfg, task)
                inputs = _prune_inputs(cfg, source_cfg.trainer, model=model, tokenizer=tokenizer, task=task,
                                       data=data_lib.load_task_splits(task), output_dir=out, device=_device(cfg),
                                       tracker=tracker, step=int((record.get("steps") or {}).get("total") or 0))
                section = run_pruning(inputs, s)
            section["pruned_again"] = {"from": "model/", "earlier_attempt": record.get("error")}
            results = {k: v for k, v in record.items() if k not in ("stage", "error")}
            results.update(status=STATUS_COMPLETED, pruning=section)
            write_record(out, results)
            tracker.summary(flatten({"status": STATUS_COMPLETED}))
            exit_code = 0
            return results
        except BaseException as exc:
            write_record(out, {**record, "status": _status_of(exc), "stage": POST_TRAIN,
                                                    "error": f"{type(exc).__name__}: {exc}"})
            raise
        finally:
            tracker.finish(exit_code)
