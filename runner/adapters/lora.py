"""LoRA through PEFT: added with PEFT's SEQ_CLS task (the head modules saved beside the adapters),
saved in PEFT's format, merged into the base weights when a pruning job reloads a run; SAFE folds a
frozen layer's LoRA modules into their base weight (PEFT ``merge()``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from runner.adapters import AdapterKind, layer_index, register, target_modules
from runner.arch import architecture_of
from runner.classifier_heads import is_causal_lm
from runner.preflight.errors import ConfigError


class Lora(AdapterKind):
    name = "lora"
    markers = ("lora_",)
    module_part = r"lora_[A-Za-z_]+"

    def add(self, model: nn.Module, acfg: DictConfig, head: list[str] | None = None) -> nn.Module:
        """PEFT LoRA; ``head`` names the modules that train and are saved beside it (default: the classifier)."""
        if acfg.r <= 0:
            raise ConfigError(f"adapter.r must be a positive rank, got {acfg.r}")
        wanted = target_modules(model, acfg)

        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM if is_causal_lm(model) else TaskType.SEQ_CLS, r=int(acfg.r), lora_alpha=float(acfg.alpha),
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

    def present(self, model: nn.Module) -> bool:
        return hasattr(model, "peft_config")

    def save(self, model: nn.Module, target: Path, config: dict) -> None:
        model.save_pretrained(str(target))  # adapter weights + the head modules

    def found_in(self, model_dir: Path) -> bool:
        return (Path(model_dir) / "adapter_config.json").is_file()

    def load(self, model_dir: Path, base: nn.Module, scfg: DictConfig) -> nn.Module:
        return PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()

    def mergeable(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(name, m) for name, m in model.named_modules()
                if isinstance(m, BaseTunerLayer) and layer_index(name) is not None]


LORA = register(Lora())
add_lora = LORA.add
