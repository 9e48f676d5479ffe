"""Adapter importance: how far each adapted layer's representation has moved.

A fixed probe batch of training examples is run through the model (eval mode,
no gradients) at the start of training and again at every measurement; forward
hooks capture, per encoder layer, the outputs of the modules that carry the
layer's adapter (``representation=adapted``: for LoRA on ``[query, value]`` the
query and value projections with their LoRA update; for bottleneck adapters
the projection followed by its bottleneck) or the layer's output
(``representation=layer``). Padding tokens are dropped, the same token subset
is used every time, and (``safe.importance``)

    drift: importance(layer) = 1 - mean over the layer's captured modules of CKA(now, start)
    own:   importance(layer) = 1 - mean over the layer's captured modules of CKA(with, without)

so an adapter whose layer barely changed scores near 0. ``drift`` includes the
change that adapters of lower layers cause (it propagates up); ``own`` compares,
at the same step and on the same input, the captured module's output with the
output it has with the layer's adapters off (each adapter-carrying module run as
its ``base_layer`` alone): a forward hook re-runs the module on its captured
input inside the probe forward, so only the adapter's own contribution counts.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from runner import measure, run_clock
from runner.adapters import adapted_module_name, adapter_parameters, layer_index
from runner.arch import layer_pattern
from runner.preflight.schema import IMPORTANCES, REPRESENTATIONS  # declared with the other settings
from runner.safe.cka import LinearCKAReference, cka, linear_cka_flops, token_matrix

_LAYER_MODULE = layer_pattern(end="$")  # a layer module's own name, in any family (runner.arch)

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
        module_name = adapted_module_name(name)
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
                 max_tokens: int | None = None, seed: int = 0, count_flops: bool = True, importance: str = "drift",
                 adapted: dict[int, list[str]] | None = None):
        self.model = model
        self.batch = batch
        self.targets = targets
        self.kernel = kernel
        if importance not in IMPORTANCES:
            raise ValueError(f"unknown safe.importance {importance!r}; valid: {', '.join(IMPORTANCES)}")
        self.kind = importance
        # importance=own: per captured module, the adapter-carrying modules switched off to get "without"
        self.switch_off = own_switches(model, targets, adapted) if importance == "own" else {}
        self._busy: set[str] = set()  # modules being re-run without adapters (their hook skips)
        self._named: dict[str, nn.Module] = {}  # the model's modules by name, taken at each capture
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

    def _tokens(self, output) -> torch.Tensor:
        """A module's output as the probe's token matrix (padding dropped, the fixed token subset; CPU float32)."""
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        tokens = token_matrix(hidden.detach(), self.mask).float()
        if self.token_idx is not None:
            tokens = tokens[self.token_idx.to(tokens.device)]
        return tokens.cpu()

    def _on_tokens(self, output) -> bool:
        """A module can also run on other inputs than the batch's tokens (DeBERTa-v3's shared key and query
        projections on the relative position embeddings); the probe keeps only its call on the tokens."""
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        return self.mask is None or tuple(hidden.shape[:2]) == tuple(self.mask.shape)

    def _without(self, name: str, module, args, kwargs) -> torch.Tensor:
        """``name``'s output with its adapters off, as the probe's token matrix. A token-wise base (an
        ``nn.Linear`` whose own adapter is the only one switched off) runs on the probe's tokens alone:
        the same rows as running it on the whole padded batch and picking them, at a fraction of the FLOPs."""
        base = getattr(module, "base_layer", None)
        if (self.switch_off[name] == [name] and isinstance(base, nn.Linear) and len(args) == 1 and not kwargs
                and args[0].dim() == 3):
            tokens = token_matrix(args[0], self.mask)
            if self.token_idx is not None:
                tokens = tokens[self.token_idx.to(tokens.device)]
            return base(tokens).detach().float().cpu()
        return self._tokens(module(*args, **kwargs))

    def _hook(self, name: str, captured: dict, without: dict | None):
        """Keeps ``name``'s output; with ``without``, also its output on the same input with the adapters off."""
        def fn(module, args, kwargs, output):
            if name in self._busy or not self._on_tokens(output):  # the re-run below, or not the batch's tokens
                return None
            captured[name] = self._tokens(output)
            if without is not None:
                self._busy.add(name)
                try:
                    with adapters_off([self._named[n] for n in self.switch_off[name]]):
                        without[name] = self._without(name, module, args, kwargs)
                finally:
                    self._busy.discard(name)
            return None
        return fn

    def capture(self, layers=None) -> dict[int, list[torch.Tensor]]:
        """One probe forward; returns token matrices (CPU, float32) per layer and module."""
        return self.capture_pairs(layers, own=False)[0]

    @torch.no_grad()
    def capture_pairs(self, layers=None, own: bool = False) -> tuple[dict, dict]:
        """One probe forward: per layer and module the token matrices now and (``own``) the same
        module's without the layer's adapters, on the same input ({} when not ``own``)."""
        layers = sorted(self.targets) if layers is None else sorted(layers)
        self._named = dict(self.model.named_modules())
        captured: dict[str, torch.Tensor] = {}
        without: dict[str, torch.Tensor] | None = {} if own else None
        handles = [self._named[n].register_forward_hook(self._hook(n, captured, without), with_kwargs=True)
                   for layer in layers for n in self.targets[layer]]
        was_training = self.model.training
        self.model.eval()
        start = run_clock.now()
        try:
            key = (measure.batch_key(self.batch), measure.trainable_signature(self.model), own)
            with self.flop_meter.context(key) as fl:
                self.model(**self.batch)
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        self.last_seconds = run_clock.now() - start
        self.last_flops = fl.flops or 0
        now = {layer: [captured[n] for n in self.targets[layer]] for layer in layers}
        off = {layer: [without[n] for n in self.targets[layer]] for layer in layers} if own else {}
        return now, off

    def set_reference(self) -> None:
        """Step 0's representations: drift's reference; for ``own`` only the resume checksum's."""
        self.reference = self.capture()
        if self.kernel == "linear" and self.kind == "drift":
            self._linear = {layer: [LinearCKAReference(r) for r in refs] for layer, refs in self.reference.items()}

    def _cka_flops(self, now: dict[int, list[torch.Tensor]]) -> int:
        """FLOPs of the CKA products, counted as SAFE's compute, on the route each one takes
        (runner.safe.cka.linear_cka_flops; drift's linear CKA pays only the products with "now")."""
        total = 0
        for current in now.values():
            for c in current:
                n, d = c.shape
                if self.kernel == "linear":
                    total += linear_cka_flops(n, d, d, reference=self.kind == "drift")
                else:
                    total += 2 * 2 * n * n * d + 3 * 2 * n * n
        return total

    def reference_checksum(self) -> float:
        """A number that changes if the reference representations change (checked on resume)."""
        return float(sum(t.double().abs().sum() for ts in self.reference.values() for t in ts))

    def importance(self, layers) -> dict[int, float]:
        """``1 - mean CKA`` for each layer (clamped at 0): against the reference (``drift``) or
        between the outputs with and without the layer's adapters (``own``)."""
        if not self.reference:
            raise RuntimeError("set_reference() must run before importance()")
        own = self.kind == "own"
        now, off = self.capture_pairs(layers, own=own)
        scores = {}
        self.last_flops += self._cka_flops(now)
        for layer, current in now.items():
            if own:
                values = [cka(c, w, self.kernel) for c, w in zip(current, off[layer])]
            elif self.kernel == "linear":
                values = [ref(c) for c, ref in zip(current, self._linear[layer])]
            else:
                values = [cka(c, r, self.kernel) for c, r in zip(current, self.reference[layer])]
            score = 1.0 - float(np.mean(values))
            scores[layer] = score if math.isnan(score) else max(0.0, score)  # NaN: undefined, never frozen
        return scores


