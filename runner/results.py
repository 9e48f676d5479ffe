"""A run's record, ``results.json``: its declared shape, and the one place that writes and reads it.

:class:`Results` declares every top-level key and, for the sections the runner fills itself, every key
inside them, each with its meaning (``Annotated[type, "what it is"]``); ``docs/results.md`` is
generated from these declarations (``python -m runner.results``) and a test keeps the two equal. The
``method_report`` and ``pruning`` sections belong to the method and to head pruning and are described
in docs/safe.md and docs/hies.md.

Writing: :func:`write_record` (a completed or partial record), :func:`write_running`, :func:`write_failure`
(the one shape of a record of a run that did not complete) and :func:`keep_previous_record`. Reading:
:func:`read_record`, :func:`read_completed`, :func:`record_problem`, :func:`parse_record` and
:func:`load_record` (a file by path).
Every reader accepts records written before a section existed: a missing section reads as absent
(:func:`section` gives ``{}``); nothing is rewritten.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Optional, TypedDict

from runner.atomic_io import atomic_write_json
from runner.run_files import RESULTS

log = logging.getLogger(__name__)

STATUS_COMPLETED, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_RUNNING = "completed", "failed", "interrupted", "running"
Number = Optional[float]


class ModelSource(TypedDict, total=False):
    name_or_path: Annotated[str, "model.name_or_path as given"]
    path: Annotated[str, "the local folder it was loaded from"]
    model_type: Annotated[str, "the checkpoint's config.model_type (bert, mpnet, llama, ...)"]
    family: Annotated[str, "the runner.arch layout that runs it"]
    revision: Annotated[Optional[str], "model.revision"]
    weights: Annotated[str, "a digest of the weight files the run started from"]


class Memory(TypedDict, total=False):
    saved_for_backward_peak_bytes: Annotated[int, "largest bytes saved for backward by one micro-batch (max over processes)"]
    saved_for_backward_mean_bytes: Annotated[Number, "mean over optimizer steps of the bytes saved for backward"]
    saved_for_backward_measured_micro_batches: Annotated[int, "micro-batches measured with saved-tensor hooks"]
    saved_for_backward_predicted_micro_batches: Annotated[int, "micro-batches whose saved bytes were predicted from measured lengths"]
    saved_for_backward_method: Annotated[Optional[str], "how saved-for-backward bytes were measured (null: not measured)"]
    param_bytes: Annotated[int, "bytes of every parameter"]
    trainable_param_bytes: Annotated[int, "bytes of the trainable parameters at the end"]
    grad_bytes: Annotated[int, "bytes of one gradient per trainable parameter"]
    optimizer_state_bytes: Annotated[int, "bytes of the optimizer's state at the end"]
    state_plus_saved_peak_bytes: Annotated[int, "parameters + gradients + optimizer state + peak saved for backward"]
    process_max_rss_bytes: Annotated[int, "the process's peak resident memory"]
    cuda_peak_allocated_bytes: Annotated[int, "CUDA only: torch.cuda.max_memory_allocated"]
    cuda_peak_reserved_bytes: Annotated[int, "CUDA only: torch.cuda.max_memory_reserved"]
    cuda_peak_bytes_by_phase: Annotated[dict, "CUDA only: peak allocated bytes of each phase (train, eval, ...)"]
    cuda_allocated_mean_bytes: Annotated[Number, "CUDA only: mean allocated bytes over optimizer steps"]


class Flops(TypedDict, total=False):
    train_total: Annotated[float, "training FLOPs (forward + backward + a method's own, e.g. SAFE's probe), summed over processes"]
    train_per_step_mean: Annotated[float, "train_total / optimizer steps"]
    eval_per_pass: Annotated[Number, "FLOPs of the last evaluation pass"]
    eval_total: Annotated[float, "FLOPs of every evaluation pass"]
    counted_train_shapes: Annotated[int, "batch shapes whose FLOPs were counted"]
    predicted_train_shapes: Annotated[int, "batch shapes whose FLOPs were predicted from counted ones"]
    method: Annotated[str, "how FLOPs were counted"]


class Time(TypedDict, total=False):
    setup_s: Annotated[float, "loading model and data, building the loop"]
    train_s: Annotated[float, "the training phase without evaluation"]
    eval_s: Annotated[float, "the final evaluation"]
    step_mean_s: Annotated[Number, "mean optimizer-step time"]
    step_median_s: Annotated[Number, "median optimizer-step time"]
    train_samples_per_s: Annotated[Number, "training examples x epochs / train_s (null with trainer.max_steps)"]
    train_tokens_per_s: Annotated[Number, "padded training tokens / train_s"]
    measure_overhead_s: Annotated[Number, "estimated cost of FLOP counting and saved-tensor hooks (runner.measure)"]
    measured_steps: Annotated[int, "optimizer steps that counted FLOPs or hooked saved tensors"]
    resumes: Annotated[list, "each resume from a checkpoint: {step, time_carried}; with time_carried the phase times "
                             "include the time before it, up to that checkpoint (work after it was redone, counted "
                             "once); without (an older checkpoint) they count only what ran after it. Empty: never "
                             "interrupted"]
    paused_s: Annotated[float, "seconds the run stood paused by SIGTSTP (Ctrl-Z, kill -TSTP) until SIGCONT, left "
                               "out of every time above and of each step's step_time_s (runner.run_clock); a "
                               "SIGSTOP from outside is not seen"]


class Params(TypedDict, total=False):
    params_total: Annotated[int, "every parameter"]
    params_trainable: Annotated[int, "trainable at the start"]
    params_adapter: Annotated[int, "adapter parameters"]


class Fingerprint(TypedDict, total=False):
    weights: Annotated[str, "model_source.weights"]
    data: Annotated[str, "a digest of the data as read"]
    world_size: Annotated[int, "processes"]
    effective_batch: Annotated[int, "examples per optimizer step over all processes"]
    resume_accepted_changes: Annotated[list, "fingerprint entries a resume accepted as changed (resume_accept_changes)"]


class Head(TypedDict, total=False):
    pooling: Annotated[str, "how the classifier reads the sequence (cls, mean, ...)"]
    pooling_source: Annotated[str, "where model.pooling=auto found it"]
    regression_bias_init: Annotated[Number, "a regression head's bias start (the training mean)"]
    trains: Annotated[list, "the head's trained modules"]
    params_trainable: Annotated[int, "the head's trainable parameters"]
    adapter_targets: Annotated[list, "the modules the adapters were put on"]


class Steps(TypedDict, total=False):
    total: Annotated[int, "optimizer steps run"]
    per_epoch: Annotated[int, "optimizer steps per epoch"]
    epochs: Annotated[int, "epochs"]


class Data(TypedDict, total=False):
    source: Annotated[str, "where the examples came from"]
    train_examples: Annotated[int, "training examples (after task.max_train_samples and the hold-out)"]
    holdout_examples: Annotated[int, "examples held out of training (task.holdout)"]
    eval_examples: Annotated[dict, "examples per evaluation split"]
    input: Annotated[dict, "per split: file, rows read, skipped, used; truncation and LM blocks dropped"]


class Provenance(TypedDict, total=False):
    git_commit: Annotated[Optional[str], "the runner's commit"]
    git_dirty: Annotated[Optional[bool], "uncommitted changes in the runner"]
    packages: Annotated[dict, "versions of the packages that compute"]
    python: Annotated[str, "the Python version"]
    platform: Annotated[str, "the operating system"]
    device: Annotated[str, "cpu or cuda"]
    device_name: Annotated[str, "the processor or GPU"]
    num_processes: Annotated[int, "processes"]
    torch_threads: Annotated[int, "torch.get_num_threads()"]
    seed: Annotated[int, "the seed"]


class Compute(TypedDict, total=False):
    device: Annotated[str, "cpu or cuda"]
    mixed_precision: Annotated[str, "trainer.mixed_precision"]
    tf32: Annotated[bool, "whether TF32 matmuls were on"]
    compile: Annotated[bool, "trainer.compile"]


class Learning(TypedDict, total=False):
    main_metric: Annotated[str, "the task's main metric"]
    final: Annotated[Number, "its final value"]
    trivial: Annotated[Number, "its value for a constant prediction (majority class, training mean, unigrams)"]
    trivial_prediction: Annotated[Any, "that constant prediction"]
    trivial_metrics: Annotated[dict, "every metric of that prediction"]
    margin: Annotated[Number, "final - trivial, in the metric's direction"]
    above_trivial: Annotated[Optional[bool], "whether the model learned more than the constant prediction"]
    warning: Annotated[str, "set when it did not"]
    plot: Annotated[str, "learning_curve.png, when drawn"]


class Artifacts(TypedDict, total=False):
    model: Annotated[str, "the saved model folder"]
    steps: Annotated[str, "the per-step records (steps.jsonl)"]
    config: Annotated[str, "the resolved config (config.yaml)"]


class Wandb(TypedDict, total=False):
    run_id: Annotated[Optional[str], "the W&B run id (offline or online)"]
    dir: Annotated[Optional[str], "its local folder"]


class Sharpness(TypedDict, total=False):
    lambda_max: Annotated[float, "largest Hessian eigenvalue of the training loss (power iteration)"]
    iterations: Annotated[int, "power iterations run"]
    history: Annotated[list, "the estimate after each iteration"]
    converged: Annotated[bool, "whether the last two estimates agree within the tolerance"]
    loss: Annotated[float, "the mean training loss on those batches"]
    wrt: Annotated[str, "the parameters it is taken over"]
    num_params: Annotated[int, "how many"]
    batches: Annotated[int, "training batches used"]
    examples: Annotated[int, "training examples used"]
    unmerged_for_measurement: Annotated[int, "merged adapters unmerged to measure"]
    seconds: Annotated[float, "time it took"]


class Results(TypedDict, total=False):
    """One run's record (``<run dir>/results.json``)."""

    status: Annotated[str, "completed | running | failed | interrupted"]
    stage: Annotated[str, "where a run that did not complete stopped (before_training, train, finish, post_train, pruning, killed, no_results)"]
    error: Annotated[str, "why it did not complete, in one line"]
    run_name: Annotated[str, "the run's name"]
    task: Annotated[str, "task.name"]
    model: Annotated[str, "model.short_name"]
    model_source: Annotated[ModelSource, "which weights the run started from"]
    method: Annotated[str, "adapter | full | safe | prune:<criterion>"]
    adapter: Annotated[Optional[str], "the adapter kind (null for full fine-tuning)"]
    seed: Annotated[int, "the seed"]
    metrics: Annotated[dict, "final evaluation: every task metric, loss, num_examples"]
    main_metric: Annotated[str, "the metric tables and checks use"]
    eval_history: Annotated[list, "one record per evaluation: step, epoch, metrics, flops"]
    memory: Annotated[Memory, "memory, in bytes"]
    flops: Annotated[Flops, "floating-point operations"]
    time: Annotated[Time, "seconds"]
    params: Annotated[Params, "parameter counts"]
    fingerprint: Annotated[Fingerprint, "what a resume must find unchanged"]
    head: Annotated[Head, "the classifier head and what trains"]
    steps: Annotated[Steps, "optimizer steps"]
    data: Annotated[Data, "the examples used"]
    provenance: Annotated[Provenance, "code, packages and machine"]
    compute: Annotated[Compute, "numeric settings as run"]
    learning: Annotated[Learning, "the final main metric against a constant prediction"]
    sharpness: Annotated[Sharpness, "with trainer.sharpness.enabled"]
    method_report: Annotated[dict, "the method's own report (SAFE: docs/safe.md); {} for adapter and full"]
    pruning: Annotated[dict, "head pruning's section (docs/hies.md)"]
    source_run: Annotated[str, "a pruning job: the run dir it pruned"]
    source: Annotated[dict, "a pruning job: that run's status, name, method, adapter, seed and metrics"]
    artifacts: Annotated[Artifacts, "files the run wrote"]
    wandb: Annotated[Wandb, "the W&B run"]
    # a run that did not complete
    step: Annotated[int, "the optimizer step it stopped at"]
    checkpoint_step: Annotated[Optional[int], "the step resume=true continues from (null: none)"]
    checkpoint: Annotated[Optional[str], "that checkpoint's folder"]
    attempts: Annotated[list, "earlier attempts that failed without getting further: status, error, step, at"]
    exit_code: Annotated[int, "the job's exit code (sweep and job wrapper)"]
    job: Annotated[dict, "a sweep job's number and overrides"]
    log: Annotated[str, "a sweep job's log file"]
    pid: Annotated[int, "a running run's process"]
    started_at: Annotated[str, "when a running run started"]
    finished_at: Annotated[str, "when a run that did not complete stopped"]


