"""Adapters: LoRA through PEFT and Houlsby-style bottleneck adapters (ours).

One small function, :func:`adapter_parameters`, says which parameters belong to
adapters; training, freezing and reporting all use it.
"""

from __future__ import annotations

import re

import torch
from omegaconf import DictConfig
from torch import nn

from runner.arch import architecture_of, layer_pattern
from runner.errors import ConfigError

ADAPTER_MARKERS = ("lora_", ".bottleneck.")
LAYER_RE = layer_pattern()  # ``.<layer list>.<index>.`` of every family (runner.arch)
HEAD_MARKERS = ("classifier", "score", "pre_classifier")
TARGET_SETS = ("auto", "all-linear")  # adapter.target_modules by name: the family's attention projections, every linear


def target_modules(model: nn.Module, acfg: DictConfig) -> list[str]:
    """``adapter.target_modules`` as module-name suffixes: a list as given; ``auto``, the family's
    default for the adapter kind (LoRA: its query and value projections; bottleneck: after the
    attention and feed-forward output projections); ``all-linear``, every linear layer of a layer."""
    wanted = acfg.get("target_modules")
    if isinstance(wanted, str):
        arch = architecture_of(model)
        if wanted == "all-linear":
            return list(arch.all_linear_targets)
        return list(arch.lora_targets if acfg.name == "lora" else arch.bottleneck_targets)
    return [str(t) for t in wanted]


def is_adapter_param(name: str) -> bool:
    return any(marker in name for marker in ADAPTER_MARKERS)


def is_head_param(name: str) -> bool:
    return any(f"{marker}." in name for marker in HEAD_MARKERS) and not is_adapter_param(name)


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """All adapter parameters by name, trainable or frozen."""
    return {n: p for n, p in model.named_parameters() if is_adapter_param(n)}


def layer_index(name: str) -> int | None:
    """The encoder layer a parameter or module name belongs to."""
    m = LAYER_RE.search(name + ".")
    return int(m.group(1)) if m else None


def adapter_groups(model: nn.Module) -> dict[int, dict[str, nn.Parameter]]:
    """Adapter parameters grouped per encoder layer (SAFE freezes per layer)."""
    groups: dict[int, dict[str, nn.Parameter]] = {}
    for name, p in adapter_parameters(model).items():
        groups.setdefault(layer_index(name), {})[name] = p
    return dict(sorted(groups.items(), key=lambda kv: -1 if kv[0] is None else kv[0]))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    params = dict(model.named_parameters())
    return {
        "params_total": sum(p.numel() for p in params.values()),
        "params_trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "params_adapter": sum(p.numel() for n, p in params.items() if is_adapter_param(n)),
    }


# ---------------------------------------------------------------------------
# Bottleneck adapters
# ---------------------------------------------------------------------------

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


def add_bottleneck_adapters(model: nn.Module, acfg: DictConfig) -> nn.Module:
    wanted = target_modules(model, acfg)
    targets = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(_matches(name, s) for s in wanted)
    ]
    if not targets:
        raise ConfigError(
            f"adapter.target_modules {wanted} match no linear layer of the model; use adapter.target_modules=auto "
            f"(for {model.config.model_type}: {list(architecture_of(model).bottleneck_targets)})"
        )
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        adapter = Bottleneck(module.out_features, acfg.reduction_factor, acfg.activation, acfg.init_scale)
        setattr(parent, child, WithBottleneck(module, adapter.to(module.weight.dtype)))
    return model


# ---------------------------------------------------------------------------
# Applying a method's trainable set
# ---------------------------------------------------------------------------


def add_lora(model: nn.Module, acfg: DictConfig, head: list[str] | None = None) -> nn.Module:
    """PEFT LoRA; ``head`` names the modules that train and are saved beside it (default: the classifier)."""
    from peft import LoraConfig, TaskType, get_peft_model

    if acfg.r <= 0:
        raise ConfigError(f"adapter.r must be a positive rank, got {acfg.r}")
    wanted = target_modules(model, acfg)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=int(acfg.r), lora_alpha=float(acfg.alpha),
        lora_dropout=float(acfg.dropout), target_modules=wanted,
        modules_to_save=list(head) if head else None,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(
            f"adapter.target_modules {wanted} match no module of the model "
            f"({str(exc).splitlines()[0][:120]}); use adapter.target_modules=auto "
            f"(for {model.config.model_type}: {list(architecture_of(model).lora_targets)})"
        ) from exc


def trained_head_modules(model: nn.Module, cfg: DictConfig) -> list[str]:
    """What trains beside the adapters (``adapter.head_modules``; auto: classifier, + pooler under cls pooling)."""
    from runner.heads import head_modules, saved_pooling

    return head_modules(model, saved_pooling(model), cfg.adapter.get("head_modules", "auto"))


def add_bottlenecks_to_train(model: nn.Module, acfg: DictConfig, head: list[str]) -> nn.Module:
    """Bottleneck adapters; they and the ``head`` modules train, nothing else."""
    from runner.heads import is_in_modules

    model = add_bottleneck_adapters(model, acfg)
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter_param(name) or is_in_modules(name, head))
    return model


def prepare_trainable(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """Add adapters if the method uses them and set ``requires_grad`` accordingly. The adapter is the
    function ``adapter._target_`` names (``conf/adapter/*.yaml``): ``(model, adapter cfg, head modules) -> model``."""
    if not cfg.method.uses_adapters:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    target = cfg.adapter.get("_target_")
    if not target:
        raise ConfigError(f"method {cfg.method.name} trains adapters, but adapter={cfg.adapter.name}; use adapter=lora or adapter=bottleneck")
    from hydra.utils import get_method

    return get_method(str(target))(model, cfg.adapter, trained_head_modules(model, cfg))
