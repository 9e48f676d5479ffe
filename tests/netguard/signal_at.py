"""Fault injection for the processes a test starts: a signal at a chosen function's first call.

``RUNNER_TEST_SIGNAL_AT=<module>:<function>:<SIGNAL>`` (for example
``runner.prune.pipeline:run_pruning:SIGTERM``) makes the process send itself ``SIGNAL`` when
``<module>.<function>`` is first called, so a test drives the real command line to an exact stage
(pruning, a sweep's job) and sees what the runner does there: SIGTERM/SIGINT reach its handlers,
SIGKILL kills it outright. Installed by this dir's ``sitecustomize`` (on every test process's
``PYTHONPATH``); it wraps the function once its module has been imported, nothing else.
"""

from __future__ import annotations

import functools
import importlib.abc
import os
import signal
import sys

ENV = "RUNNER_TEST_SIGNAL_AT"


def _wrap(module, function: str, signum: int) -> None:
    original = getattr(module, function)
    fired = []

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if not fired:
            fired.append(True)
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    setattr(module, function, wrapper)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``module`` with the other finders and wraps ``function`` once the module has run."""

    def __init__(self, module: str, function: str, signum: int):
        self.module, self.function, self.signum = module, function, signum

    def find_spec(self, name, path, target=None):
        if name != self.module:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                execute = spec.loader.exec_module

                def exec_module(module):
                    execute(module)
                    _wrap(module, self.function, self.signum)

                spec.loader.exec_module = exec_module
                return spec
        return None


def install(value: str) -> None:
    module, function, name = value.rsplit(":", 2)
    sys.meta_path.insert(0, _AfterImport(module, function, getattr(signal, name)))