# --------------------------------------------------------------------------- the declared shape


@functools.lru_cache(maxsize=None)
def fields_of(declared: type) -> dict[str, tuple[type, str]]:
    """A TypedDict's keys in order: ``{key: (type, meaning)}`` (resolved once per TypedDict; do not modify)."""
    hints = typing.get_type_hints(declared, include_extras=True)
    return {key: (hint.__origin__, hint.__metadata__[0]) for key, hint in hints.items()}


def undeclared(record: dict) -> list[str]:
    """Keys of ``record`` that :class:`Results` does not declare (dotted inside declared sections)."""
    declared = fields_of(Results)
    out = []
    for key, value in record.items():
        if key not in declared:
            out.append(key)
        elif typing.is_typeddict(inner := declared[key][0]) and isinstance(value, dict):
            known = fields_of(inner)
            out += [f"{key}.{k}" for k in value if k not in known]
    return out


def section(record: dict | None, name: str) -> dict:
    """A section of a record, ``{}`` when the record predates it or it is not a dict."""
    value = (record or {}).get(name)
    return value if isinstance(value, dict) else {}


def markdown() -> str:
    """docs/results.md, from the declarations."""
    lines = ["# results.json", "",
             "Every run dir holds one `results.json`, written and read only through `runner/results.py`; this page",
             "is generated from its declarations (`python -m runner.results > docs/results.md`). A record written",
             "before a key existed simply lacks it; every reader accepts that. `method_report` is described in",
             "docs/safe.md and `pruning` in docs/hies.md.", "", "| key | type | meaning |", "|---|---|---|"]
    nested = []
    for key, (tp, meaning) in fields_of(Results).items():
        lines.append(f"| `{key}` | {_type_name(tp)} | {_cell(meaning)} |")
        if typing.is_typeddict(tp):
            nested.append((key, tp))
    for key, tp in nested:
        lines += ["", f"## `{key}`", "", "| key | type | meaning |", "|---|---|---|"]
        lines += [f"| `{k}` | {_type_name(t)} | {_cell(m)} |" for k, (t, m) in fields_of(tp).items()]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _type_name(tp) -> str:
    if typing.is_typeddict(tp):
        return "object (below)"
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + " or null"
    return {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "list",
            Any: "any"}.get(tp, str(tp))


