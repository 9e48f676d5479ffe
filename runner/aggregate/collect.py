"""Reading every results.json (and the jobs that left none) into one table; the key names of
sections written by other parts of the runner are read here only."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml

from runner import run_files
from runner.preflight.schema import upgrade_saved
from runner.results import flatten, load_record, read_record
from runner.sweep import load_plan

GLUE_ORDER = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
GROUP_KEYS = ["model", "task", "method", "adapter"]  # more with --by (e.g. prune.name, trainer.lr)
# runs.csv column -> label; memory in bytes, FLOPs, seconds
EFFICIENCY = {
    "memory.saved_for_backward_mean_bytes": "saved for backward, mean",
    "memory.saved_for_backward_peak_bytes": "saved for backward, peak",
    "memory.state_plus_saved_peak_bytes": "state + saved, peak",
    "memory.cuda_peak_allocated_bytes": "CUDA peak allocated",
    "memory.cuda_peak_reserved_bytes": "CUDA peak reserved",
    "flops.train_total": "train FLOPs",
    "time.train_s": "train time (s)",
}
SKIP_FLATTEN = {"eval_history"}
MISSING = "-"  # what a table shows for a value that is not there
# pruning metrics carried beside the main one where a task has them: the HIES paper reports MRPC as F1
PAPER_METRICS = ("f1",)


# ----------------------------------------------------- other sections' key names


def pruning_entries(results: dict) -> tuple[list[dict], dict | None]:
    """Head-pruning results (HIES, ``runner.prune``): one entry per (criterion, ratio), and the unpruned reference.

    Reads ``pruning.results[*].{criterion, ratio, main_metric, stability, flops_ratio, params_ratio}``
    and ``pruning.unpruned.main_metric``, and each :data:`PAPER_METRICS` (``f1``) from ``metrics``
    (None where the task has none); also accepts a bare list of entries and ``metric`` instead of
    ``main_metric``.
    """
    section = results.get("pruning")
    if not section:
        return [], None
    entries = section.get("results", []) if isinstance(section, dict) else section
    out = []
    for e in entries or []:
        metric = e.get("main_metric", e.get("metric"))
        if isinstance(metric, dict):  # {"accuracy": ...}: the task's main metric
            metric = metric.get(results.get("main_metric"))
        out.append({"criterion": e.get("criterion"), "ratio": e.get("ratio"), "metric": metric,
                    "stability": e.get("stability"), "flops_ratio": e.get("flops_ratio"),
                    "params_ratio": e.get("params_ratio"), **_paper_metrics(e)})
    unpruned = section.get("unpruned") if isinstance(section, dict) else None
    reference = {"metric": unpruned.get("main_metric"), **_paper_metrics(unpruned)} if isinstance(unpruned, dict) else None
    return out, reference


def _paper_metrics(entry: dict) -> dict:
    metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
    return {name: metrics.get(name) for name in PAPER_METRICS}


def freeze_steps(results: dict) -> tuple[dict[str, int | None], int] | None:
    """Adapter freezing (SAFE): the step each adapter froze at (None: never) and the run's total steps.

    Reads ``method_report.adapters.<name>.freeze_step`` and ``steps.total``
    (or ``method_report.schedule_steps.total``).
    """
    report = results.get("method_report") or {}
    adapters = report.get("adapters")
    if not isinstance(adapters, dict) or not adapters:
        return None
    steps = {name: (a.get("freeze_step") if isinstance(a, dict) else None) for name, a in adapters.items()}
    total = (results.get("steps") or {}).get("total") or (report.get("schedule_steps") or {}).get("total")
    return (steps, int(total)) if total else None


def trivial_level(results: dict) -> dict | None:
    """The main metric of a constant prediction on the eval split: ``{"trivial": value, "trivial_what": label}``.

    Reads ``learning.trivial`` and ``learning.trivial_prediction`` (:mod:`runner.curves`; a float
    prediction is the training mean of a regression task, else the majority class). A pruning job on a
    saved run has no ``learning`` section: it is read from the ``results.json`` in ``source_run``.
    None when unknown (runs older than the learning check, a source run that moved).
    """
    learning = results.get("learning")
    if not isinstance(learning, dict) and results.get("source_run"):
        learning = (read_record(Path(results["source_run"])) or {}).get("learning")
    if not isinstance(learning, dict) or learning.get("trivial") is None:
        return None
    regression = isinstance(learning.get("trivial_prediction"), float)
    return {"trivial": float(learning["trivial"]), "trivial_what": "constant prediction" if regression else "majority class"}


# ------------------------------------------------------------------ collecting


def find_results(root: Path) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob(run_files.RESULTS) if not run_files.in_dot_dir(p, root) and "wandb" not in p.parts)


def _load_config(run_dir: Path) -> dict:
    """The run's config.yaml as a dict, settings that moved since as they read now (runner.preflight.schema.upgrade_saved)."""
    path = run_dir / run_files.CONFIG
    if not path.is_file():
        return {}

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return upgrade_saved(config) if isinstance(config, dict) else {}


