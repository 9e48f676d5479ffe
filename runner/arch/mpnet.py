"""MPNet: ``encoder.layer.N.attention.attn.{q,k,v,o}`` (the output projection inside the attention
module), a relative position bias computed once per forward for every head and handed to each layer,
and a classification head on token 0. Eager attention only (transformers has no SDPA path for it)."""

from __future__ import annotations

import torch
from torch import nn

from runner.arch import Architecture, register

POSITION_BIAS_ARG = 2  # MPNetAttention calls attn(hidden_states, attention_mask, position_bias, ...)


def _keep_position_bias(keep: torch.Tensor):
    """A pre-hook handing one layer's attention only its kept heads' rows of the shared position bias."""
    def hook(module, args, kwargs):
        if "position_bias" in kwargs and kwargs["position_bias"] is not None:
            kwargs = {**kwargs, "position_bias": kwargs["position_bias"][:, keep.to(kwargs["position_bias"].device)]}
        elif len(args) > POSITION_BIAS_ARG and args[POSITION_BIAS_ARG] is not None:
            bias = args[POSITION_BIAS_ARG]
            args = (*args[:POSITION_BIAS_ARG], bias[:, keep.to(bias.device)], *args[POSITION_BIAS_ARG + 1:])
        return args, kwargs
    return hook


class MPNet(Architecture):
    name = "mpnet"
    model_types = ("mpnet",)
    attention = "attention.attn"
    qkv = ("q", "k", "v")
    output = "attention.attn.o"
    lora_targets = ("q", "v")
    bottleneck_targets = ("attention.attn.o", "output.dense")
    all_linear_targets = ("q", "k", "v", "o", "output.dense", "intermediate.dense")
    supports_sdpa = False

    def position_offset(self, config) -> int:
        """Positions start after the padding index, which transformers' MPNet fixes at 1 (all-mpnet-base-v2:
        514 position embeddings, 512 tokens)."""
        return 2

    def after_removal(self, layer: nn.Module, keep: list[int], index: torch.Tensor) -> None:
        """The encoder computes one relative position bias for all ``num_heads`` heads; this layer's
        attention now reads only its kept heads' rows of it."""
        layer.attention.attn.register_forward_pre_hook(_keep_position_bias(torch.tensor(keep)), with_kwargs=True)


MPNET = register(MPNet())
