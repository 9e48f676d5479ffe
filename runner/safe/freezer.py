"""Freezing one adapter for real: no gradient, no optimizer state, no forward cost.

One SAFE "adapter" is every adapter module of one encoder layer (for LoRA on
``[query, value]``: both LoRA pairs of that layer), as grouped by
:func:`runner.adapters.adapter_groups`. Freezing it

1. sets ``requires_grad=False`` on its parameters and drops their ``.grad``;
2. removes them from the optimizer's param groups (the groups themselves stay,
   so the LR scheduler is unaffected) and deletes their optimizer state;
3. for LoRA and ``merge=True``, merges each of the layer's LoRA modules into
   its base weight (PEFT ``merge()``): the forward then runs the base layer
   only. The LoRA weights stay in the model, so the saved adapter (PEFT format)
   still holds them and reproduces the merged weight on a fresh base model.

When every adapter below layer ``k`` is frozen, nothing below ``k`` requires a
gradient, so autograd neither saves activations there nor runs backward there.
"""

from __future__ import annotations

import logging

from torch import nn

from runner.adapters import adapter_groups, layer_index, mergeable_modules
from runner.measure import inner_optimizer, optimizer_state_tensors, tensor_bytes

log = logging.getLogger(__name__)


def remove_from_optimizer(optimizer, params) -> int:
    """Drop ``params`` from every param group and delete their state; returns state bytes freed."""
    opt = inner_optimizer(optimizer)
    ids = {id(p) for p in params}
    for group in opt.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    freed = 0
    for p in params:
        state = opt.state.pop(p, None)
        if state:
            freed += tensor_bytes(optimizer_state_tensors(state))
    return freed


def lora_modules(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """The modules SAFE can merge when it freezes their layer (LoRA's; runner.adapters), per encoder layer."""
    out: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in mergeable_modules(model):
        out.setdefault(layer_index(name), []).append((name, module))
    return out


class AdapterFreezer:
    """Freezes adapter groups (one per encoder layer) of an unwrapped model."""

    def __init__(self, model: nn.Module, optimizer, merge: bool = True):
        self.model = model
        self.optimizer = optimizer
        self.groups = {k: v for k, v in adapter_groups(model).items() if k is not None}
        self.lora = lora_modules(model)
        self.merge = bool(merge) and bool(self.lora)
        self.frozen: dict[int, int] = {}  # layer -> step at which it froze
        self.merged: set[int] = set()

    @property
    def layers(self) -> list[int]:
        return sorted(self.groups)

    @property
    def active(self) -> list[int]:
        return [k for k in self.layers if k not in self.frozen]

    def frac_frozen(self) -> float:
        return len(self.frozen) / max(1, len(self.groups))

    def freeze(self, layers, step: int) -> list[int]:
        """Freeze the given layers' adapters (already frozen ones are skipped)."""
        done = []
        for layer in sorted(set(layers)):
            if layer in self.frozen:
                continue
            if layer not in self.groups:
                raise KeyError(f"no adapter in encoder layer {layer}; adapters are in layers {self.layers}")
            params = list(self.groups[layer].values())
            for p in params:
                p.requires_grad_(False)
                p.grad = None
            remove_from_optimizer(self.optimizer, params)
            if self.merge:
                self._merge(layer)
            self.frozen[layer] = int(step)
            done.append(layer)
        if done:
            log.info("SAFE: froze adapters of layer(s) %s at step %d%s", done, step, " (merged)" if self.merge else "")
        return done

    def _merge(self, layer: int) -> None:
        for _name, module in self.lora.get(layer, []):
            if not getattr(module, "merged", False):
                module.merge()
        self.merged.add(layer)
