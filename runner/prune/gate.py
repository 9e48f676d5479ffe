"""Which models we can gate and prune, and the head gate itself.

transformers 5 removed ``head_mask``, so the gate is ours: a forward pre-hook
on each layer's attention output projection (BERT's ``attention.output.dense``;
each family names its own, :mod:`runner.arch`). Its
input is the concatenation of the heads' outputs, ``[B, T, H * d]``; the hook
views it as ``[B, T, H, d]`` and multiplies head ``h`` by ``m[layer, h]``.
The hook sees the same tensor whatever attention kernel (eager, SDPA) ran.
"""

from __future__ import annotations

import torch
from torch import nn

from runner.arch import HeadGeometry, architecture_of
from runner.preflight.errors import ModelError

__all__ = ["HeadGate", "HeadGeometry", "encoder_layers", "geometry", "heads_in_layer", "supports_head_gating", "unwrap_peft"]


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The plain transformers model: PEFT LoRA weights merged into the base weights.

    Pruning slices the query/key/value and output weights; a LoRA delta that
    is not merged would keep the full width. ``merge_and_unload`` folds the
    adapters in (and keeps ``modules_to_save`` such as the classifier).
    """
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    return model


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The encoder's layers (its family's, :mod:`runner.arch`), after checking that every one of
    them can be gated. Raises :class:`ModelError` with the reason for anything else."""
    if hasattr(model, "peft_config"):
        raise ModelError("head gating needs the plain transformers model; call runner.prune.gate.unwrap_peft first")
    arch = architecture_of(model)
    if arch.per_layer_refusal:
        raise ModelError(arch.per_layer_refusal)
    layers = arch.encoder_layers(model)
    for i, layer in enumerate(layers):
        if getattr(layer, "add_cross_attention", False) or getattr(getattr(layer, "crossattention", None), "self", None):
            raise ModelError("encoder-decoder (cross-attention) models are not supported by head pruning")
        arch.check_layer(i, layer)
    return layers


def supports_head_gating(model: nn.Module) -> bool:
    try:
        encoder_layers(model)
    except ModelError:
        return False
    return True


def geometry(model: nn.Module) -> HeadGeometry:
    encoder_layers(model)
    return architecture_of(model).geometry(model)


def heads_in_layer(model: nn.Module, layer: nn.Module) -> int:
    """Heads a layer of ``model`` has now (after any physical pruning)."""
    return architecture_of(model).heads_in_layer(layer)


class HeadGate:
    """A (layers x heads) gate ``m`` on every head's output; use as a context manager.

    ``m = 1`` leaves the model unchanged, ``m = 0`` removes the head's
    contribution. With ``requires_grad=True``, ``gate.mask.grad`` after a
    backward pass is dL/dm (the head importance signal). Only for models that
    have not been physically pruned.

    :meth:`per_example` switches to a ``[B, layers, heads]`` gate for one
    batch: example ``b``'s heads are multiplied by row ``b``, so in eval mode
    (examples independent) the gradient of the sum of per-example losses
    w.r.t. row ``b`` is example ``b``'s own dL/dm.
    """

    def __init__(self, model: nn.Module, requires_grad: bool = False):
        self.model = model
        self.layers = encoder_layers(model)
        self.geo = geometry(model)
        for i, layer in enumerate(self.layers):
            if heads_in_layer(model, layer) != self.geo.num_heads:
                raise ModelError(f"layer {i} is already pruned; gate the model before physical pruning")
        param = next(model.parameters())
        self.mask = torch.ones(self.geo.num_layers, self.geo.num_heads, device=param.device, dtype=param.dtype,
                               requires_grad=requires_grad)
        self._handles: list = []

    def per_example(self, batch_size: int) -> torch.Tensor:
        """A fresh ``[batch_size, layers, heads]`` gate of ones (requires_grad as constructed); returns it."""
        old = self.mask
        self.mask = torch.ones(batch_size, *old.shape[-2:], device=old.device, dtype=old.dtype,
                               requires_grad=old.requires_grad)
        return self.mask

    def _hook(self, index: int):
        def pre_hook(module, args):
            x = args[0]
            shape = x.shape
            if self.mask.dim() == 3:  # per example: [B, L, H] -> [B, 1, ..., H, 1] against [B, T, H, d]
                m = self.mask[:, index].view(shape[0], *([1] * (len(shape) - 2)), self.geo.num_heads, 1)
            else:
                m = self.mask[index].view(-1, 1)
            gated = x.view(*shape[:-1], self.geo.num_heads, self.geo.head_size) * m.to(x.dtype)
            return (gated.view(shape), *args[1:])

        return pre_hook

    def attach(self) -> "HeadGate":
        if not self._handles:
            output = architecture_of(self.model).output  # the projection the heads' outputs enter
            self._handles = [layer.get_submodule(output).register_forward_pre_hook(self._hook(i))
                             for i, layer in enumerate(self.layers)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def set(self, mask: torch.Tensor) -> None:
        """Copy a (layers x heads) 0/1 (or real-valued) mask into the gate."""
        with torch.no_grad():
            self.mask.copy_(torch.as_tensor(mask, dtype=self.mask.dtype, device=self.mask.device))

    def __enter__(self) -> "HeadGate":
        return self.attach()

    def __exit__(self, *exc) -> bool:
        self.detach()
        return False
