"""The names of a run dir's files, here only (runner.runs: what they mean for a rerun)."""

from pathlib import Path

RESULTS = "results.json"  # the run's record (runner.results)
CONFIG = "config.yaml"  # the resolved config it ran with (credentials masked)
STEPS = "steps.jsonl"  # one record per optimizer step
METRICS = "metrics.jsonl"  # what the tracker logged, one record per line
LEARNING_CURVE = "learning_curve.png"
LOCK_FILE = ".lock"
RETIRED = ".retired"  # earlier attempts moved aside (runner.runs.retire_traces, retire_dir)
HYDRA_OWN = {".hydra", LOCK_FILE, RETIRED}
# runner.checkpoint's folders: the checkpoint, the new one being written (complete once its meta.json is), the one
# being replaced; a folder is deleted only after a rename to a trash name, so none of these is ever half deleted
CHECKPOINT_SLOTS = ("checkpoint", ".checkpoint.tmp", ".checkpoint.old")


def in_dot_dir(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a folder under ``root`` whose name starts with a dot (.hydra, .retired, a checkpoint
    being written or replaced, .submitit): what is there is never a run's record, neither for a report nor for
    the archive."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        parts = Path(path).parts
    return any(p.startswith(".") for p in parts[:-1])
