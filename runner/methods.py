"""The narrow interface through which training methods plug into the loop.

The loop in :mod:`runner.train` calls these hooks; ``full`` and ``adapter``
need none of them. SAFE (``runner.safe``) freezes adapters in
``on_step_end``. A method is the class named by ``method._target_``
(``conf/method/*.yaml``); a new method is a subclass and a yaml file, no
if-chain to extend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_class, get_method

from runner.preflight.errors import ConfigError


@dataclass
class LoopContext:
    """What a method can see during training. The loop owns it: a method never assigns to it, it
    returns what changed (a new model wrapper) from its hooks."""

    cfg: Any
    accelerator: Any
    model: Any  # the model the loop trains now, as prepared by Accelerate (may be DDP-wrapped)
    optimizer: Any
    train_loader: Any
    total_steps: int
    tracker: Any
    output_dir: Path
    steps_per_epoch: int  # optimizer steps per epoch (gradient accumulation counted)


@dataclass
class StepUpdate:
    """What a method's ``on_step_end`` hands back to the loop."""

    metrics: dict = field(default_factory=dict)  # logged with the step's record
    model: Any = None  # a new wrapper the loop trains from now on (SAFE re-wraps DDP after freezing); None: unchanged


class TrainingMethod:
    """Default: train what ``prepare_trainable`` left trainable; no hooks."""

    name = "base"

    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def check_config(cls, cfg) -> None:
        """The method's checks across keys, before any heavy work (ranges: runner.preflight.schema).
        Only ``method=safe`` freezes adapters and has ``safe`` settings."""
        if cfg.get("safe") is not None:
            raise ConfigError(f"safe settings need method=safe (method={cfg.method.name} freezes nothing)")

    def ddp_kwargs(self) -> dict:
        """Keyword arguments for DDP (e.g. find_unused_parameters)."""
        return {}

    def setup(self, ctx: LoopContext) -> Any:
        """Called once after ``accelerator.prepare`` and before the first step; returns a new model
        wrapper for the loop, or None."""
        return None

    def on_step_end(self, ctx: LoopContext, step: int) -> StepUpdate:
        """Called after each optimizer step (``step`` counts from 1)."""
        return StepUpdate()

    def micro_batch_splits(self, step: int) -> int:
        """Into how many equal chunks the loop splits each micro-batch before optimizer step ``step + 1``
        (forward and backward per chunk, gradients summed: the same update with less activation
        memory at once; SAFE's ``budget_mode``). 1: no split."""
        return 1

    def whole_within_peak(self, step: int) -> bool:
        """Whether a micro-batch that :meth:`micro_batch_splits` would split before optimizer step
        ``step + 1`` runs whole instead when its forward is predicted to save no more bytes for backward
        than the run's peak so far (SAFE's ``budget_mode`` after t_f: the split warm-up's peak is the
        budget). False: split as asked."""
        return False

    def state_dict(self) -> dict:
        return {}

    def changed_base_layers(self) -> set[int]:
        """Encoder layers whose base (non-adapter) weights this method changed, e.g. by merging an adapter
        into them; an adapter checkpoint saves those layers too."""
        return set()

    def load_state_dict(self, state: dict) -> Any:
        """Restore :meth:`state_dict` on resume, before the checkpoint's weights are loaded; returns
        a new model wrapper for the loop, or None."""
        return None

    def report(self, ctx: LoopContext, history: list[dict]) -> dict:
        """A section for results.json at the end of training (``history``: one record per optimizer step)."""
        return {}


def method_checks(cfg):
    """The function that checks the method's settings across keys: ``method.checks`` (a torch-free dotted
    path, so the pre-flight imports no torch), else the class's own ``check_config`` (importing the class:
    torch-free for this module's ``TrainingMethod``, which ``adapter`` and ``full`` run). Method options are
    user yaml files without shared defaults: a method of one's own may leave it out."""
    path = cfg.method.get("checks")
    if path is None:
        return method_class(cfg).check_config
    try:
        return get_method(str(path))
    except Exception as exc:  # noqa: BLE001 (Hydra wraps the import error)
        raise ConfigError(f"method.checks={path} cannot be imported; name a function (cfg) -> None") from exc


def method_class(cfg) -> type[TrainingMethod]:
    """The class ``method._target_`` names (Hydra resolves the dotted path)."""
    target = str(cfg.method.get("_target_") or "runner.methods.TrainingMethod")
    try:
        cls = get_class(target)
    except Exception as exc:  # noqa: BLE001 (Hydra wraps the import error)
        raise ConfigError(f"method._target_={target} cannot be imported; name a runner.methods.TrainingMethod subclass") from exc
    if not (isinstance(cls, type) and issubclass(cls, TrainingMethod)):
        raise ConfigError(f"method._target_={target} is not a runner.methods.TrainingMethod subclass")
    return cls


def build_method(cfg) -> TrainingMethod:
    return method_class(cfg)(cfg)
