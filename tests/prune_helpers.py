"""Tiny random encoders and configs for the head-pruning tests (no downloads, seconds to run)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

REPO = Path(__file__).resolve().parent.parent
GLUE_DIR = Path(os.environ.get("GLUE_DIR") or REPO.parent / "shared" / "data" / "glue")

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARCHS = ("bert", "roberta")


def tiny_model(arch: str = "bert", layers: int = 3, heads: int = 4, head_size: int = 8, labels: int = 2,
               attn: str = "sdpa", seed: int = 0, vocab: int = 120, dtype=torch.float32):
    """A random sequence classifier in eval mode, dropout 0."""
    kwargs = dict(
        vocab_size=vocab, hidden_size=heads * head_size, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * heads * head_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=80, num_labels=labels,
    )
    torch.manual_seed(seed)
    if arch == "bert":
        model = BertForSequenceClassification(BertConfig(**kwargs, attn_implementation=attn))
    elif arch == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(**kwargs, pad_token_id=1, attn_implementation=attn))
    else:
        raise ValueError(arch)
    # Random init gives nearly uniform attention; sharpen queries/keys so heads differ.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("query.weight", "key.weight")):
                p.mul_(6.0)
            if "classifier" in name and name.endswith("weight"):
                p.mul_(30.0)  # a loss that reacts to the heads: gradients well above rounding noise
    return model.to(dtype).eval()


def tiny_batch(batch: int = 3, length: int = 9, vocab: int = 120, seed: int = 1, pad_from: dict | None = None,
               labels: int = 2):
    """input_ids, attention_mask (example i padded from position pad_from[i]) and labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i, start in (pad_from or {}).items():
        mask[i, start:] = 0
        ids[i, start:] = 1  # RoBERTa's pad id; BERT does not care
    y = torch.randint(0, labels, (batch,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": y}


def compose(overrides: list[str], output_dir: Path):
    """The config ``python -m runner <overrides>`` would run, with output_dir set."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    from runner.config import register_resolvers as _register_resolvers

    _register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    return cfg
