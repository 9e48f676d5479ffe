"""``cfg.prune`` checked once into :class:`Pruning`: the settings as declared in
:class:`runner.preflight.schema.PruneSettings` (each key's type, default, range and meaning live there only),
plus the few values that follow from several of them (every criterion evaluated, every ratio,
alpha's ``auto``). Errors are one line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from runner.preflight import schema
from runner.preflight.errors import ConfigError


@dataclass(frozen=True)
class Pruning:
    """The pruning a job does. Every declared key reads through as declared (``s.calib_samples``); the
    properties below are the ones a job derives, under the declared name where the meaning widens
    (``ratios`` always holds ``ratio``; ``compare`` starts with the primary criterion)."""

    declared: schema.PruneSettings

    def __getattr__(self, name: str):  # only for names that are neither fields nor properties here
        if name == "declared":  # copying or unpickling: not set yet
            raise AttributeError(name)
        return getattr(self.declared, name)

    @property
    def criterion(self) -> str:
        """The primary criterion (``prune.name``)."""
        return self.declared.name

    @property
    def compare(self) -> tuple[str, ...]:
        """Every criterion evaluated, primary first."""
        return tuple(dict.fromkeys([self.declared.name, *(self.declared.compare or [])]))

    @property
    def ratios(self) -> tuple[float, ...]:
        """Every ratio evaluated, sorted; ``ratio`` (the saved model's, the headline numbers') among them."""
        return tuple(sorted({float(r) for r in self.declared.ratios or []} | {self.ratio}))

    @property
    def ratio(self) -> float:
        return float(self.declared.ratio)

    @property
    def alpha(self) -> float | None:
        """HIES's alpha; None means auto (chosen over ``alpha_grid`` x ``alpha_ratios``)."""
        return None if str(self.declared.alpha).lower() == "auto" else float(self.declared.alpha)

    @property
    def alpha_auto(self) -> bool:
        return self.alpha is None

    @property
    def alpha_grid(self) -> tuple[float, ...]:
        return tuple(float(a) for a in self.declared.alpha_grid)

    @property
    def alpha_ratios(self) -> tuple[float, ...]:
        return tuple(sorted({float(r) for r in self.declared.alpha_ratios}))

    @property
    def from_run(self) -> str | None:
        return None if self.declared.from_run in (None, "") else str(self.declared.from_run)

    @property
    def latency_ratios(self) -> tuple[float, ...] | None:
        """Only these ratios are timed; None: every evaluated one."""
        ratios = self.declared.latency_ratios
        return None if ratios is None else tuple(float(r) for r in ratios)

    @property
    def latency_batch_sizes(self) -> tuple[int, ...]:
        return tuple(self.declared.latency_batch_sizes)

    @property
    def recovery_lr(self) -> float:
        return float(self.declared.recovery_lr)

    @property
    def needs_calibration(self) -> bool:
        return any(c in ("hies", "his", "entropy") for c in self.compare)

    def as_record(self) -> dict:
        """The settings as the record's ``pruning.settings`` says them: ``criterion`` and every declared key,
        derived values where a job derives them."""
        keys = [f.name for f in dataclasses.fields(schema.PruneSettings) if f.name != "name"]
        return {"criterion": self.criterion, **{k: _plain(getattr(self, k)) for k in keys}}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def parse(pcfg) -> Pruning:
    """``cfg.prune`` (a composed node, or a plain dict of the keys given) into :class:`Pruning`: every
    key's type and range by :mod:`runner.preflight.schema` (the one place they live), then the checks across keys."""
    node = OmegaConf.to_container(pcfg, resolve=True) if isinstance(pcfg, DictConfig) else dict(pcfg)
    for key in schema.list_fields(schema.PruneSettings):
        if key in node and node[key] is not None and not isinstance(node[key], list):
            node[key] = [node[key]]  # prune.ratios=0.5 means [0.5]
    node.setdefault("name", "hies")
    node.setdefault("seed", 0)  # a bare node (not composed: no run seed for the declared ${seed} to follow)
    schema.check_group("prune", node)
    s = Pruning(schema.settings_of("prune", node))
    if s.alpha_auto and not s.alpha_grid:
        raise ConfigError("prune.alpha=auto needs a non-empty prune.alpha_grid")
    if s.alpha_auto and not s.alpha_ratios:
        raise ConfigError("prune.alpha=auto needs a non-empty prune.alpha_ratios")
    return s


def from_config(cfg: DictConfig) -> Pruning | None:
    """This job's pruning settings, or None when it does not prune (``prune=none``)."""
    pcfg = cfg.get("prune")
    if pcfg is None:
        return None
    if str(pcfg.get("name", "none")) == "none":
        if pcfg.get("from_run") not in (None, ""):
            raise ConfigError("prune.from_run needs a criterion: add prune=hies (or his, entropy, random, magnitude)")
        return None
    return parse(pcfg)
