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
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from runner.adapters import KINDS
from runner.arch import architecture_of
from runner.atomic_io import atomic_write_json
from runner.classifier_heads import apply_pooling, is_causal_lm, saved_pooling
from runner.preflight.errors import ModelError
from runner.prune.physical import PRUNED_HEADS_ATTR, heads_kept, prune_heads

PRUNED_HEADS_FILE = "pruned_heads.json"
WEIGHTS_FILE = "model.safetensors"


def save_pruned(model, target: Path, tokenizer=None, extra: dict | None = None) -> Path:
    """Write config, pruned weights, tokenizer and the list of pruned heads."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    pruned = getattr(model, PRUNED_HEADS_ATTR, None) or {}
    model.config.save_pretrained(str(target))
    state, tied = _untied_state(model)
    save_file(state, str(target / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(target))
    atomic_write_json(target / PRUNED_HEADS_FILE, {
        "format": 1,
        "pruned_heads": {str(k): v for k, v in sorted(pruned.items())},
        # the adapters that cannot be merged, per kind (runner.adapters): "bottleneck_adapters"
        **{f"{kind.name}_adapters": kind.layout(model) for kind in KINDS.values()},
        "heads_per_layer": heads_kept(model),
        "num_heads_original": int(model.config.num_attention_heads),
        "causal_lm": is_causal_lm(model),  # rebuilt as a causal LM, not a sequence classifier
        "tied": tied,  # weights stored once under another name (GPT-2's lm_head is its token embedding)
        **(extra or {}),
    })
    return target


def _untied_state(model) -> tuple[dict, dict]:
    """(the state dict with every shared tensor stored once, {name: the name it is stored under}):
    safetensors refuses tensors that share memory, as tied input and output embeddings do."""
    state, first, tied = {}, {}, {}
    for name, value in model.state_dict().items():
        key = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
        if value.numel() and key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        state[name] = value.detach().contiguous().cpu()
    return state, tied


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


def load_pruned(folder: Path, attn_implementation: str | None = None, dtype: torch.dtype | None = None):
    """Rebuild a pruned sequence-classification model from :func:`save_pruned`'s folder."""
    folder = Path(folder)
    meta = _meta(folder)
    pruned = _heads(meta)
    config = AutoConfig.from_pretrained(str(folder))
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    causal_lm = bool(meta.get("causal_lm"))
    model = (AutoModelForCausalLM if causal_lm else AutoModelForSequenceClassification).from_config(config, **kwargs)
    architecture_of(model).prepare(model)  # the family's fixes (ModernBERT's eager attention on padding)
    if not causal_lm:
        model = apply_pooling(model, saved_pooling(model))  # mean pooling replaces BERT's pooler (no weights)
    if pruned:
        prune_heads(model, pruned)
    for kind in KINDS.values():
        kind.attach(model, meta.get(f"{kind.name}_adapters") or {})
    state = load_file(str(folder / WEIGHTS_FILE))
    for name, source in (meta.get("tied") or {}).items():
        state[name] = state[source]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights in {folder} do not fit the pruned architecture: {str(exc).splitlines()[0]}") from exc
    if dtype is not None:
        model.to(dtype)
    return model.eval()
