"""A process that has imported the runner and its heavy libraries once, and forks a fresh child for each
``python -m runner ...`` a test asks for (tests/cli_process.py).

A child is a real process: it runs ``python -m runner``'s own entry point (``runpy``, as ``-m`` does) in its
own working dir and environment, writes to its own stdout and stderr files and exits with the runner's exit
code; only the five-odd seconds of importing torch, transformers, PEFT and the like are shared (fork after
import, as gunicorn's preload and PyTorch's DataLoader workers do). What a library reads from the environment
when it is imported (``HF_HOME``, ``HF_HUB_OFFLINE``, the thread count) keeps the zygote's value: a test
that varies those starts its own process. Protocol: one JSON request per line on
stdin ({"args", "cwd", "env", "stdout", "stderr", "timeout"}), one JSON reply per line on stdout
({"returncode"}; -9 when the child ran past its timeout and was killed).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import sys
import threading
import time
import traceback

import accelerate  # noqa: F401  (preloaded: what every run imports)
import datasets  # noqa: F401
import peft  # noqa: F401
import torch
import transformers  # noqa: F401

import runner.__main__  # noqa: F401
import runner.prune.stage  # noqa: F401
import runner.train  # noqa: F401

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def _child(request: dict) -> None:
    """Become ``python -m runner <args>`` in the request's dir and environment; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)  # a timeout kills what the run started too
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the protocol pipe is the zygote's, not the run's
        sys.stdin = open(0, closefd=False)
        sys.argv = ["runner", *request["args"]]
        sys.path[0] = os.getcwd()  # as python -m puts the working dir first
        sys.modules.pop("runner.__main__", None)  # runpy runs it afresh as __main__ (what it imports stays loaded)
        try:
            runpy.run_module("runner", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 (as the interpreter would: the traceback, exit 1)
            traceback.print_exc()
        for thread in threading.enumerate():  # as the interpreter does at exit: wait for non-daemon threads
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 (the request could not be set up: say why on whatever stderr is)
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)  # the run and every process it started
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.05)


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        if threading.active_count() != 1:  # a fork copies only this thread: refuse rather than risk a deadlock
            reply = {"error": f"{threading.active_count()} threads in the zygote; a fork is not safe"}
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            reply = {"returncode": _wait(pid, float(request.get("timeout", 300)))}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
