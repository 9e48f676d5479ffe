"""GPT-2 (decoder): ``transformer.h.N.attn.c_attn`` (query, key and value fused, columns
``[3, heads, head size]``) and ``attn.c_proj``, learned absolute positions, the sequence classifier
(``score``) on the last non-padding token. Its projections are ``Conv1D`` layers, a linear map whose
weight is stored transposed (``[in, out]``): a head's slices lie along the weight's columns in
``c_attn`` and along its rows in ``c_proj``. One key/value head per query head, so a pruned head takes
its own query, key and value columns."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from runner.arch import Architecture, _get, register, unwrapped
from runner.preflight.errors import ModelError


class PrunedConv1D(Conv1D):
    """A pruned ``Conv1D``; with no inputs left (a layer that lost every head) it adds only its bias,
    where ``Conv1D``'s own forward cannot reshape an empty input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[0] == 0:
            return self.bias.expand(*x.shape[:-1], self.nf).contiguous()
        return super().forward(x)


def prune_conv1d(layer: Conv1D, index: torch.Tensor, dim: int) -> Conv1D:
    """``layer`` keeping only its outputs (``dim=1``, the weight's columns, with their biases) or inputs
    (``dim=0``, the weight's rows) in ``index``."""
    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).detach().clone()
    bias = layer.bias.index_select(0, index) if dim == 1 else layer.bias
    new = PrunedConv1D(weight.shape[1], weight.shape[0]).to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias.detach())
    return new


class GPT2(Architecture):
    name = "gpt2"
    model_types = ("gpt2",)
    decoder = True
    own_pooling = "last"
    classifier_reads_token0 = False
    layers = "h"
    attention = "attn"
    qkv = ("c_attn",)
    qkv_blocks = 3
    output = "attn.c_proj"
    head_count_attrs = ("num_heads",)
    width_attrs = ("split_size", "embed_dim")
    lora_targets = ("c_attn",)
    bottleneck_targets = ("attn.c_proj", "mlp.c_proj")
    all_linear_targets = ("c_attn", "c_proj", "c_fc")

    def output_projection(self, layer: nn.Module) -> Conv1D:
        base = unwrapped(_get(layer, self.output))
        if not isinstance(base, Conv1D) or hasattr(base, "lora_A"):
            raise ModelError(f"{self.output} is a {type(base).__name__}; merge LoRA adapters before pruning "
                             f"(runner.prune.gate.unwrap_peft)")
        return base

    def head_weights(self, layer: nn.Module):
        att = self.attention_module(layer)
        width = att.c_attn.weight.shape[1] // 3
        return [(att.c_attn.weight, 1, (0, width, 2 * width)), (self.output_projection(layer).weight, 0, (0,))]

    def prune_projection(self, projection: nn.Module, index: torch.Tensor, dim: int) -> Conv1D:
        """Conv1D stores its weight [in, out]: outputs (``dim=0`` in nn.Linear's terms) are its columns."""
        return prune_conv1d(projection, index, dim=1 - dim)

    def own_pooler(self, model: nn.Module):
        return None


GPT2_ARCH = register(GPT2())
