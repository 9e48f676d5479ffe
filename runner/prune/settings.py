"""``cfg.prune`` checked once, into plain Python values (errors as one line)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError


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
    alpha_split: str  # "train_holdout": choose on training examples, report on all dev; "dev_half": the paper's
    calib_samples: int
    calib_batch_size: int
    his_per: str  # "example": |dL(x)/dm| per example (the paper); "batch": |dL(batch)/dm|
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


def parse(pcfg) -> PruneSettings:
    """``cfg.prune`` into plain values: every key's type and range by :mod:`runner.schema` (the one
    place ranges live), then the checks across keys."""
    from runner import schema

    defaults = OmegaConf.structured(schema.PruneSettings)
    node = OmegaConf.to_container(pcfg, resolve=True) if isinstance(pcfg, DictConfig) else dict(pcfg)
    for key in schema.list_fields(schema.PruneSettings):
        if key in node and node[key] is not None and not isinstance(node[key], list):
            node[key] = [node[key]]  # prune.ratios=0.5 means [0.5]
    node.setdefault("name", "hies")
    node.setdefault("seed", 0)  # a bare node (not composed: no run seed for the declared ${seed} to follow)
    schema.check_group("prune", node)
    p = OmegaConf.to_container(OmegaConf.merge(defaults, {k: v for k, v in node.items() if k in defaults}))
    alpha = None if str(p["alpha"]).lower() == "auto" else float(p["alpha"])
    if alpha is None and not p["alpha_grid"]:
        raise ConfigError("prune.alpha=auto needs a non-empty prune.alpha_grid")
    if alpha is None and not p["alpha_ratios"]:
        raise ConfigError("prune.alpha=auto needs a non-empty prune.alpha_ratios")
    ratio = float(p["ratio"])
    return PruneSettings(
        criterion=p["name"],
        compare=tuple(dict.fromkeys([p["name"], *(p["compare"] or [])])),
        ratios=tuple(sorted({float(r) for r in p["ratios"] or []} | {ratio})),
        ratio=ratio,
        alpha=alpha,
        alpha_grid=tuple(float(a) for a in p["alpha_grid"]),
        alpha_ratios=tuple(sorted({float(r) for r in p["alpha_ratios"]})),
        alpha_holdout_samples=p["alpha_holdout_samples"],
        alpha_split=p["alpha_split"],
        calib_samples=p["calib_samples"],
        calib_batch_size=p["calib_batch_size"],
        his_per=p["his_per"],
        normalize_layers=p["normalize_layers"],
        min_heads_per_layer=p["min_heads_per_layer"],
        seed=p["seed"],
        from_run=None if p["from_run"] in (None, "") else str(p["from_run"]),
        recovery_finetune=p["recovery_finetune"],
        recovery_steps=p["recovery_steps"],
        recovery_lr=float(p["recovery_lr"]),
        latency=p["latency"],
        latency_repeats=p["latency_repeats"],
        latency_ratios=None if p["latency_ratios"] is None else tuple(float(r) for r in p["latency_ratios"]),
        latency_threads=p["latency_threads"],
        latency_examples=p["latency_examples"],
        latency_batch_sizes=tuple(p["latency_batch_sizes"]),
        flops_batch_size=p["flops_batch_size"],
        save_model=p["save_model"],
    )


def from_config(cfg: DictConfig) -> PruneSettings | None:
    """This job's pruning settings, or None when it does not prune (``prune=none``)."""
    pcfg = cfg.get("prune")
    if pcfg is None:
        return None
    if str(pcfg.get("name", "none")) == "none":
        if pcfg.get("from_run") not in (None, ""):
            raise ConfigError("prune.from_run needs a criterion: add prune=hies (or his, entropy, random, magnitude)")
        return None
    return parse(pcfg)