def _config_value(cfg: dict, dotted: str):
    node = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


# Config keys that may differ between the seeds of one group without mixing settings.
PER_RUN_KEYS = ("seed", "output_dir", "run_name", "data_cache_dir", "logger", "debug", "resume", "hydra",
                "prune.from_run", "task.data_dir", "trainer.progress_bar")


def settings_of(cfg: dict) -> dict:
    """A run's settings: its flattened config without what legitimately differs per run (seeds, paths, logging)."""
    def per_run(key: str) -> bool:
        return key.endswith(".seed") or any(key == k or key.startswith(k + ".") for k in PER_RUN_KEYS)

    return {k: v for k, v in flatten(cfg, sep=".").items() if not per_run(k)}


def differing_settings(settings: list[dict]) -> list[str]:
    """Config keys whose values are not the same in every run. Runs without a config.yaml are
    skipped, and so are keys some configs lack (added to the project after those runs)."""
    settings = [s for s in settings if s]
    keys = sorted(set.intersection(*(set(s) for s in settings))) if settings else []
    return [k for k in keys if len({repr(s[k]) for s in settings}) > 1]


SWEEP_KEY = "sweep"  # --by sweep: the folder that holds the run (a sweep dir, or outputs/runs)


def _sweep_of(run_dir: Path, root: Path | None) -> str:
    """The folder holding a run, relative to the folder the report reads (its own name if that is the holder)."""
    parent = Path(run_dir).parent
    if root is None or Path(root).is_file():
        return parent.name
    root = Path(root)
    rel = os.path.relpath(parent, root)
    return root.name if rel == "." else rel


def run_row(results: dict, run_dir: Path, cfg: dict, by: list[str], root: Path | None = None) -> dict:
    source = results.get("source") or {}  # a pruning job on a saved run
    prune = _config_value(cfg, "prune.name") or ("none" if not results.get("pruning") else "?")
    row = {
        "path": str(run_dir),
        "status": results.get("status", "unknown"),
        "task": results.get("task") or _config_value(cfg, "task.name"),
        "model": results.get("model") or _config_value(cfg, "model.short_name"),
        "method": results.get("method") or _config_value(cfg, "method.name"),
        "adapter": results.get("adapter", source.get("adapter")) or "-",
        "prune": prune,
        "seed": results.get("seed", source.get("seed", _config_value(cfg, "seed"))),
        "run_name": results.get("run_name"),
        "main_metric": results.get("main_metric"),
        "metric": (results.get("metrics") or {}).get(results.get("main_metric")) if results.get("main_metric") else None,
        "error": results.get("error"),
        "step": results.get("step"),
    }
    policy = (results.get("method_report") or {}).get("policy")
    if row["method"] == "safe" and policy not in (None, "safe"):  # SAFE's baselines are methods of their own
        row["method"] = f"safe:{policy}"
    for key in by:
        row[f"cfg.{key}"] = _sweep_of(run_dir, root) if key == SWEEP_KEY else _config_value(cfg, key)
    row["_settings"] = settings_of(cfg)  # not written to runs.csv
    row.update({k: v for k, v in flatten(results, sep=".", skip=SKIP_FLATTEN).items() if k not in row})
    return row


