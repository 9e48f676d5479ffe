"""How a job prunes: right after training, or on a saved run (``prune.from_run``).

``runner.app.execute`` validates the job once (``runner.validate``, which
returns the pruning settings), then runs :func:`after_training` as the
training recipe's post-train stage, or :func:`prune_saved_run` instead of
training when ``prune.from_run`` is set.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from runner import provenance
from runner.adapters import KINDS
from runner.errors import ConfigError, ModelError
from runner.prune import settings as settings_lib
from runner.prune.pipeline import PruneInputs, run_pruning
from runner import runs
from runner.results import STATUS_COMPLETED, STATUS_FAILED, atomic_write_json, atomic_write_text
from runner.secrets import scrub

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# After training
# ---------------------------------------------------------------------------


def after_training(settings: settings_lib.PruneSettings):
    """The post-train stage for :func:`runner.train.run`: prune the in-memory model of the completed
    run (a ``runner.train.TrainedRun``, not the recipe) with ``settings`` (validated once, by
    runner.validate); it adds ``{"pruning": ...}`` to the run's results."""

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
    for candidate in (src / "config.yaml", src / "model" / "run_config.yaml"):
        if candidate.is_file():
            return OmegaConf.load(candidate)
    raise ConfigError(f"prune.from_run={src} holds no config.yaml (nor model/run_config.yaml); is it a runner output dir?")


def _task_config(scfg: DictConfig, cfg: DictConfig) -> DictConfig:
    """The source run's task; its data_dir if that still exists, else this job's (a GLUE root such as $GLUE_DIR)."""
    task = OmegaConf.create(OmegaConf.to_container(scfg.task, resolve=True))
    src_dir = task.get("data_dir")
    if src_dir not in (None, "") and Path(str(src_dir)).expanduser().is_dir():
        return task
    with open_dict(task):
        task.data_dir = cfg.task.get("data_dir")
    return task


def _job_config(cfg: DictConfig, scfg: DictConfig, task: DictConfig) -> dict:
    """The config this pruning job really ran: the source run's task, model, adapter, method and
    trainer (what the pruned model is), this job's pruning settings, seed and logger."""
    from runner.config import resolved_config

    job = resolved_config(cfg)
    source = OmegaConf.to_container(scfg, resolve=False)
    job.pop("safe", None)  # only a SAFE source has SAFE's knobs
    job.update({key: source[key] for key in ("model", "adapter", "freeze", "safe", "method", "trainer") if key in source})
    job["task"] = OmegaConf.to_container(task, resolve=True)
    return scrub(job)


def load_trained_model(model_dir: Path, scfg: DictConfig, task: DictConfig):
    """The fine-tuned model of a saved run (LoRA merged, bottleneck adapters attached) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from runner.models import load_model_and_tokenizer

    model_dir = Path(model_dir)
    if (model_dir / "pruned_heads.json").is_file():
        raise ModelError(f"{model_dir} is already pruned; prune the fine-tuned (unpruned) run instead")
    attn = scfg.model.get("attn_implementation", "sdpa")
    # the source's pooling (runs saved before model.pooling existed pooled with cls)
    mcfg = OmegaConf.merge(scfg.model, {"pooling": scfg.model.get("pooling") or "cls"})
    kind = next((k for k in KINDS.values() if k.found_in(model_dir)), None)  # runner.adapters
    if kind is not None:  # LoRA merged, bottleneck adapters attached
        base, tokenizer = load_model_and_tokenizer(mcfg, task)
        model = kind.load(model_dir, base, scfg)
    elif (model_dir / "config.json").is_file():
        from runner.heads import apply_pooling, saved_pooling
        from runner.lm import is_lm_task

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


def prune_saved_run(cfg: DictConfig, s: settings_lib.PruneSettings) -> dict:
    """Prune a saved fine-tuned run (``s.from_run``); results go to this job's output dir with a reference to the source."""
    src = Path(str(s.from_run)).expanduser().resolve()
    pretrained = (src / "config.json").is_file() and not (src / "model").is_dir()
    if pretrained:  # a model folder, not a run: prune the pretrained model as it is (the paper's LLaMA-2 setting)
        return _prune_pretrained(cfg, s, src)
    if not (src / "model").is_dir():
        raise ConfigError(f"prune.from_run={s.from_run}: no model/ folder there; give the output dir of a finished run "
                          f"or a model folder (with config.json)")
    src_results = runs.read(src) or {}
    src_status = src_results.get("status")
    trained = src_status == STATUS_COMPLETED or (src_status == STATUS_FAILED and "post_train" in (src_results.get("stage"), src_results.get("failed_stage")))
    if src_status is not None and not trained:
        raise ConfigError(f"prune.from_run={s.from_run}: that run's results say {src_status} (step {src_results.get('step')}); "
                          f"prune a run whose training completed")
    scfg = _source_config(src)
    task = _task_config(scfg, cfg)
    out = Path(cfg.output_dir)
    if out.resolve() == src:
        raise ConfigError(f"prune.from_run={s.from_run} is this job's own output dir; pruning writes to a new dir (leave hydra.run.dir alone)")
    with runs.DirLock(out):
        runs.check_fresh(out)
        return _prune_into(out, cfg, s, src, src_results, scfg, task)


