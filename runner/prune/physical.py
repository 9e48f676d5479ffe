"""Remove pruned heads from the weights, so the model gets smaller and faster.

For each layer we keep the rows of W_q, W_k, W_v (and their biases) and the
columns of the output projection W_o that belong to the kept heads, and update
``num_attention_heads`` / ``all_head_size`` on the attention module (the
transformers 5 BertSelfAttention reshapes with ``-1`` heads, so the new width
is all it needs). A layer that loses every head gets :class:`NoHeads`, which
outputs an empty ``[B, T, 0]`` tensor, and a zero-width output projection
that adds only its bias: exactly what the gated model computes with the
layer's gates at 0.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from runner.prune.gate import encoder_layers, geometry, heads_in_layer
from runner.prune.select import dict_to_mask, mask_to_dict

PRUNED_HEADS_ATTR = "hies_pruned_heads"


class NoHeads(nn.Module):
    """Self-attention with no heads left: contributes nothing."""

    def __init__(self, head_size: int):
        super().__init__()
        self.num_attention_heads = 0
        self.attention_head_size = head_size
        self.all_head_size = 0

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


def _prune_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    with warnings.catch_warnings():  # nn.Linear warns when initialising a zero-width weight
        warnings.simplefilter("ignore", UserWarning)
        new = prune_linear_layer(layer, index, dim=dim)
    return new.to(dtype=layer.weight.dtype, device=layer.weight.device)


def _set_output_projection(layer: nn.Module, new: nn.Linear) -> None:
    dense = layer.attention.output.dense
    if hasattr(dense, "base_layer"):  # bottleneck adapter wrapper
        dense.base_layer = new
    else:
        layer.attention.output.dense = new


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
    d = geo.head_size
    for i, layer in enumerate(layers):
        if heads_in_layer(layer) != geo.num_heads:
            raise ValueError(f"layer {i} has {heads_in_layer(layer)} heads, expected {geo.num_heads}")
        drop = pruned[i]
        if not bool(drop.any()):
            continue
        keep_heads = [h for h in range(geo.num_heads) if not bool(drop[h])]
        att = layer.attention.self
        wo = getattr(layer.attention.output.dense, "base_layer", layer.attention.output.dense)
        index = torch.tensor([h * d + j for h in keep_heads for j in range(d)], dtype=torch.long)
        _set_output_projection(layer, _prune_linear(wo, index, dim=1))
        if not keep_heads:
            layer.attention.self = NoHeads(d)
            continue
        att.query = _prune_linear(att.query, index, dim=0)
        att.key = _prune_linear(att.key, index, dim=0)
        att.value = _prune_linear(att.value, index, dim=0)
        att.num_attention_heads = len(keep_heads)
        att.all_head_size = len(keep_heads) * d
    setattr(model, PRUNED_HEADS_ATTR, mask_to_dict(pruned))
    return model


def heads_kept(model: nn.Module) -> list[int]:
    """Heads per layer as the model stands."""
    return [heads_in_layer(layer) for layer in encoder_layers(model)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
