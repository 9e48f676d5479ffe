"""Did it learn? Trivial levels, the warning, learning_curve.png, and the offline regression task."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner.curves import learning_check, trivial_levels
from runner.synthetic import make_overlap_stsb, overlap_score


def test_trivial_levels_are_the_constant_prediction_metrics():
    # majority class 1 in training; eval: 6 of 10 are 1
    t = trivial_levels(["accuracy", "f1", "matthews_correlation"], [1, 1, 0], [1] * 6 + [0] * 4, is_regression=False)
    assert t["prediction"] == 1
    assert t["metrics"]["accuracy"] == pytest.approx(0.6)
    assert t["metrics"]["f1"] == pytest.approx(2 * 0.6 / 1.6)  # precision 0.6, recall 1
    assert t["metrics"]["matthews_correlation"] == 0.0
    r = trivial_levels(["pearson", "spearmanr"], [1.0, 3.0], [0.5, 2.0, 4.0], is_regression=True)
    assert r["prediction"] == 2.0 and r["metrics"] == {"pearson": 0.0, "spearmanr": 0.0}


def test_learning_check_warns_at_or_below_the_trivial_level():
    trivial = {"prediction": 1, "metrics": {"accuracy": 0.684}}
    bad = learning_check("accuracy", {"accuracy": 0.684}, trivial)
    assert bad["above_trivial"] is False and "did not learn" in bad["warning"] and "0.6840" in bad["warning"]
    good = learning_check("accuracy", {"accuracy": 0.80}, trivial)
    assert good["above_trivial"] is True and "warning" not in good
    assert learning_check("accuracy", {"accuracy": float("nan")}, trivial)["above_trivial"] is False


def test_a_run_that_did_not_learn_says_so_and_draws_its_curve(tiny_overrides, tmp_path, caplog):
    from helpers import compose

    from runner.train import run

    out = tmp_path / "run"
    res = run(compose([*tiny_overrides, "trainer.lr=1e-6"], out))  # a random tiny BERT at lr 1e-6 learns nothing
    learning = res["learning"]
    assert learning["main_metric"] == "accuracy" and learning["above_trivial"] is False
    # the constant level: MRPC's first 64 training rows have more paraphrases (1) than not
    assert learning["trivial_prediction"] == 1 and 0.5 <= learning["trivial"] <= 1.0
    assert any("did not learn" in r.getMessage() for r in caplog.records)
    png = out / "learning_curve.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and learning["plot"] == "learning_curve.png"
    assert json.loads((out / "results.json").read_text())["learning"]["above_trivial"] is False


def test_learning_curve_goes_to_wandb_offline(tiny_overrides, tmp_path, monkeypatch):
    from helpers import compose

    from runner.train import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    overrides = [o for o in tiny_overrides if o != "logger=none"] + ["logger=wandb", "logger.mode=offline"]
    out = tmp_path / "run"
    run(compose(overrides, out))
    media = list((out / "wandb").rglob("media/images/learning_curve*.png"))
    assert media, sorted(str(p.relative_to(out)) for p in (out / "wandb").rglob("*"))[:40]


# ---------------------------------------------------------------- the offline regression task


def test_overlap_score():
    assert overlap_score("The cat sat.", "the cat sat") == 5.0
    assert overlap_score("a b", "c d") == 0.0
    assert overlap_score("a b c", "a b d") == pytest.approx(5 * 2 / 4)
    assert overlap_score("", "") == 0.0


def test_overlap_task_is_deterministic_in_the_glue_layout(glue_dir, tmp_path):
    from runner.data import load_task_splits

    a = make_overlap_stsb(glue_dir, tmp_path / "a")
    b = make_overlap_stsb(glue_dir / "MRPC", tmp_path / "b")  # the MRPC folder itself works too
    for split in ("train", "dev"):
        digest = [hashlib.sha256((d / f"{split}.tsv").read_bytes()).hexdigest() for d in (a, b)]
        assert digest[0] == digest[1]
    assert a == tmp_path / "a" / "STS-B"
    # the real STS-B task config reads it: floats in [0, 5], every MRPC pair once
    task = OmegaConf.load("conf/task/glue/stsb.yaml")
    task.data_dir = str(tmp_path / "a")
    data = load_task_splits(task)
    train, dev = np.array(data.train["label"]), np.array(data.evals["validation"]["label"])
    assert len(train) == 3668 and len(dev) == 408
    assert train.min() >= 0 and train.max() <= 5 and train.std() > 1.0  # spread enough to learn
    row = data.train[1]
    assert row["label"] == pytest.approx(overlap_score(row["sentence1"], row["sentence2"]), abs=1e-3)
    other = make_overlap_stsb(glue_dir, tmp_path / "c", seed=5)
    assert (other / "train.tsv").read_bytes() != (a / "train.tsv").read_bytes()


def test_regression_head_starts_at_the_training_label_mean(tiny_model_dir, glue_dir, tmp_path):
    from helpers import compose

    from runner.train import run

    root = tmp_path / "glue"
    make_overlap_stsb(glue_dir, root)
    overrides = [f"model.name_or_path={tiny_model_dir}", "model.short_name=tiny", "task=glue/stsb",
                 f"task.data_dir={root}", "task.max_train_samples=64", "task.max_eval_samples=32",
                 "trainer.batch_size=16", "trainer.max_steps=1", "trainer.lr=1e-9", "trainer.progress_bar=false",
                 "trainer.max_seq_length=64", "logger=none", f"data_cache_dir={tmp_path / 'cache'}"]
    res = run(compose(overrides, tmp_path / "run"))
    from runner.data import load_task_splits

    task = OmegaConf.load("conf/task/glue/stsb.yaml")
    task.data_dir, task.max_train_samples = str(root), 64
    mean = float(np.mean(load_task_splits(task).train["label"]))
    assert res["head"]["regression_bias_init"] == pytest.approx(mean)
    # after one step at a negligible lr the predictions sit around the label mean, not around 0
    assert res["learning"]["trivial_prediction"] == pytest.approx(mean)
    assert res["metrics"]["loss"] < 2.5  # about the label variance (~1.7), not the mean square (~3.6)


def test_a_finished_run_prints_where_it_went_and_what_it_reached(tiny_overrides, tmp_path, capsys, monkeypatch):
    from helpers import compose

    from runner.app import execute

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides if o != "logger=none"] + ["logger=wandb"]
    execute(compose(overrides, out))
    err = capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert f"run dir: {out}" in err
    assert f"run {res['run_name']}: completed" in err
    assert f"accuracy {res['metrics']['accuracy']:.4f} (constant prediction {res['learning']['trivial']:.4f}); f1" in err
    assert f"results: {out / 'results.json'}" in err
    assert "wandb sync " + str(out / "wandb") in err


@pytest.mark.slow
def test_a_cli_run_is_quiet_unless_asked(tiny_overrides, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOME": str(tmp_path), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "runner", *tiny_overrides, "trainer.max_steps=2", "trainer.checkpoint_every_steps=1",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for noise in ("Warning", "[accelerate", "Loading weights", "Saving current state"):
        assert noise not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) <= 12, proc.stderr  # the pooling line, the run dir, the summary block
    verbose = subprocess.run([*cmd[:-1], f"hydra.run.dir={tmp_path / 'loud'}", "verbose=true"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0 and "[transformers] loading configuration file" in verbose.stderr
