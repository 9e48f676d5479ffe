"""Entry point: ``python -m runner task=glue/mrpc method=adapter``."""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from runner.config import register_config as _register_config
from runner.errors import UserError

log = logging.getLogger("runner")


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _prepare_distributed_argv() -> None:
    """Inside ``accelerate launch``/torchrun every rank runs this entry point.

    All ranks must share one output dir: the run stamp comes from the launcher
    process (the common parent), not from each rank's clock. Only rank 0 writes
    Hydra's files. A sweep inside a launcher would run once per rank, so refuse it.
    """
    if _world_size() <= 1:
        return
    if any(a in ("-m", "--multirun", "hydra.mode=MULTIRUN") or a.startswith("hparams_search=") for a in sys.argv[1:]):
        print("error: Hydra multirun inside accelerate launch/torchrun runs one sweep per rank; "
              "run the sweep outside: python -m runner.sweep --procs N -- <overrides> (docs/experiments.md)", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("RUNNER_RUN_STAMP", _launcher_stamp())
    if _rank() > 0:
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]


def _requested_cpu_processes() -> int:
    """``accelerate launch --num_processes N --cpu`` asked for N CPU processes.

    Accelerate's simple launcher (used for ``--cpu``) only starts several
    processes through mpirun; without it, it starts one and drops N. We read N
    from the launcher's command line so we can start the N processes ourselves.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "WORLD_SIZE" in os.environ:
        return 1
    try:
        import psutil

        argv = psutil.Process(os.getppid()).cmdline()
    except Exception:  # noqa: BLE001 (no parent info: assume one process)
        return 1
    head = " ".join(argv[:4])  # `accelerate launch ...` or `python -m accelerate.commands.launch ...`
    if "accelerate" not in head or "launch" not in head:
        return 1
    for i, arg in enumerate(argv):
        if arg == "--num_processes" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--num_processes="):
            return int(arg.split("=", 1)[1])
    return 1


def _relaunch_on_cpu_processes() -> None:
    n = _requested_cpu_processes()
    if n > 1:
        print(f"runner: accelerate launch --cpu starts one process; starting {n} with torchrun", file=sys.stderr)
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "runner", *sys.argv[1:]]
        os.execv(sys.executable, args)


def _launcher_stamp() -> str:
    import datetime

    import psutil

    started = psutil.Process(os.getppid()).create_time()
    return datetime.datetime.fromtimestamp(started).strftime("%Y-%m-%d_%H-%M-%S_%f")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from runner.app import execute

    return execute(cfg)


def _check_overrides_before_hydra() -> None:
    """Unknown group options, keys and bad values fail in one line, before Hydra makes a run dir."""
    from runner.validate import check_group_choices, validate_config

    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    check_group_choices(args)
    if any(a in ("-m", "--multirun", "--help", "-h", "--hydra-help", "--info") or a.startswith("--cfg") for a in sys.argv[1:]):
        return  # sweeps are checked job by job
    overrides = [a for a in args if not a.startswith("hydra.") and not a.startswith("hydra/")]
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from runner.config import compose_config
    from runner.errors import ConfigError

    try:
        cfg = compose_config(overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(_unknown_key_hint(str(exc), overrides) or _one_line(exc)) from exc
    validate_config(cfg)


def _unknown_key_hint(message: str, overrides: list[str]) -> str | None:
    """Hydra's "Could not override 'trainer.lrr'... To append use +trainer.lrr" leads the wrong way
    for a misspelling: name the closest real key instead."""
    import difflib
    import re

    from runner.config import compose_config

    match = re.search(r"Could not override '([\w.]+)'", message)
    if not match:
        return None
    key = match.group(1)
    if key.startswith("safe.") and "method=safe" not in overrides:
        return f"{key} is one of SAFE's settings: add method=safe"
    from runner.schema import entries_field

    where = entries_field(key)
    if where:  # a dict of free entries (model.config_overrides): Hydra adds them only with "+"
        return f"{where} takes entries of your own: add them with a leading +, e.g. +{where}.NAME=VALUE"
    parent, _, leaf = key.rpartition(".")
    try:
        cfg = compose_config([o for o in overrides if not o.split("=", 1)[0].lstrip("~") == key])
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # noqa: BLE001 (the other overrides may be what failed: keep Hydra's message)
        return None
    if node is None or not hasattr(node, "keys"):
        return None
    close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=1, cutoff=0.6)
    where = f"{parent}." if parent else ""
    hint = f"did you mean {where}{close[0]}?" if close else f"valid: {', '.join(str(k) for k in node.keys())}"
    return f"{key} is not a setting; {hint}"


def _check_output_root_writable() -> None:
    """Hydra creates the run (or sweep) dir before the job starts and fails with a traceback where it
    cannot: probe the place first, and fail in one line (exit 7) instead."""
    import tempfile
    from pathlib import Path

    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    target = next((a[len(key):] for a in sys.argv[1:] if a.startswith(key)), "outputs")
    place = Path(target).expanduser().absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        if not place.is_dir():
            raise NotADirectoryError(20, "not a directory", str(place))
        fd, probe = tempfile.mkstemp(dir=place, prefix=".runner-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        print(f"error: cannot write the run dir {target} ({place}: {exc.strerror or exc}); choose a writable "
              f"{key[:-1]}=...", file=sys.stderr)
        sys.exit(7)


def _one_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith(("full_key", "object_type"))]
    return "invalid override: " + "; ".join(lines[:3])


def cli() -> None:
    from runner.secrets import remember_overrides

    remember_overrides(sys.argv[1:])  # a credential given as an override is masked wherever it would appear
    _register_config()
    _relaunch_on_cpu_processes()
    _prepare_distributed_argv()
    try:
        _check_overrides_before_hydra()
    except UserError as exc:
        if "debug=true" in sys.argv[1:]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if not any(a in ("--help", "-h", "--hydra-help", "--info") or a.startswith("--cfg") for a in sys.argv[1:]):
        _check_output_root_writable()
    main()
    from runner.sweep import LAST_MULTIRUN

    if LAST_MULTIRUN and LAST_MULTIRUN["completed"] < LAST_MULTIRUN["jobs"]:
        print(f"error: {LAST_MULTIRUN['jobs'] - LAST_MULTIRUN['completed']} of {LAST_MULTIRUN['jobs']} jobs did not complete "
              f"(see {LAST_MULTIRUN['dir']}/sweep_summary.md); continue with python -m runner.sweep --resume {LAST_MULTIRUN['dir']}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