# --------------------------------------------------------------------------- writing


def path_of(run_dir: Path) -> Path:
    return Path(run_dir) / RESULTS


def write_record(run_dir: Path, record: dict) -> Path:
    """Write a run's record atomically (a reader sees the old one or the new one). Keys the declaration
    lacks are written and logged: a finished run never fails over its record's shape."""
    extra = undeclared(record)
    if extra:
        log.warning("results.json: keys not declared in runner.results.Results: %s", ", ".join(extra))
    path = path_of(run_dir)
    atomic_write_json(path, record)
    return path


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def identity(cfg) -> dict:
    """Which run a record is of (run_name, task, model, method, seed), read leniently from a config
    that may itself be what failed."""

    def field(path: str):
        try:
            node = cfg
            for key in path.split("."):
                node = node[key]
            return node
        except Exception:  # noqa: BLE001
            return None

    return {"run_name": field("run_name"), "task": field("task.name"), "model": field("model.short_name"),
            "method": field("method.name"), "seed": field("seed")}


def write_running(run_dir: Path, cfg) -> None:
    """A fresh run's first record: a run that dies leaves one."""
    write_record(run_dir, {"status": STATUS_RUNNING, **identity(cfg), "pid": os.getpid(), "started_at": _now()})


def write_failure(run_dir: Path, status: str, error: str, *, stage: str, who: dict, **fields) -> Path:
    """The record of a run that did not complete, in one shape whoever writes it (training, pruning,
    the job wrapper, the sweep): ``status`` (failed | interrupted), ``stage`` (where it stopped:
    before_training, train, finish, post_train, pruning, no_results), ``error`` (one line), who the
    run is (:func:`identity`), ``finished_at``, and what the writer knows besides (``step``,
    ``checkpoint_step``, ``exit_code``, ...)."""
    return write_record(run_dir, {"status": status, "stage": stage, "error": error, **who, **fields, "finished_at": _now()})


