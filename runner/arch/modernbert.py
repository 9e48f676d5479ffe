"""ModernBERT: ``layers.N.attn.Wqkv`` (query, key and value fused: rows ``[3, heads, head size]``),
``attn.Wo``, rotary positions, local (sliding-window) and global attention layers, a prediction
``head`` (dense, activation, norm) that trains with the classifier. Removing a head takes its rows
from each of the three blocks of ``Wqkv``; the rotary embedding and the window are per head-size and
per layer, so nothing else depends on the heads."""

from __future__ import annotations

from torch import nn

from runner.arch import Architecture, OnlyOutputBias, no_empty_attention_rows, register


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
        """Its eager attention gives NaN on padding in the sliding-window layers (:func:`no_empty_attention_rows`)."""
        no_empty_attention_rows(self, model)

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
