#!/usr/bin/env python
"""Keep a benchmark's finished records in the repository: the small files of every completed run and every
table under ``SRC`` copied to ``DEST``, the same layout, so that the tables can be rebuilt from ``DEST`` on a
machine that never ran them (``bench_safe.py --from-sweep``, ``bench_hies.py --from-sweep`` and
``aggregate.py`` read it as they read ``outputs/``).

``outputs/`` is not kept between machines: a long benchmark's records, not only its figures in the docs, must be
committed to outlive the machine that made them. What is kept, per completed run: ``results.json``,
``config.yaml``, ``steps.jsonl``, ``metrics.jsonl``, the run's log and plots; beside the runs: the sweeps'
plans, the benchmarks' tables and summaries. Never a checkpoint, model weights, W&B's files, an earlier
attempt (``.retired``) or a run that has not completed (it is copied once it has). A file over ``--max-mb``
is left out and named.

    python scripts/archive_runs.py outputs/depth benchmarks/depth     # after each finished job; then commit
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner import run_files  # noqa: E402
from runner.models import WEIGHT_FILES  # noqa: E402  a folder holding any (not a run dir) is a saved model: none of it is kept
from runner.results import read_completed  # noqa: E402

KEPT_SUFFIXES = {".json", ".jsonl", ".yaml", ".md", ".png", ".csv", ".log", ".txt"}
SKIPPED_DIRS = {*run_files.CHECKPOINT_SLOTS, *run_files.HYDRA_OWN, "wandb", "logs"}  # logs: the sweep's copies


@functools.cache
def _holds_weights(folder: Path) -> bool:
    return any(next(folder.glob(w), None) is not None for w in WEIGHT_FILES)


@functools.cache
def _completed(run_dir: Path) -> bool:
    return read_completed(run_dir) is not None


def _skipped(path: Path, src: Path) -> bool:
    if run_files.in_dot_dir(path, src) or any(part in SKIPPED_DIRS for part in path.relative_to(src).parts[:-1]):
        return True
    if (path.parent / run_files.RESULTS).is_file():
        return False  # a run dir's own files are kept whatever else it holds
    return _holds_weights(path.parent)


def _unfinished_run(path: Path, src: Path) -> bool:
    """Whether ``path`` lies in a run dir (the nearest folder up to ``src`` with a results.json) whose run has
    not completed."""
    for d in (path.parent, *path.parent.parents):
        if (d / run_files.RESULTS).is_file():
            return not _completed(d)
        if d == src:
            return False
    return False


def archive(src: Path, dest: Path, max_bytes: int) -> tuple[list[Path], list[str]]:
    """Copy what is kept from ``src`` to ``dest`` (only files that are new or changed). Returns the copied
    files and, for each file left out for its size, a line saying so."""
    # a folder's weights and a run's completion are decided once per call, not once per process: a run that
    # completes between two calls is copied by the second
    _holds_weights.cache_clear()
    _completed.cache_clear()
    copied, left_out = [], []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        if path.suffix not in KEPT_SUFFIXES or path.name.startswith(".") or _skipped(path, src):
            continue
        if _unfinished_run(path, src):
            continue  # a run still running, failed or interrupted: kept once it completes
        size = path.stat().st_size
        if size > max_bytes:
            left_out.append(f"{path} ({size / 2**20:.1f} MB > {max_bytes / 2**20:.0f} MB)")
            continue
        target = dest / path.relative_to(src)
        if target.is_file() and target.stat().st_size == size and target.read_bytes() == path.read_bytes():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied.append(target)
    return copied, left_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="a benchmark's output folder (e.g. outputs/depth)")
    ap.add_argument("dest", type=Path, help="where its records are kept in the repository (e.g. benchmarks/depth)")
    ap.add_argument("--max-mb", type=float, default=2.0, help="leave out (and name) any file larger than this (2 MB)")
    args = ap.parse_args(argv)
    if not args.src.is_dir():
        print(f"archive_runs: {args.src} is not a folder: give a benchmark's output folder, e.g. outputs/depth",
              file=sys.stderr)
        return 2
    copied, left_out = archive(args.src.resolve(), args.dest, int(args.max_mb * 2**20))
    for line in left_out:
        print(f"archive_runs: left out {line}", file=sys.stderr)
    print(f"archive_runs: {len(copied)} file(s) copied or updated in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
