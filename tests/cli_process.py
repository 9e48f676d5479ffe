"""``python -m runner ...`` as a real process, without paying the heavy imports each time.

:class:`RunnerProcesses` keeps one zygote (tests/cli_zygote.py) that imported torch and the runner once and
forks a fresh child per call; :meth:`RunnerProcesses.run` returns what ``subprocess.run`` would (exit code,
stdout, stderr). Use it where a test starts the runner many times and asserts what the process does
(bad-input exits, run dir names); tests that signal a running process start their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ZYGOTE = Path(__file__).with_name("cli_zygote.py")


class RunnerProcesses:
    def __init__(self, home: Path):
        env = {**os.environ, "HOME": str(home)}  # caches a library sets up at import stay out of the real home
        self._zygote = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=str(home))

    def run(self, args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """``python -m runner *args`` in ``cwd`` with ``env`` (default: this process's environment)."""
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"args": [str(a) for a in args], "cwd": str(cwd), "env": dict(os.environ if env is None else env),
                       "stdout": str(out), "stderr": str(err), "timeout": timeout}
            self._zygote.stdin.write(json.dumps(request) + "\n")
            self._zygote.stdin.flush()
            line = self._zygote.stdout.readline()
            if not line:
                raise RuntimeError(f"the runner zygote exited ({self._zygote.poll()})")
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(reply["error"])
            return subprocess.CompletedProcess([sys.executable, "-m", "runner", *args], reply["returncode"],
                                               out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self._zygote.stdin.close()
        self._zygote.wait(timeout=30)
