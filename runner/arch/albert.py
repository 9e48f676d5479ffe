"""ALBERT shares one layer's weights across its whole depth: adapters and full fine-tuning work,
but there is no per-layer weight to freeze (SAFE) or per-layer head to remove (pruning)."""

from __future__ import annotations

from runner.arch import Architecture, register


class Albert(Architecture):
    name = "albert"
    model_types = ("albert",)
    layers = "encoder.albert_layer_groups.0.albert_layers"  # the one shared layer (one group)
    bottleneck_targets = ("attention.dense", "ffn_output")
    all_linear_targets = ("query", "key", "value", "attention.dense", "ffn", "ffn_output")
    per_layer_refusal = ("ALBERT shares one layer's weights across all its layers, so per-layer freezing (SAFE) and "
                         "per-layer head pruning are not defined for it; use method=adapter or method=full, prune=none")


ALBERT = register(Albert())
