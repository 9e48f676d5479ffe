"""ModernBERT: ``layers.N.attn.Wqkv`` (query, key and value fused: rows ``[3, heads, head size]``),
``attn.Wo``, rotary positions, local (sliding-window) and global attention layers, a prediction
``head`` (dense, activation, norm) that trains with the classifier. Removing a head takes its rows
from each of the three blocks of ``Wqkv``; the rotary embedding and the window are per head-size and
per layer, so nothing else depends on the heads."""

from __future__ import annotations

import torch
from torch import nn

from runner.arch import Architecture, OnlyOutputBias, register


def _no_empty_rows(module, args, kwargs):
    """transformers' eager ModernBERT attention gives NaN where a query's sliding window holds only
    padding (a row with every key masked), and the NaN then reaches the real tokens through the values
    (0 x NaN). Such a (padding) query attends to itself instead: real tokens' outputs are unchanged."""
    mask = kwargs.get("attention_mask")
    if not torch.is_tensor(mask) or mask.dim() != 4 or mask.shape[-1] != mask.shape[-2]:
        return None
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    empty = ~allowed.any(-1, keepdim=True)  # [B, 1, T, 1]
    if not bool(empty.any()):
        return None
    diagonal = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    fix = empty & diagonal
    mask = mask | fix if mask.dtype == torch.bool else mask.masked_fill(fix, 0.0)
    return args, {**kwargs, "attention_mask": mask}


class ModernBert(Architecture):
    name = "modernbert"
    model_types = ("modernbert",)
    classifier_reads_token0 = False
    layers = "layers"
    attention = "attn"
    qkv = ("Wqkv",)
    qkv_blocks = 3  # rows [q heads | k heads | v heads]: a head's rows come out of each block
    output = "attn.Wo"
    head_count_attrs = ()
    width_attrs = ()
    lora_targets = ("Wqkv",)
    bottleneck_targets = ("attn.Wo", "mlp.Wo")
    all_linear_targets = ("Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo")

    def prepare(self, model: nn.Module) -> None:
        for layer in self.encoder_layers(model):
            att = self.attention_module(layer)
            if not getattr(att, "_runner_no_empty_rows", False):
                att.register_forward_pre_hook(_no_empty_rows, with_kwargs=True)
                att._runner_no_empty_rows = True

    def heads_in_layer(self, layer: nn.Module) -> int:
        att = self.attention_module(layer)
        if isinstance(att, OnlyOutputBias):
            return 0
        return int(att.Wqkv.out_features // (3 * att.head_dim))

    def own_pooler(self, model: nn.Module):
        return None

    def sequence_output(self, model: nn.Module) -> nn.Module:
        """The classifier pools the encoder's output itself (``classifier_pooling``, kept at ``cls``):
        mean pooling writes the masked mean into token 0 there."""
        return model.model

    def extra_head_modules(self, pooling: str) -> tuple[str, ...]:
        return ("head",)


MODERNBERT = register(ModernBert())
