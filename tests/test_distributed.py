"""Two CPU processes through the documented launcher: one output dir, one W&B run, correct metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from wandb_files import find_run_file, read_run

from runner.sweep import _free_port

pytestmark = pytest.mark.slow


def evaluate_saved_model(model_dir, glue_dir, n_eval):
    """Accuracy of the saved model on the first n_eval MRPC dev examples, in one process, by hand."""
    from helpers import compose_config
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from runner.data import read_glue_tsv

    task = compose_config(["task=glue/mrpc"]).task
    dev = read_glue_tsv(glue_dir / "MRPC" / "dev.tsv", task).select(range(n_eval))
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = tok(list(dev["sentence1"]), list(dev["sentence2"]), truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        preds = model(**enc).logits.argmax(-1).numpy()
    return float(np.mean(preds == np.array(list(dev["label"]))))


def test_two_cpu_processes_share_one_run(tiny_model_dir, glue_dir, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "GLUE_DIR": str(glue_dir), "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_MODE", None)
    n_eval = 33  # odd: the second process pads its last batch, gather_for_metrics must drop the duplicates
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
        "--main_process_port", str(_free_port()), "-m", "runner",  # not 29500: tests run in parallel workers
        f"model.name_or_path={tiny_model_dir}", "model.short_name=tiny", "method=full", "adapter=none",
        "task.max_train_samples=64", f"task.max_eval_samples={n_eval}", "trainer.batch_size=8", "trainer.eval_batch_size=8",
        "trainer.epochs=1", "trainer.max_seq_length=64", "trainer.progress_bar=false", f"data_cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    out = runs[0]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["provenance"]["num_processes"] == 2
    assert results["steps"]["per_epoch"] == 4  # 64 examples / (2 processes x batch 8)
    assert results["metrics"]["num_examples"] == n_eval
    assert results["metrics"]["accuracy"] == pytest.approx(evaluate_saved_model(out / "model", glue_dir, n_eval))
    wb = read_run(find_run_file(out))  # exactly one W&B run
    assert wb["summary"]["provenance/num_processes"] == 2


def test_two_cpu_processes_on_a_text_task_count_every_eval_token_once(glue_dir, tmp_path):
    """A decoder on the causal-LM task with two processes: the perplexity is over every eval token once (the
    duplicates that even out the last batch dropped), equal to the saved model's, computed in one process."""
    import torch
    from helpers import save_family_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.data import load_task_splits
    from runner.preflight.config import compose_config
    from runner.prune.quality import LanguageModel

    model_dir = save_family_dir("llama", tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    rows = [r.split("\t")[3] for r in (glue_dir / "MRPC" / "train.tsv").read_text().splitlines()[1:200]]
    (data / "train.txt").write_text("\n".join(rows[:120]))
    (data / "valid.txt").write_text("\n".join(rows[120:]))  # an odd number of blocks across two processes
    overrides = [f"model.name_or_path={model_dir}", "task=lm/text", f"task.data_dir={data}", "method=full", "adapter=none",
                 "trainer.batch_size=4", "trainer.eval_batch_size=4", "trainer.max_seq_length=32", "trainer.max_steps=3",
                 "trainer.progress_bar=false", "logger=none", f"data_cache_dir={tmp_path / 'cache'}"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
           "--main_process_port", str(_free_port()), "-m", "runner", *overrides]
    env = {**os.environ, "HOME": str(tmp_path), "GLUE_DIR": str(glue_dir)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = next((tmp_path / "outputs" / "runs").iterdir())
    results = json.loads((out / "results.json").read_text())
    cfg = compose_config(overrides)
    q = LanguageModel(cfg.task, AutoTokenizer.from_pretrained(str(out / "model")), 32)
    blocks = q.tokenize(load_task_splits(cfg.task).evals["validation"])
    assert len(blocks) % 2 == 1 or len(blocks) % 8 != 0  # the last batch is uneven across the processes
    loader = torch.utils.data.DataLoader(blocks, batch_size=4, collate_fn=q.collator)
    alone = q.metrics(q.outputs(AutoModelForCausalLM.from_pretrained(str(out / "model")), loader, torch.device("cpu"),
                                choices=False))
    assert results["metrics"]["tokens"] == alone["tokens"]
    assert results["metrics"]["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-4)


def test_a_resume_with_another_number_of_processes_is_refused_and_the_run_stays_resumable(tiny_model_dir, glue_dir, tmp_path):
    """Issue 38, rule 2, through the command line: a 1-process run stopped by SIGTERM (injected at its first checkpoint
    save, tests/netguard/signal_at.py), resumed with 2 processes: refused (before, it completed with the effective
    batch doubled); the record and checkpoint are untouched and a 1-process resume completes."""
    env = {**os.environ, "HOME": str(tmp_path), "GLUE_DIR": str(glue_dir)}
    out = tmp_path / "run"
    overrides = [f"model.name_or_path={tiny_model_dir}", "model.short_name=tiny", "method=full", "adapter=none",
                 "task.max_train_samples=64", "task.max_eval_samples=16", "trainer.batch_size=8", "trainer.epochs=2",
                 "trainer.max_seq_length=32", "trainer.checkpoint_every_steps=4", "trainer.progress_bar=false",
                 "logger=none", f"data_cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"]
    stopped = subprocess.run([sys.executable, "-m", "runner", *overrides], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300, env={**env, "RUNNER_TEST_SIGNAL_AT": "runner.checkpoint:save:SIGTERM"})
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "interrupted"
    step = record["checkpoint_step"]

    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
                          "--main_process_port", str(_free_port()), "-m", "runner", *overrides, "resume=true"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode != 0
    assert ("error: resume=true but since the checkpoint the number of processes (1 -> 2); the effective batch "
            "(batch_size x grad_accum_steps x processes) (8 -> 16) changed") in two.stderr
    assert json.loads((out / "results.json").read_text()) == record
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["global_step"] == step

    one = subprocess.run([sys.executable, "-m", "runner", *overrides, "resume=true"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    done = json.loads((out / "results.json").read_text())
    assert done["status"] == "completed" and done["steps"]["total"] == 16 and done["provenance"]["num_processes"] == 1
