"""The pre-flight (runner.preflight): a command line becomes a checked job before anything heavy loads, so
bad input fails in one line in about a second, and nothing is left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_layout import HEAVY, heavy_on_import

from runner.preflight.command_line import asks_for_information, check_output_root_writable
from runner.preflight.errors import OutputError


def test_no_module_of_the_pre_flight_loads_a_heavy_library():
    heavy = heavy_on_import()
    preflight = [m for m in heavy if m == "runner.preflight" or m.startswith("runner.preflight.")]
    assert {"runner.preflight.schema", "runner.preflight.config", "runner.preflight.validate",
            "runner.preflight.errors", "runner.preflight.command_line"} <= set(preflight)
    assert {m: heavy[m] for m in preflight if heavy[m]} == {}
    assert not heavy["runner.__main__"] and not heavy["runner.app"]  # the command line reaches torch only in a job


def test_the_pre_flight_imports_no_heavy_library():
    """Importing the whole pre-flight and the command line, composing and validating jobs (every key's type and
    range, the checks across keys, each method's own through method.checks, pruning's) imports none of the heavy
    libraries; a refused config too."""
    code = f"""
import sys
import runner.__main__
from runner.preflight.config import compose_config
from runner.preflight.errors import ConfigError
from runner.preflight.validate import validate_config
for overrides in (["method=safe", "prune=hies"], ["method=full", "adapter=none"], [], ["method=safe", "safe.policy=random"],
                  ["method=safe", "safe.policy=static", "safe.static_k=1", "prune=his", "prune.alpha=auto"]):
    validate_config(compose_config(overrides))
try:
    validate_config(compose_config(["method=safe", "safe.t_w=0.9", "safe.t_f=0.5"]))
except ConfigError as exc:
    print("refused:", exc)
print("heavy imported:", sorted(lib for lib in {sorted(HEAVY)!r} if lib in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: need 0 <= safe.t_w < safe.t_f <= 1" in proc.stdout, proc.stdout
    assert proc.stdout.strip().endswith("heavy imported: []"), proc.stdout


@pytest.mark.parametrize("bad", ["trainer.batch_size=0", "trainer.lrr=1", "task=glue/foo", "method=ful", "+model.pooler=mean"])
def test_bad_input_is_refused_before_torch_is_imported(bad, tmp_path):
    probe = ("import sys, runner.__main__ as m\n"
             f"sys.argv = ['runner', {bad!r}]\n"
             "try:\n    m.cli()\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr[-1000:]
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no run dir, no outputs/


def test_an_unwritable_output_root_is_refused_with_exit_7(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputError, match=r"cannot write the run dir .*a_file/run .*choose a writable hydra.run.dir=") as exc:
        check_output_root_writable([f"hydra.run.dir={blocker}/run"])
    assert exc.value.exit_code == 7
    with pytest.raises(OutputError, match="hydra.sweep.dir="):
        check_output_root_writable(["-m", f"hydra.sweep.dir={blocker}/sweep"])
    check_output_root_writable([f"hydra.run.dir={tmp_path}/new/run"])  # a place that can be made
    assert not (tmp_path / "new").exists()  # probed, not made


def test_information_flags_run_nothing():
    assert asks_for_information(["--cfg", "job"]) and asks_for_information(["--help"])
    assert not asks_for_information(["task=glue/mrpc", "hydra.run.dir=x"])
