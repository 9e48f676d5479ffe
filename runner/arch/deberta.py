"""DeBERTa-v2 (and DeBERTa-v3, the same ``deberta-v2`` model type):
``encoder.layer.N.attention.self.{query_proj,key_proj,value_proj}``, ``attention.output.dense``;
disentangled attention adds content-to-position and position-to-content terms, computed per head
from the shared relative embeddings through the layer's own ``key_proj``/``query_proj``
(``share_att_key``, v3) or through ``pos_key_proj``/``pos_query_proj``, whose head rows go with
the head. The classifier reads a model-level ``pooler`` (token 0, dense, activation). Eager only."""

from __future__ import annotations

import torch
from torch import nn

from runner.arch import Architecture, _get, _set, prune_linear, register

POSITION_PROJECTIONS = ("pos_key_proj", "pos_query_proj")  # present when share_att_key is false


class DebertaV2(Architecture):
    name = "deberta-v2"
    model_types = ("deberta-v2",)
    classifier_reads_token0 = False
    qkv = ("query_proj", "key_proj", "value_proj")
    lora_targets = ("query_proj", "value_proj")
    all_linear_targets = ("query_proj", "key_proj", "value_proj", "output.dense", "intermediate.dense")
    supports_sdpa = False

    def after_removal(self, layer: nn.Module, keep: list[int], index: torch.Tensor) -> None:
        att = self.attention_module(layer)
        for name in POSITION_PROJECTIONS:
            if isinstance(getattr(att, name, None), nn.Module):
                _set(att, name, prune_linear(_get(att, name), index, dim=0))

    def head_weights(self, layer: nn.Module):
        att = self.attention_module(layer)
        extra = [(getattr(att, n).weight, 0, (0,)) for n in POSITION_PROJECTIONS if isinstance(getattr(att, n, None), nn.Module)]
        return super().head_weights(layer) + extra

    def own_pooler(self, model: nn.Module):
        pooler = getattr(model, "pooler", None)
        return (pooler, "pooler") if isinstance(pooler, nn.Module) else None

    def set_own_pooler(self, model: nn.Module, pooler: nn.Module) -> None:
        model.pooler = pooler


DEBERTA_V2 = register(DebertaV2())
