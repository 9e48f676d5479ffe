"""Saving and loading a physically pruned model.

A pruned model folder holds the usual ``config.json`` (with the original head
count), ``model.safetensors`` (the pruned, smaller weights), the tokenizer
and ``pruned_heads.json``. Loading builds the model from the config, removes
the same heads, then loads the weights strictly, so every shape must match.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForSequenceClassification

from runner.errors import ModelError
from runner.heads import apply_pooling, saved_pooling
from runner.prune.physical import PRUNED_HEADS_ATTR, heads_kept, prune_heads
from runner.results import atomic_write_json

PRUNED_HEADS_FILE = "pruned_heads.json"
WEIGHTS_FILE = "model.safetensors"


def save_pruned(model, target: Path, tokenizer=None, extra: dict | None = None) -> Path:
    """Write config, pruned weights, tokenizer and the list of pruned heads."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    pruned = getattr(model, PRUNED_HEADS_ATTR, None) or {}
    model.config.save_pretrained(str(target))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(target / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(target))
    atomic_write_json(target / PRUNED_HEADS_FILE, {
        "format": 1,
        "pruned_heads": {str(k): v for k, v in sorted(pruned.items())},
        "bottleneck_adapters": bottleneck_layout(model),
        "heads_per_layer": heads_kept(model),
        "num_heads_original": int(model.config.num_attention_heads),
        **(extra or {}),
    })
    return target


def _meta(folder: Path) -> dict:
    path = Path(folder) / PRUNED_HEADS_FILE
    if not path.is_file():
        raise ModelError(f"{folder} has no {PRUNED_HEADS_FILE}; it is not a pruned model folder")
    with open(path) as f:
        return json.load(f)


def _heads(meta: dict) -> dict[int, list[int]]:
    return {int(k): [int(h) for h in v] for k, v in meta["pruned_heads"].items()}


def read_pruned_heads(folder: Path) -> dict[int, list[int]]:
    return _heads(_meta(folder))


def bottleneck_layout(model) -> dict:
    """Module name -> (bottleneck size, activation) of every bottleneck adapter (they cannot be merged)."""
    from runner.adapters import ACTIVATIONS, WithBottleneck

    names = {cls: name for name, cls in ACTIVATIONS.items()}
    return {name: [m.bottleneck.down.out_features, names[type(m.bottleneck.act)]]
            for name, m in model.named_modules() if isinstance(m, WithBottleneck)}


def attach_bottlenecks(model, layout: dict) -> None:
    """Wrap the named projections in bottleneck adapters of the recorded shape (weights loaded after)."""
    from runner.adapters import Bottleneck, WithBottleneck

    for name, (size, activation) in layout.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        adapter = Bottleneck(base.out_features, max(1, base.out_features // int(size)), activation, 0.0)
        if adapter.down.out_features != int(size):
            raise ModelError(f"bottleneck adapter {name}: size {size} does not divide {base.out_features}")
        setattr(parent, child, WithBottleneck(base, adapter))


def load_pruned(folder: Path, attn_implementation: str | None = None, dtype: torch.dtype | None = None):
    """Rebuild a pruned sequence-classification model from :func:`save_pruned`'s folder."""
    folder = Path(folder)
    meta = _meta(folder)
    pruned = _heads(meta)
    config = AutoConfig.from_pretrained(str(folder))
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForSequenceClassification.from_config(config, **kwargs)
    model = apply_pooling(model, saved_pooling(model))  # mean pooling replaces BERT's pooler (no weights)
    if pruned:
        prune_heads(model, pruned)
    attach_bottlenecks(model, meta.get("bottleneck_adapters") or {})
    state = load_file(str(folder / WEIGHTS_FILE))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights in {folder} do not fit the pruned architecture: {str(exc).splitlines()[0]}") from exc
    if dtype is not None:
        model.to(dtype)
    return model.eval()
