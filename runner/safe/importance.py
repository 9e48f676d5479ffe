"""Adapter importance: how far each adapted layer's representation has moved.

A fixed probe batch of training examples is run through the model (eval mode,
no gradients) at the start of training and again at every measurement; forward
hooks capture, per encoder layer, the outputs of the modules that carry the
layer's adapter (``representation=adapted``: for LoRA on ``[query, value]`` the
query and value projections with their LoRA update; for bottleneck adapters
the projection followed by its bottleneck) or the layer's output
(``representation=layer``). Padding tokens are dropped, the same token subset
is used every time, and

    importance(layer) = 1 - mean over the layer's captured modules of CKA(now, start)

so an adapter whose layer barely changed scores near 0.
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import torch
from torch import nn

from runner import measure
from runner.adapters import adapter_parameters, layer_index
from runner.safe.cka import LinearCKAReference, cka, token_matrix
from runner.schema import REPRESENTATIONS  # declared with the other settings

_ADAPTER_SPLIT = re.compile(r"\.(lora_[A-Za-z_]+|bottleneck)\.")
_LAYER_MODULE = re.compile(r"\.layer\.(\d+)$")

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def probe_targets(model: nn.Module, representation: str = "adapted") -> dict[int, list[str]]:
    """Names of the modules whose outputs represent each adapted layer."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"unknown safe.representation {representation!r}; valid: {', '.join(REPRESENTATIONS)}")
    adapted: dict[int, list[str]] = {}
    for name in adapter_parameters(model):
        layer = layer_index(name)
        if layer is None:
            continue
        module_name = _ADAPTER_SPLIT.split(name, maxsplit=1)[0]
        if module_name not in adapted.setdefault(layer, []):
            adapted[layer].append(module_name)
    if representation == "adapted":
        return adapted
    layers = {}
    for name, _ in model.named_modules():
        m = _LAYER_MODULE.search(name)
        if m and int(m.group(1)) in adapted:
            layers[int(m.group(1))] = [name]
    return layers


def probe_batch(loader, size: int, seed: int, device) -> dict[str, torch.Tensor]:
    """``size`` training examples drawn once with a seeded generator, padded together."""
    dataset, collate = loader.dataset, loader.collate_fn
    n = min(int(size), len(dataset))
    idx = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
    batch = collate([dataset[int(i)] for i in idx])
    return {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS and torch.is_tensor(v)}


class RepresentationProbe:
    """Captures per-layer token representations on a fixed batch and scores layers by 1 - CKA."""

    def __init__(self, model: nn.Module, batch: dict, targets: dict[int, list[str]], kernel: str = "linear",
                 max_tokens: int | None = None, seed: int = 0, count_flops: bool = True):
        self.model = model
        self.batch = batch
        self.targets = targets
        self.kernel = kernel
        self.mask = batch.get("attention_mask")
        n_tokens = int(self.mask.sum()) if self.mask is not None else int(batch["input_ids"].numel())
        self.token_idx = None
        if max_tokens and n_tokens > max_tokens:
            self.token_idx = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n_tokens, max_tokens, replace=False)))
        self.n_tokens = n_tokens if self.token_idx is None else int(max_tokens)
        self.reference: dict[int, list[torch.Tensor]] = {}
        self._linear: dict[int, list[LinearCKAReference]] = {}
        self.flop_meter = measure.FlopMeter(count_flops)
        self.last_flops = 0
        self.last_seconds = 0.0

    @torch.no_grad()
    def capture(self, layers=None) -> dict[int, list[torch.Tensor]]:
        """One probe forward; returns token matrices (CPU, float32) per layer and module."""
        layers = sorted(self.targets) if layers is None else sorted(layers)
        names = {n: layer for layer in layers for n in self.targets[layer]}
        modules = dict(self.model.named_modules())
        out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        order = {layer: self.targets[layer] for layer in layers}
        captured: dict[str, torch.Tensor] = {}

        def hook(name):
            def fn(_module, _inputs, output):
                hidden = output[0] if isinstance(output, (tuple, list)) else output
                tokens = token_matrix(hidden.detach(), self.mask).float()
                if self.token_idx is not None:
                    tokens = tokens[self.token_idx.to(tokens.device)]
                captured[name] = tokens.cpu()
            return fn

        handles = [modules[n].register_forward_hook(hook(n)) for n in names]
        was_training = self.model.training
        self.model.eval()
        start = time.perf_counter()
        try:
            key = (measure.batch_key(self.batch), measure.trainable_signature(self.model))
            with self.flop_meter.context(key) as fl:
                self.model(**self.batch)
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        self.last_seconds = time.perf_counter() - start
        self.last_flops = fl.flops or 0
        for layer, module_names in order.items():
            out[layer] = [captured[n] for n in module_names]
        return out

    def set_reference(self) -> None:
        self.reference = self.capture()
        if self.kernel == "linear":
            self._linear = {layer: [LinearCKAReference(r) for r in refs] for layer, refs in self.reference.items()}

    def _cka_flops(self, now: dict[int, list[torch.Tensor]]) -> int:
        """Multiply-adds of the CKA products, counted as SAFE's compute (2 per multiply-add)."""
        total = 0
        for current in now.values():
            for c in current:
                n, d = c.shape
                total += 2 * 2 * n * d * d if self.kernel == "linear" else 2 * 2 * n * n * d + 3 * 2 * n * n
        return total

    def reference_checksum(self) -> float:
        """A number that changes if the reference representations change (checked on resume)."""
        return float(sum(t.double().abs().sum() for ts in self.reference.values() for t in ts))

    def importance(self, layers) -> dict[int, float]:
        """``1 - mean CKA(now, reference)`` for each layer (clamped at 0)."""
        if not self.reference:
            raise RuntimeError("set_reference() must run before importance()")
        now = self.capture(layers)
        scores = {}
        self.last_flops += self._cka_flops(now)
        for layer, current in now.items():
            if self.kernel == "linear":
                values = [ref(c) for c, ref in zip(current, self._linear[layer])]
            else:
                values = [cka(c, r, self.kernel) for c, r in zip(current, self.reference[layer])]
            score = 1.0 - float(np.mean(values))
            scores[layer] = score if math.isnan(score) else max(0.0, score)  # NaN: undefined, never frozen
        return scores
