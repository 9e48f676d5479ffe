"""Remove pruned heads from the weights, so the model gets smaller and faster.

For each layer the family (:meth:`runner.arch.Architecture.remove_heads`) keeps
the rows of W_q, W_k, W_v (and their biases) and the columns of the output
projection W_o that belong to the kept heads, updates the head count on the
attention module (transformers 5's attention code reshapes with ``-1`` heads,
so the new width is all it needs), and whatever else depends on the heads
(MPNet's relative position bias). A layer that loses every head keeps only
its output projection's bias: exactly what the gated model computes with the
layer's gates at 0.
"""

from __future__ import annotations

import torch
from torch import nn

from runner.arch import architecture_of
from runner.prune.gate import encoder_layers, geometry, heads_in_layer
from runner.prune.select import dict_to_mask, mask_to_dict

PRUNED_HEADS_ATTR = "hies_pruned_heads"


def prune_heads(model: nn.Module, pruned: torch.Tensor | dict) -> nn.Module:
    """Physically remove heads, in place. ``pruned``: bool (layers x heads) mask or {layer: [heads]}.

    Works once per model, on original head indices; the removed heads are
    recorded as ``model.hies_pruned_heads`` ({layer: [heads]}).
    """
    layers = encoder_layers(model)
    geo = geometry(model)
    if isinstance(pruned, dict):
        pruned = dict_to_mask(pruned, geo.num_layers, geo.num_heads)
    pruned = torch.as_tensor(pruned, dtype=torch.bool)
    if tuple(pruned.shape) != (geo.num_layers, geo.num_heads):
        raise ValueError(f"pruning mask has shape {tuple(pruned.shape)}, model has {(geo.num_layers, geo.num_heads)}")
    if getattr(model, PRUNED_HEADS_ATTR, None):
        raise ValueError("model is already pruned; prune the original model once with the full set of heads")
    arch = architecture_of(model)
    for i, layer in enumerate(layers):
        if heads_in_layer(model, layer) != geo.num_heads:
            raise ValueError(f"layer {i} has {heads_in_layer(model, layer)} heads, expected {geo.num_heads}")
        drop = pruned[i]
        if bool(drop.any()):
            arch.remove_heads(layer, [h for h in range(geo.num_heads) if not bool(drop[h])], geo.head_size, geo.num_heads)
    setattr(model, PRUNED_HEADS_ATTR, mask_to_dict(pruned))
    return model


def heads_kept(model: nn.Module) -> list[int]:
    """Heads per layer as the model stands."""
    return [heads_in_layer(model, layer) for layer in encoder_layers(model)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
