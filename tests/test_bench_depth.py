"""scripts/bench_depth.sh: the plan's phases, as the sweeps it would start (DRY_RUN=1), and a bad phase refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _dry_run(tmp_path, plan: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "bench_depth.sh")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "DRY_RUN": "1",
                               "PLAN": plan, **env})


def _sweeps(stdout: str) -> dict[str, list[str]]:
    """sweep dir (relative to OUT) -> its overrides, from the '+ python -m runner.sweep --dir D -- ...' lines."""
    out = {}
    for line in stdout.splitlines():
        if "-m runner.sweep --dir " in line:
            head, _, overrides = line.partition(" -- ")
            out[head.split("--dir ", 1)[1]] = overrides.split()
    return out


def test_phases_plan_the_sweeps_of_the_issue(tmp_path):
    done = _dry_run(tmp_path, "minilm seed:2 frontier budget learn", TASKS="sst2")
    assert done.returncode == 0, done.stderr
    sweeps = {str(Path(d).relative_to(tmp_path)): o for d, o in _sweeps(done.stdout).items()}
    assert list(sweeps) == [
        "minilm_sst2/safe/adapter", "minilm_sst2/safe/safe",
        *(f"minilm_sst2/learn/full-s{s}-cls" for s in (1, 2, 3)),
        "safe_sst2/seed2/adapter", "safe_sst2/seed2/safe",
        *(f"frontier_sst2/{n}/seed{s}/safe" for n in ("tf0.5-T0.5", "tf0.5", "tw0.1-tf0.5", "drift-tf0.5") for s in (1, 2)),
        "budget_sst2/seed1/safe",
        # seed by seed, RTE's LoRA run first: a session that ends early has every (task, recipe) on seed 1
        *(d for s in (1, 2, 3) for d in (f"learn/rte_lora/lora-s{s}-mean", f"learn/mrpc_rte/full-s{s}-mean",
                                          f"learn/sst2/full-s{s}-mean")),
    ]
    for name, overrides in sweeps.items():
        model = "model=minilm" if name.startswith("minilm") else "model=mpnet"
        assert model in overrides, name
        # SST-2 trains on the same 8,000 sentences everywhere; MRPC and RTE on their whole training sets
        assert ("task.max_train_samples=8000" in overrides) == ("glue/sst2" in " ".join(overrides)), name
    assert "seed=1,2,3" in sweeps["minilm_sst2/safe/safe"] and "method=safe" in sweeps["minilm_sst2/safe/safe"]
    frontier = {n: {o for o in sweeps[f"frontier_sst2/{n}/seed2/safe"] if o.startswith("safe.")}
                for n in ("tf0.5", "tf0.5-T0.5", "tw0.1-tf0.5", "drift-tf0.5")}
    assert frontier == {"tf0.5": {"safe.t_f=0.5"}, "tf0.5-T0.5": {"safe.t_f=0.5", "safe.threshold=0.5"},
                        "tw0.1-tf0.5": {"safe.t_w=0.1", "safe.t_f=0.5"},
                        "drift-tf0.5": {"safe.t_f=0.5", "safe.importance=drift"}}
    assert "seed=1" in sweeps["frontier_sst2/tf0.5/seed1/safe"] and "seed=2" in sweeps["frontier_sst2/tf0.5/seed2/safe"]
    assert "safe.budget_mode=true" in sweeps["budget_sst2/seed1/safe"]
    assert "method=full" in sweeps["learn/sst2/full-s1-mean"] and "method=adapter" in sweeps["learn/rte_lora/lora-s1-mean"]
    assert all("trainer.group_by_length=true" in o for n, o in sweeps.items() if n.startswith("learn/"))  # as every phase
    # HIES waits for the LoRA runs it prunes, and says so
    assert "MiniLM on SST-2: 0 of 3 LoRA runs completed: HIES waits" in done.stdout
    assert "no completed LoRA run for sst2 seed 2 yet: HIES waits" in done.stdout


def test_an_unknown_phase_is_refused_in_one_line(tmp_path):
    done = _dry_run(tmp_path, "seed1")
    assert done.returncode == 2
    assert done.stderr.strip() == ("bench_depth: unknown phase 'seed1' in PLAN (seed:<N>, minilm, probes, frontier, budget, "
                                   "learn)")


def test_the_frontier_runs_on_another_task_and_on_chosen_settings(tmp_path):
    """FRONTIER_TASK=mrpc: the same screen on MRPC's whole training set; FRONTIER_SETTINGS picks settings by name."""
    done = _dry_run(tmp_path, "frontier", FRONTIER_TASK="mrpc", FRONTIER_SEEDS="3", FRONTIER_SETTINGS="tf0.5-T0.5 drift-tf0.5")
    assert done.returncode == 0, done.stderr
    sweeps = {str(Path(d).relative_to(tmp_path)): o for d, o in _sweeps(done.stdout).items()}
    assert list(sweeps) == ["frontier_mrpc/tf0.5-T0.5/seed3/safe", "frontier_mrpc/drift-tf0.5/seed3/safe"]
    for overrides in sweeps.values():
        assert {"task=glue/mrpc", "seed=3", "model=mpnet"} <= set(overrides)
        assert not any(o.startswith("task.max_train_samples") for o in overrides)
    assert {"safe.t_f=0.5", "safe.threshold=0.5"} <= set(sweeps["frontier_mrpc/tf0.5-T0.5/seed3/safe"])


def test_budget_mode_runs_on_chosen_seeds(tmp_path):
    """BUDGET_SEEDS=3: budget_mode beside a seed whose LoRA run this session has (its peak is a ratio to that run)."""
    done = _dry_run(tmp_path, "budget", TASKS="mrpc sst2", BUDGET_SEEDS="3")
    assert done.returncode == 0, done.stderr
    sweeps = {str(Path(d).relative_to(tmp_path)): o for d, o in _sweeps(done.stdout).items()}
    assert list(sweeps) == ["budget_mrpc/seed3/safe", "budget_sst2/seed3/safe"]
    for overrides in sweeps.values():
        assert {"seed=3", "method=safe", "model=mpnet", "safe.budget_mode=true"} <= set(overrides)
    assert "task.max_train_samples=8000" in sweeps["budget_sst2/seed3/safe"]


def test_the_learn_phase_runs_the_seeds_it_is_given(tmp_path):
    done = _dry_run(tmp_path, "learn", LEARN_SEEDS="2")
    assert done.returncode == 0, done.stderr
    sweeps = [str(Path(d).relative_to(tmp_path)) for d in _sweeps(done.stdout)]
    assert sweeps == ["learn/rte_lora/lora-s2-mean", "learn/mrpc_rte/full-s2-mean", "learn/sst2/full-s2-mean"]
