"""Llama, Mistral and Qwen2 (decoders): ``model.layers.N.self_attn.{q,k,v,o}_proj``, rotary positions,
grouped-query attention (``num_key_value_heads`` key/value heads, each shared by a group of
``num_attention_heads / num_key_value_heads`` query heads), no pooler: the sequence classifier
(``score``) reads the last non-padding token.

The prunable unit is a query head (the HIES paper scores per head; LLaMA-2-7B has one key/value head
per query head, so there the two coincide). A key/value head goes when the last query head of its
group goes. The gate multiplies each query head's output before ``o_proj``, exactly as for the
encoders; physical removal keeps the kept query heads' rows of ``q_proj``, columns of ``o_proj`` and
the rows of the key/value heads they still read:

* when every group that keeps heads keeps the same number ``g`` of them, the attention's
  ``num_key_value_groups`` becomes ``g`` and transformers' own GQA code (``repeat_kv``) does the rest;
* otherwise ``k_proj``/``v_proj`` become :class:`SharedKV`: they compute only the kept key/value
  heads and hand each kept query head its own group's head (``num_key_value_groups`` 1), so the
  logits equal the gated model's. The weights stay one row block per kept key/value head.
"""

from __future__ import annotations

import torch
from torch import nn

from runner.arch import Architecture, OnlyOutputBias, _get, _set, no_empty_attention_rows, register


class SharedKV(nn.Linear):
    """A key or value projection of a pruned GQA layer whose groups kept different numbers of query
    heads: the linear map computes the kept key/value heads (``weight`` holds their rows only), then
    repeats them so that output head ``j`` is the key/value head query head ``j`` reads
    (``kv_of_query[j]``). The state dict keys stay those of ``nn.Linear``."""

    def __init__(self, linear: nn.Linear, kv_of_query: list[int], head_size: int):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(linear.weight)
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        self.head_size = head_size
        self.register_buffer("kv_of_query", torch.tensor(kv_of_query, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        heads = y.view(*y.shape[:-1], -1, self.head_size).index_select(-2, self.kv_of_query.to(y.device))
        return heads.flatten(-2)


class Llama(Architecture):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2")
    decoder = True
    own_pooling = "last"
    classifier_reads_token0 = False
    layers = "layers"
    attention = "self_attn"
    qkv = ("q_proj", "k_proj", "v_proj")
    output = "self_attn.o_proj"
    head_count_attrs = ()  # transformers' Llama attention reads its head count off q_proj's width
    width_attrs = ()
    lora_targets = ("q_proj", "v_proj")
    bottleneck_targets = ("self_attn.o_proj", "mlp.down_proj")
    all_linear_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def heads_in_layer(self, layer: nn.Module) -> int:
        att = self.attention_module(layer)
        if isinstance(att, OnlyOutputBias):
            return 0
        return int(att.q_proj.out_features // att.head_dim)

    def head_weights(self, layer: nn.Module):
        """q rows and o columns per query head; a key/value head's rows count for every query head that
        reads it (repeated here, as ``repeat_kv`` repeats them in the forward)."""
        att = self.attention_module(layer)
        d = att.head_dim
        group = att.num_key_value_groups
        kv = [w.view(-1, d, w.shape[1]).repeat_interleave(group, 0).reshape(-1, w.shape[1])
              for w in (att.k_proj.weight, att.v_proj.weight)]
        return [(att.q_proj.weight, 0, (0,)), *((w, 0, (0,)) for w in kv), (self.output_projection(layer).weight, 1, (0,))]

    def remove_heads(self, layer: nn.Module, keep: list[int], head_size: int, num_heads: int) -> None:
        att = self.attention_module(layer)
        group = att.num_key_value_groups  # query heads per key/value head, before pruning
        rows = lambda heads: torch.tensor([h * head_size + j for h in heads for j in range(head_size)], dtype=torch.long)  # noqa: E731
        index = rows(keep)
        self._set_output(layer, self.prune_projection(self.output_projection(layer), index, dim=1))
        if not keep:
            self.remove_all_heads(layer, head_size)
            return
        kv_kept = sorted({h // group for h in keep})
        att.q_proj = self.prune_projection(att.q_proj, index, dim=0)
        per_group = {g: sum(1 for h in keep if h // group == g) for g in kv_kept}
        uniform = len(set(per_group.values())) == 1
        for name in ("k_proj", "v_proj"):
            pruned = self.prune_projection(_get(att, name), rows(kv_kept), dim=0)
            if not uniform:
                pruned = SharedKV(pruned, [kv_kept.index(h // group) for h in keep], head_size)
            _set(att, name, pruned)
        att.num_key_value_groups = next(iter(per_group.values())) if uniform else 1

    def own_pooler(self, model: nn.Module):
        return None

    def prepare(self, model: nn.Module) -> None:
        """Mistral's sliding window leaves a padding query with nothing visible: NaN in eager attention
        (:func:`no_empty_attention_rows`)."""
        if getattr(model.config, "sliding_window", None) and getattr(model.config, "use_sliding_window", True):
            no_empty_attention_rows(self, model)


LLAMA = register(Llama())
