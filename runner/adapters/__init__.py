"""Adapters: one module per adapter kind (``lora.py``: LoRA through PEFT; ``bottleneck.py``:
Houlsby-style bottleneck adapters, ours), each an :class:`AdapterKind` registered in :data:`KINDS`.

A kind says how it is added (the ``_target_`` of its ``conf/adapter/*.yaml``), which parameters are
its own (their name markers), which of its modules SAFE can merge into the base weight when it freezes
a layer, and how a finished run saves it, a pruning job reloads it (merged or attached) and a pruned
model keeps it. Everything else (per-layer grouping for SAFE, running a module without its adapter
through ``base_layer``, the head that trains beside it) is shared and lives here. A new kind is one
module here and one entry in ``tests/helpers.py``'s ``ADAPTER_KINDS``.
"""

from __future__ import annotations

import re
from pathlib import Path

from hydra.utils import get_method
from omegaconf import DictConfig
from torch import nn

from runner.arch import architecture_of, layer_pattern
from runner.classifier_heads import head_modules, saved_pooling
from runner.preflight.errors import ConfigError


class AdapterKind:
    """One adapter kind. ``markers``: substrings of its parameters' names; ``module_part``: the regex of
    the name component where its parameters start below the module they adapt."""

    name = ""
    markers: tuple[str, ...] = ()
    module_part = ""

    def add(self, model: nn.Module, acfg: DictConfig, head: list[str]) -> nn.Module:
        """The adapters on ``model``; they and the ``head`` modules train, nothing else."""
        raise NotImplementedError

    def present(self, model: nn.Module) -> bool:
        """Whether ``model`` carries adapters of this kind."""
        raise NotImplementedError

    def save(self, model: nn.Module, target: Path, config: dict) -> None:
        """A finished run's adapters (and what trained beside them) into ``target``."""
        raise NotImplementedError

    def found_in(self, model_dir: Path) -> bool:
        """Whether a saved run's ``model/`` holds this kind's adapters."""
        raise NotImplementedError

    def load(self, model_dir: Path, base: nn.Module, scfg: DictConfig) -> nn.Module:
        """The saved run's model on ``base``: adapters merged where they can be, attached otherwise."""
        raise NotImplementedError

    def mergeable(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Modules SAFE can fold into their base weight when it freezes them (``merge()``/``unmerge()``)."""
        return []

    def layout(self, model: nn.Module) -> dict:
        """What a pruned model must rebuild before its weights load (adapters that cannot be merged)."""
        return {}

    def attach(self, model: nn.Module, layout: dict) -> None:
        """Rebuild :meth:`layout`'s adapters on a model (weights loaded after)."""


KINDS: dict[str, AdapterKind] = {}


def register(kind: AdapterKind) -> AdapterKind:
    KINDS[kind.name] = kind
    return kind


def kind_of(model: nn.Module) -> AdapterKind | None:
    return next((k for k in KINDS.values() if k.present(model)), None)


def mergeable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [item for kind in KINDS.values() for item in kind.mergeable(model)]


def adapted_module_name(param_name: str) -> str:
    """The module an adapter parameter adapts (``...query.lora_A.default.weight`` -> ``...query``)."""
    parts = "|".join(k.module_part for k in KINDS.values())
    return re.split(rf"\.(?:{parts})\.", param_name, maxsplit=1)[0]


LAYER_RE = layer_pattern()  # ``.<layer list>.<index>.`` of every family (runner.arch)
HEAD_MARKERS = ("classifier", "score", "pre_classifier")


def target_modules(model: nn.Module, acfg: DictConfig) -> list[str]:
    """``adapter.target_modules`` as module-name suffixes: a list as given; ``auto``, the family's
    default for the adapter kind (LoRA: its query and value projections; bottleneck: after the
    attention and feed-forward output projections); ``all-linear``, every linear layer of a layer."""
    wanted = acfg.get("target_modules")
    arch = architecture_of(model)
    if isinstance(wanted, str):
        return list(arch.all_linear_targets if wanted == "all-linear" else
                    arch.lora_targets if acfg.name == "lora" else arch.bottleneck_targets)
    wanted = [str(t) for t in wanted]
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:  # PEFT would adapt the others and say nothing
        raise ConfigError(f"adapter.target_modules {missing} name no module of this {model.config.model_type} model; "
                          f"use adapter.target_modules=auto or all-linear (for it: {list(arch.all_linear_targets)})")
    return wanted


def is_adapter_param(name: str) -> bool:
    return any(marker in name for kind in KINDS.values() for marker in kind.markers)


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


def trained_head_modules(model: nn.Module, cfg: DictConfig) -> list[str]:
    """What trains beside the adapters (``adapter.head_modules``; auto: classifier, + pooler under cls pooling)."""
    return head_modules(model, saved_pooling(model), cfg.adapter.get("head_modules", "auto"))


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
    return get_method(str(target))(model, cfg.adapter, trained_head_modules(model, cfg))


from runner.adapters import bottleneck, lora  # noqa: E402  (each registers its kind)
from runner.adapters.bottleneck import (  # noqa: E402,F401  (conf/adapter/bottleneck.yaml's _target_, the tests)
    ACTIVATIONS, Bottleneck, WithBottleneck, add_bottleneck_adapters, add_bottlenecks_to_train,
)
from runner.adapters.lora import add_lora  # noqa: E402,F401  (conf/adapter/lora.yaml's _target_)