def keep_previous_record(run_dir: Path, previous: dict, status: str, error: str, step: int) -> None:
    """Add a failed attempt to the dir's existing record (``previous``, as read) instead of replacing it."""
    attempts = list(previous.get("attempts") or [])
    attempts.append({"status": status, "error": error, "step": step, "at": _now()})
    write_record(run_dir, {**previous, "attempts": attempts})


# --------------------------------------------------------------------------- reading


def load_record(path: Path) -> tuple[dict | None, str | None]:
    """A ``results.json`` by path and why it cannot be read: (record, None), (None, problem), or (None, None)
    when absent."""
    path = Path(path)
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, (f"{path} is unreadable ({type(exc).__name__}: {exc}); restore it, or move the run dir away "
                      "to rerun it (its trained outputs are left untouched)")
    if not isinstance(data, dict):
        return None, f"{path} does not hold a record (a JSON object); restore it or move the run dir away"
    return data, None


def parse_record(run_dir: Path) -> tuple[dict | None, str | None]:
    """A run dir's record and why it cannot be read (:func:`load_record`)."""
    return load_record(path_of(run_dir))


def read_record(run_dir: Path) -> Results | None:
    """A run dir's record, or None when it is missing or unreadable (a run that died early)."""
    return parse_record(run_dir)[0]


def read_completed(run_dir: Path) -> Results | None:
    """A run dir's record if its status is completed, else None (failed, interrupted, running, missing)."""
    record = read_record(run_dir)
    return record if record is not None and record.get("status") == STATUS_COMPLETED else None


def training_completed(record: dict | None) -> bool:
    """Whether a record's training completed: ``completed``, or a run whose stage after training (head
    pruning) failed or was interrupted; its model and training numbers are then complete."""
    record = record or {}
    return record.get("status") == STATUS_COMPLETED or record.get("stage") == "post_train"


def record_problem(run_dir: Path) -> str | None:
    """Why a dir's ``results.json`` exists but cannot be read (None when it is fine or absent): such a
    record is never rerun over, it may be a finished run's only one."""
    return parse_record(run_dir)[1]


def flatten(d: dict, sep: str = "/", skip: tuple = (), prefix: str = "") -> dict:
    """Nested results as flat keys (``memory/param_bytes``); lists and top-level ``skip`` keys are left out."""
    out = {}
    for k, v in d.items():
        if k in skip and not prefix:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, sep, skip, key + sep))
        elif not isinstance(v, list):
            out[key] = v
    return out


if __name__ == "__main__":
    sys.stdout.write(markdown())