def _prune_pretrained(cfg: DictConfig, s: settings_lib.PruneSettings, src: Path) -> dict:
    """``prune.from_run=<model folder>``: prune a pretrained model without fine-tuning it, with this job's
    task (calibration on its training split, metrics on its eval split) and model settings."""
    from runner.lm import is_lm_task

    if not is_lm_task(cfg.task):
        log.warning("prune.from_run=%s is a model folder: task %s's classifier starts untrained, so its metrics say little; "
                    "fine-tune first and prune the run", src, cfg.task.name)
    scfg = OmegaConf.merge(cfg, {"model": {"name_or_path": str(src)}})
    with open_dict(scfg):
        scfg.model.short_name = src.name
    out = Path(cfg.output_dir)
    with runs.DirLock(out):
        runs.check_fresh(out)
        return _prune_into(out, cfg, s, src, {}, scfg, cfg.task, pretrained=True)


def _prune_into(out: Path, cfg: DictConfig, s, src: Path, src_results: dict, scfg: DictConfig, task: DictConfig,
                pretrained: bool = False) -> dict:
    """The pruning job proper, in a dir this process holds."""
    from runner import data as data_lib
    from runner.results import flatten
    from runner.tracking import Tracker

    run_name = str(cfg.run_name)  # prune-<criterion>-<source run> (runner.config.run_label) unless the user named it
    job_cfg = _job_config(cfg, scfg, task)
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(job_cfg)))
    tcfg = OmegaConf.merge(cfg, {"run_name": run_name})
    tracker = Tracker(tcfg, out, True, job_cfg)
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.trainer.get("cpu") else "cpu")
    exit_code = 1
    try:
        if pretrained:
            from runner.models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(scfg.model, task)
            model.eval()
        else:
            model, tokenizer = load_trained_model(src / "model", scfg, task)
        data = data_lib.load_task_splits(task)
        inputs = _prune_inputs(cfg, scfg.get("trainer", cfg.trainer), model=model, tokenizer=tokenizer, task=task,
                               data=data, output_dir=out, device=device, tracker=tracker, step=0, source_run=str(src))
        section = run_pruning(inputs, s)
        results = {
            "status": STATUS_COMPLETED,
            "run_name": run_name,
            "task": task.name,
            "model": scfg.model.get("short_name"),
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
        atomic_write_json(out / "results.json", results)
        tracker.summary(flatten({k: v for k, v in results.items() if k != "pruning"}))
        exit_code = 0
        return results
    except BaseException as exc:
        runs.write_failure(out, STATUS_FAILED, f"{type(exc).__name__}: {exc}", stage="pruning",
                           who={"run_name": run_name, "task": task.name, "model": scfg.model.get("short_name"),
                                "method": f"prune:{s.criterion}", "seed": int(cfg.seed)}, source_run=str(src))
        raise
    finally:
        tracker.finish(exit_code)