def own_switches(model: nn.Module, targets: dict[int, list[str]],
                 adapted: dict[int, list[str]] | None = None) -> dict[str, list[str]]:
    """For ``importance=own``: per captured module, the adapter-carrying modules to run as their
    ``base_layer`` alone: the module itself (``representation=adapted``) or, for a layer's output,
    all of that layer's (``adapted``: :func:`probe_targets` with ``adapted``)."""
    adapted = probe_targets(model, "adapted") if adapted is None else adapted
    modules = dict(model.named_modules())
    out = {}
    for layer, names in targets.items():
        for name in names:
            out[name] = [name] if name in adapted.get(layer, []) else list(adapted.get(layer, []))
            for n in out[name]:
                if not isinstance(getattr(modules[n], "base_layer", None), nn.Module):
                    raise ValueError(f"safe.importance=own runs each adapted module without its adapter as its "
                                     f"base_layer, but {n} ({type(modules[n]).__name__}) has none")
    return out


@contextlib.contextmanager
def adapters_off(modules):
    """Inside the context each module runs as its ``base_layer`` alone (PEFT's LoRA layers and
    :class:`runner.adapters.WithBottleneck` keep the wrapped module there): its adapter is skipped,
    nothing of the adapter or PEFT's state is touched."""
    saved = [m.__dict__.get("forward") for m in modules]
    for m in modules:  # an instance attribute shadows the class's forward (nn.Module's setattr would register a child)
        object.__setattr__(m, "forward", m.base_layer)
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            if f is None:
                object.__delattr__(m, "forward")
            else:
                object.__setattr__(m, "forward", f)
