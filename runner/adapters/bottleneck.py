"""Houlsby-style bottleneck adapters (ours): ``x + up(act(down(x)))`` after a projection, which stays
the wrapper's ``base_layer``. They cannot be merged into a weight: a finished run saves them (with
what trained beside them) as safetensors, a pruning job attaches them again, and a pruned model
records their shapes so that it can rebuild them before its weights load."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from runner.adapters import LAYER_RE, AdapterKind, is_adapter_param, is_head_param, register, target_modules
from runner.arch import architecture_of
from runner.atomic_io import atomic_write_json
from runner.classifier_heads import is_in_modules
from runner.preflight.errors import ConfigError, ModelError

WEIGHTS, CONFIG = "bottleneck_adapters.safetensors", "bottleneck_config.json"
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


class Bottleneck(nn.Module):
    """x + up(act(down(x))); up starts near zero, so the adapter starts as identity."""

    def __init__(self, hidden: int, reduction_factor: int, activation: str, init_scale: float):
        super().__init__()
        size = max(1, hidden // reduction_factor)
        self.down = nn.Linear(hidden, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden)
        nn.init.normal_(self.down.weight, std=init_scale)
        nn.init.zeros_(self.down.bias)
        nn.init.normal_(self.up.weight, std=init_scale)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class WithBottleneck(nn.Module):
    """A projection followed by its bottleneck adapter (the projection stays ``base_layer``)."""

    def __init__(self, base_layer: nn.Linear, bottleneck: Bottleneck):
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck = bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.base_layer(x))


def _matches(name: str, target: str) -> bool:
    """``target`` names a module relative to its encoder layer (``output.dense``
    is the feed-forward output, ``attention.output.dense`` the attention one)."""
    m = LAYER_RE.search(name + ".")
    relative = name[m.end():] if m else name
    return relative == target


def _outputs(layer: nn.Module) -> int:
    """Output width of a linear layer (GPT-2's ``Conv1D`` calls it ``nf``)."""
    return int(layer.nf if isinstance(layer, Conv1D) else layer.out_features)


def add_bottleneck_adapters(model: nn.Module, acfg: DictConfig) -> nn.Module:
    wanted = target_modules(model, acfg)
    targets = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and any(_matches(name, s) for s in wanted)
    ]
    if not targets:
        raise ConfigError(
            f"adapter.target_modules {wanted} match no linear layer of the model; use adapter.target_modules=auto "
            f"(for {model.config.model_type}: {list(architecture_of(model).bottleneck_targets)})"
        )
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        adapter = Bottleneck(_outputs(module), acfg.reduction_factor, acfg.activation, acfg.init_scale)
        setattr(parent, child, WithBottleneck(module, adapter.to(module.weight.dtype)))
    return model


class BottleneckKind(AdapterKind):
    name = "bottleneck"
    markers = (".bottleneck.",)
    module_part = "bottleneck"

    def add(self, model: nn.Module, acfg: DictConfig, head: list[str]) -> nn.Module:
        model = add_bottleneck_adapters(model, acfg)
        for name, p in model.named_parameters():
            p.requires_grad_(is_adapter_param(name) or is_in_modules(name, head))
        return model

    def present(self, model: nn.Module) -> bool:
        return any(isinstance(m, WithBottleneck) for m in model.modules())

    def save(self, model: nn.Module, target: Path, config: dict) -> None:
        """The adapters, the classifier and whatever else trained beside them (the pooler under cls pooling)."""
        state = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters()
                 if is_adapter_param(n) or is_head_param(n) or p.requires_grad}
        save_file(state, str(Path(target) / WEIGHTS))
        atomic_write_json(Path(target) / CONFIG, config.get("adapter", {}))

    def found_in(self, model_dir: Path) -> bool:
        return (Path(model_dir) / WEIGHTS).is_file()

    def load(self, model_dir: Path, base: nn.Module, scfg: DictConfig) -> nn.Module:
        model = add_bottleneck_adapters(base, scfg.adapter)
        state = load_file(str(Path(model_dir) / WEIGHTS))
        missing = set(state) - set(dict(model.named_parameters()))
        if missing:
            raise ModelError(f"{model_dir}: adapter weights {sorted(missing)[:3]} do not fit the rebuilt model")
        model.load_state_dict(state, strict=False)
        return model

    def layout(self, model: nn.Module) -> dict:
        """Module name -> (bottleneck size, activation) of every bottleneck adapter."""
        names = {cls: name for name, cls in ACTIVATIONS.items()}
        return {name: [m.bottleneck.down.out_features, names[type(m.bottleneck.act)]]
                for name, m in model.named_modules() if isinstance(m, WithBottleneck)}

    def attach(self, model: nn.Module, layout: dict) -> None:
        for name, (size, activation) in layout.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            base = getattr(parent, child)
            width = _outputs(base)
            adapter = Bottleneck(width, max(1, width // int(size)), activation, 0.0)
            if adapter.down.out_features != int(size):
                raise ModelError(f"bottleneck adapter {name}: size {size} does not divide {width}")
            setattr(parent, child, WithBottleneck(base, adapter))


BOTTLENECK = register(BottleneckKind())
add_bottlenecks_to_train = BOTTLENECK.add
