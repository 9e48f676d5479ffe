"""Entry point: ``python -m runner task=glue/mrpc method=adapter``."""

from __future__ import annotations

import datetime
import logging
import os
import sys

import hydra
import psutil
from omegaconf import DictConfig

from runner.app import execute
from runner.preflight.command_line import asks_for_information, check_output_root_writable, check_overrides
from runner.preflight.config import register_config
from runner.preflight.errors import UserError
from runner.secrets import remember_overrides
from runner.sweep import LAST_MULTIRUN

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
    started = psutil.Process(os.getppid()).create_time()
    return datetime.datetime.fromtimestamp(started).strftime("%Y-%m-%d_%H-%M-%S_%f")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return execute(cfg)


def _preflight(argv: list[str]) -> None:
    """Bad input fails in one line with its exit code (runner.preflight.errors), before Hydra makes a run dir."""
    try:
        check_overrides(argv)
        if not asks_for_information(argv):
            check_output_root_writable(argv)
    except UserError as exc:
        if "debug=true" in argv:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def cli() -> None:
    remember_overrides(sys.argv[1:])  # a credential given as an override is masked wherever it would appear
    register_config()
    _relaunch_on_cpu_processes()
    _prepare_distributed_argv()
    _preflight(sys.argv[1:])
    main()

    if LAST_MULTIRUN and LAST_MULTIRUN["completed"] < LAST_MULTIRUN["jobs"]:
        print(f"error: {LAST_MULTIRUN['jobs'] - LAST_MULTIRUN['completed']} of {LAST_MULTIRUN['jobs']} jobs did not complete "
              f"(see {LAST_MULTIRUN['dir']}/sweep_summary.md); continue with python -m runner.sweep --resume {LAST_MULTIRUN['dir']}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
