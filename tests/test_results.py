"""The run record (runner.results): its declared shape, the docs generated from it, and reading records
written before a section existed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from runner import results as record_mod
from runner.aggregate import build_report, collect
from runner.results import (
    fields_of, load_record, markdown, read_completed, read_record, record_problem, section, undeclared, write_record,
)
from runner.runs import COMPLETED, DAMAGED, state
from runner.summary import run_summary

REPO = Path(__file__).resolve().parent.parent

# A record as the runner wrote it on 2026-11-27 (commit 33146e0, the first to write results.json): no
# model_source, fingerprint, head, compute, learning, method_report, artifacts; memory, flops and time
# with fewer keys than today.
FIRST_FORMAT = {
    "run_name": "mrpc-minilm-adapter-s1", "task": "mrpc", "model": "minilm", "method": "adapter", "adapter": "lora",
    "seed": 1, "metrics": {"accuracy": 0.75, "f1": 0.83, "loss": 0.52, "num_examples": 408}, "main_metric": "accuracy",
    "eval_history": [{"step": 115, "epoch": 0, "accuracy": 0.75, "f1": 0.83, "loss": 0.52, "flops": 1.0e12}],
    "memory": {"saved_for_backward_peak_bytes": 300_000_000, "saved_for_backward_mean_bytes": 2.0e8, "param_bytes": 90_000_000,
               "trainable_param_bytes": 600_000, "grad_bytes": 600_000, "optimizer_state_bytes": 1_200_000,
               "state_plus_saved_peak_bytes": 392_400_000, "process_max_rss_bytes": 1_500_000_000},
    "flops": {"train_total": 4.0e14, "train_per_step_mean": 3.5e12, "eval_per_pass": 1.0e12, "eval_total": 1.0e12},
    "time": {"setup_s": 3.0, "train_s": 250.0, "eval_s": 4.0, "step_mean_s": 2.1, "train_samples_per_s": 14.7},
    "params": {"params_total": 22_700_000, "params_trainable": 150_000, "params_adapter": 147_000},
    "steps": {"total": 115, "per_epoch": 115, "epochs": 1},
    "data": {"source": "glue_dir", "train_examples": 3668, "eval_examples": {"validation": 408}},
    "provenance": {"git_commit": "33146e06", "git_dirty": False, "python": "3.11.7", "device": "cpu", "seed": 1},
    "status": "completed",
}


def test_docs_results_md_is_generated_from_the_declarations():
    """docs/results.md is the declared shape, word for word: regenerate it with python -m runner.results."""
    assert (REPO / "docs" / "results.md").read_text() == markdown(), (
        "docs/results.md is stale: python -m runner.results > docs/results.md")


def test_every_declared_key_has_a_meaning_and_sections_are_documented():
    top = fields_of(record_mod.Results)
    assert {"metrics", "eval_history", "memory", "flops", "time", "compute", "params", "head", "method_report",
            "pruning", "learning", "provenance"} <= set(top)  # the sections the record must declare
    for key, (_, meaning) in top.items():
        assert meaning.strip(), key
    text = markdown()
    for key in ("memory", "flops", "time", "learning"):
        assert f"## `{key}`" in text
        for inner in fields_of(top[key][0]):
            assert f"| `{inner}` |" in text


def test_undeclared_keys_are_named_and_still_written(tmp_path, caplog):
    record = {"status": "completed", "memory": {"param_bytes": 1, "new_gauge": 2}, "surprise": 3, "method_report": {"any": 1}}
    assert undeclared(record) == ["memory.new_gauge", "surprise"]  # free sections (method_report) take any key
    with caplog.at_level(logging.WARNING, logger="runner.results"):
        path = write_record(tmp_path, record)
    assert json.loads(path.read_text()) == record  # a finished run never fails over its record's shape
    assert "memory.new_gauge, surprise" in caplog.text


def test_a_record_of_the_first_format_is_read_by_every_reader(tmp_path):
    run = tmp_path / "outputs" / "0_mrpc-minilm-adapter-s1"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(FIRST_FORMAT))
    (run / "config.yaml").write_text("seed: 1\nprune:\n  name: none\n")
    assert undeclared(FIRST_FORMAT) == []
    assert read_record(run) == read_completed(run) == FIRST_FORMAT
    assert state(run) == COMPLETED and record_problem(run) is None
    assert section(FIRST_FORMAT, "learning") == {} and section(FIRST_FORMAT, "memory")["param_bytes"] == 90_000_000
    text = run_summary(FIRST_FORMAT, run)
    assert "accuracy 0.7500; f1 0.8300" in text and "train 250 s" in text and "4e+14" in text
    runs_table, problems, _ = collect([tmp_path / "outputs"])
    row = runs_table.iloc[0]
    assert len(runs_table) == 1 and problems.empty
    assert (row["metric"], row["flops.train_total"], row["memory.saved_for_backward_mean_bytes"]) == (0.75, 4.0e14, 2.0e8)
    build_report([tmp_path / "outputs"], tmp_path / "report", plots=False)
    assert "75.00" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("text, says", [('{"status": "compl', "unreadable"), ("[1, 2]", "does not hold a record")])
def test_a_damaged_record_is_named_never_read_as_empty(tmp_path, text, says):
    (tmp_path / "results.json").write_text(text)
    assert read_record(tmp_path) is None and state(tmp_path) == DAMAGED
    assert says in record_problem(tmp_path) and load_record(tmp_path / "results.json")[0] is None
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "results.json").write_text(text)
    _, problems, _ = collect([tmp_path / "outputs"])
    assert problems.iloc[0]["status"] == "unreadable" and says in problems.iloc[0]["error"]
