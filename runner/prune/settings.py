"""``cfg.prune`` checked once, into plain Python values (errors as one line)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.errors import ConfigError
from runner.prune.scores import CRITERIA

LATENCY_MODES = ("primary", "all", "none")
SAVE_MODES = ("primary", "none")


@dataclass(frozen=True)
class PruneSettings:
    criterion: str  # the primary criterion (prune.name)
    compare: tuple[str, ...]  # every criterion evaluated, primary first
    ratios: tuple[float, ...]  # sorted, includes `ratio`
    ratio: float  # the primary ratio: saved model, headline numbers
    alpha: float | None  # None means auto
    alpha_grid: tuple[float, ...]
    alpha_ratios: tuple[float, ...]
    alpha_holdout_samples: int
    calib_samples: int
    calib_batch_size: int
    normalize_layers: bool
    min_heads_per_layer: int
    seed: int
    from_run: str | None
    recovery_finetune: bool
    recovery_steps: int
    recovery_lr: float
    latency: str
    latency_repeats: int
    latency_ratios: tuple[float, ...] | None  # None: every evaluated ratio
    latency_threads: int | None  # None: torch's default
    latency_examples: int
    latency_batch_sizes: tuple[int, ...]
    flops_batch_size: int
    save_model: str

    @property
    def alpha_auto(self) -> bool:
        return self.alpha is None

    @property
    def needs_calibration(self) -> bool:
        return any(c in ("hies", "his", "entropy") for c in self.compare)


def _ratio(value, what: str) -> float:
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= r < 1.0:
        raise ConfigError(f"{what} must lie in [0, 1) (the fraction of heads removed), got {value}")
    return r


def _alpha(value, what: str = "prune.alpha") -> float:
    try:
        a = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number in [0, 1] or 'auto', got {value!r}") from None
    if not 0.0 <= a <= 1.0:
        raise ConfigError(f"{what} must lie in [0, 1] (weight of HIS against entropy) or be 'auto', got {value}")
    return a


def _list(value, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, (ListConfig, list, tuple)):
        return list(OmegaConf.to_container(value) if isinstance(value, ListConfig) else value)
    if isinstance(value, (int, float, str)):
        return [value]
    raise ConfigError(f"{what} must be a list, got {value!r}")


def _positive_int(value, what: str, minimum: int = 1) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}") from None
    if v < minimum or float(value) != v:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return v


def parse(pcfg: DictConfig) -> PruneSettings:
    name = str(pcfg.get("name", "none"))
    if name not in CRITERIA:
        raise ConfigError(f"unknown prune criterion prune.name={name}; valid: {', '.join(CRITERIA)}")
    ratio = _ratio(pcfg.get("ratio", 0.3), "prune.ratio")
    ratios = sorted({_ratio(r, "every prune.ratios value") for r in _list(pcfg.get("ratios"), "prune.ratios")} | {ratio})
    compare = [str(c) for c in _list(pcfg.get("compare"), "prune.compare")]
    for c in compare:
        if c not in CRITERIA:
            raise ConfigError(f"unknown criterion {c!r} in prune.compare; valid: {', '.join(CRITERIA)}")
    compare = list(dict.fromkeys([name, *compare]))
    raw_alpha = pcfg.get("alpha", 0.5)
    alpha = None if str(raw_alpha).lower() == "auto" else _alpha(raw_alpha)
    grid = [_alpha(a, "every prune.alpha_grid value") for a in _list(pcfg.get("alpha_grid"), "prune.alpha_grid")]
    if alpha is None and not grid:
        raise ConfigError("prune.alpha=auto needs a non-empty prune.alpha_grid")
    alpha_ratios = [_ratio(r, "every prune.alpha_ratios value") for r in _list(pcfg.get("alpha_ratios"), "prune.alpha_ratios")]
    if alpha is None and not alpha_ratios:
        raise ConfigError("prune.alpha=auto needs a non-empty prune.alpha_ratios")
    latency = str(pcfg.get("latency", "primary"))
    if latency not in LATENCY_MODES:
        raise ConfigError(f"prune.latency must be one of {', '.join(LATENCY_MODES)}, got {latency}")
    save = str(pcfg.get("save_model", "primary"))
    if save not in SAVE_MODES:
        raise ConfigError(f"prune.save_model must be one of {', '.join(SAVE_MODES)}, got {save}")
    min_heads = pcfg.get("min_heads_per_layer", 0)
    try:
        min_heads = int(min_heads)
    except (TypeError, ValueError):
        raise ConfigError(f"prune.min_heads_per_layer must be an integer >= 0, got {min_heads!r}") from None
    if min_heads < 0:
        raise ConfigError(f"prune.min_heads_per_layer must be >= 0, got {min_heads}")
    from_run = pcfg.get("from_run")
    return PruneSettings(
        criterion=name,
        compare=tuple(compare),
        ratios=tuple(ratios),
        ratio=ratio,
        alpha=alpha,
        alpha_grid=tuple(grid),
        alpha_ratios=tuple(sorted(set(alpha_ratios))),
        alpha_holdout_samples=_positive_int(pcfg.get("alpha_holdout_samples", 256), "prune.alpha_holdout_samples"),
        calib_samples=_positive_int(pcfg.get("calib_samples", 32), "prune.calib_samples"),
        calib_batch_size=_positive_int(pcfg.get("calib_batch_size", 8), "prune.calib_batch_size"),
        normalize_layers=bool(pcfg.get("normalize_layers", True)),
        min_heads_per_layer=min_heads,
        seed=int(pcfg.get("seed", 0)),
        from_run=None if from_run in (None, "") else str(from_run),
        recovery_finetune=bool(pcfg.get("recovery_finetune", False)),
        recovery_steps=_positive_int(pcfg.get("recovery_steps", 100), "prune.recovery_steps"),
        recovery_lr=float(pcfg.get("recovery_lr", 2e-5)),
        latency=latency,
        latency_repeats=_positive_int(pcfg.get("latency_repeats", 7), "prune.latency_repeats"),
        latency_ratios=None if pcfg.get("latency_ratios") is None else tuple(
            _ratio(r, "every prune.latency_ratios value") for r in _list(pcfg.get("latency_ratios"), "prune.latency_ratios")),
        latency_threads=None if pcfg.get("latency_threads") is None else _positive_int(
            pcfg.get("latency_threads"), "prune.latency_threads"),
        latency_examples=_positive_int(pcfg.get("latency_examples", 64), "prune.latency_examples"),
        latency_batch_sizes=tuple(_positive_int(b, "prune.latency_batch_sizes") for b in _list(pcfg.get("latency_batch_sizes", [1, 32]), "prune.latency_batch_sizes")),
        flops_batch_size=_positive_int(pcfg.get("flops_batch_size", 32), "prune.flops_batch_size"),
        save_model=save,
    )


def enabled(cfg: DictConfig) -> bool:
    """Whether this job prunes (``prune.name`` other than ``none``, or a source run given)."""
    pcfg = cfg.get("prune")
    if pcfg is None:
        return False
    return str(pcfg.get("name", "none")) != "none" or pcfg.get("from_run") not in (None, "")
