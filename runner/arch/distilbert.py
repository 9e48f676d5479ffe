"""DistilBERT: ``transformer.layer.N.attention.{q_lin,k_lin,v_lin,out_lin}`` (the output
projection inside the attention module), ``ffn.{lin1,lin2}``; the classifier reads token 0 in
the model's forward through ``pre_classifier``, which trains with it."""

from __future__ import annotations

from torch import nn

from runner.arch import Architecture, register


class DistilBert(Architecture):
    name = "distilbert"
    model_types = ("distilbert",)
    classifier_reads_token0 = False
    layers = "transformer.layer"
    attention = "attention"
    qkv = ("q_lin", "k_lin", "v_lin")
    output = "attention.out_lin"
    head_count_attrs = ("n_heads",)
    width_attrs = ()
    heads_config = "n_heads"
    hidden_config = "dim"
    lora_targets = ("q_lin", "v_lin")
    bottleneck_targets = ("attention.out_lin", "ffn.lin2")
    all_linear_targets = ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2")

    def own_pooler(self, model: nn.Module):
        return None

    def sequence_output(self, model: nn.Module) -> nn.Module:
        return model.distilbert.transformer

    def extra_head_modules(self, pooling: str) -> tuple[str, ...]:
        return ("pre_classifier",)


DISTILBERT = register(DistilBert())