def collect(paths: list[Path], by: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(runs, problems, raw): one row per results.json; problems also holds job dirs without one."""
    by = list(by or [])
    rows, problems, raw = [], [], []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise SystemExit(f"error: {root} does not exist")
        for path in find_results(root):
            run_dir = path.parent
            results, problem = load_record(path)
            if results is None:
                problems.append({"path": str(run_dir), "status": "unreadable", "error": problem})
                continue
            cfg = _load_config(run_dir)
            row = run_row(results, run_dir, cfg, by, root)
            rows.append(row)
            raw.append({"row": row, "results": results, "dir": run_dir})
        problems.extend(_jobs_without_results(root))
    split_models(rows)
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=["path", "status", *GROUP_KEYS, "seed", "metric"])
    not_completed = table[table["status"] != "completed"]
    listed = [{k: r.get(k) for k in ("path", "status", "task", "model", "method", "seed", "step", "error")}
              for r in not_completed.to_dict("records")]
    problems_df = pd.DataFrame(listed + problems,
                               columns=["path", "status", "task", "model", "method", "seed", "step", "error"])
    problems_df["step"] = pd.to_numeric(problems_df["step"], errors="coerce").astype("Int64")
    return table, problems_df, raw


WEIGHTS_KEY = "model_source.weights"  # results.json: the fingerprint of the weights a run started from


def split_models(rows: list[dict]) -> None:
    """Runs that share a model name but started from different weights (two folders that derive the
    same name, or ``model.short_name`` given by hand) are different models: each gets the name
    ``<name>@<first 8 hex digits of its fingerprint>``, so no table averages them together."""
    by_name: dict[str, set] = {}
    for row in rows:
        if row.get(WEIGHTS_KEY):
            by_name.setdefault(row.get("model"), set()).add(row[WEIGHTS_KEY])
    for row in rows:
        if len(by_name.get(row.get("model"), ())) > 1 and row.get(WEIGHTS_KEY):
            row["model"] = f"{row['model']}@{str(row[WEIGHTS_KEY]).split(':', 1)[-1][:8]}"


def _jobs_without_results(root: Path) -> list[dict]:
    """Hydra job dirs with no results.json (killed, still running) and sweep jobs never started."""
    out = []
    seen = set()
    if root.is_file():
        return out
    for hydra_dir in root.rglob(".hydra"):
        run_dir = hydra_dir.parent
        if run_files.in_dot_dir(hydra_dir, root) or (run_dir / run_files.RESULTS).is_file():
            continue
        seen.add(run_dir.resolve())
        has_ckpt = (run_dir / "checkpoint" / "meta.json").is_file()
        out.append({"path": str(run_dir), "status": "no results" + (" (checkpoint: resumable)" if has_ckpt else ""),
                    "error": "no results.json: still running, or killed before writing one"})
    for marker in [*root.rglob("multirun.yaml"), *root.rglob("sweep.json")]:
        sweep_dir = marker.parent
        if run_files.in_dot_dir(marker, root) or (marker.name == "multirun.yaml" and (sweep_dir / "sweep.json").is_file()):
            continue
        try:
            jobs, _ = load_plan(sweep_dir)
        except (SystemExit, Exception):  # noqa: BLE001 (not a grid sweep: nothing to compare against)
            continue
        for job in jobs:
            if not Path(job.dir).exists():
                out.append({"path": job.dir, "status": "not started",
                            "error": f"job {job.num} of the sweep never ran ({' '.join(job.overrides)})"})
    return out
