"""SAFE (Selective Adapter FrEezing) as a :class:`runner.methods.TrainingMethod`.

``method=safe`` trains adapters like ``method=adapter`` and, after every
optimizer step, may freeze some of them (``safe.policy`` chooses how):

* ``safe``   - measure importance (``safe.importance``: ``drift``, 1 - CKA to the
  start; ``own``, 1 - CKA between the outputs with and without the adapter)
  every ``safe.interval`` steps from ``t_w`` to ``t_f`` (plus one capture at
  step 0: drift's reference, and the resume checksum for both) and freeze every active adapter whose importance / max
  importance is below the cubic threshold T(t). ``t_w`` / ``t_f``: fractions or epochs (``safe.schedule_unit``).
* ``random`` - the same measurements and the same number of adapters frozen at
  each decision as ``safe`` would freeze, but chosen at random.
* ``static`` - freeze the lowest ``safe.static_k`` adapters before step 1.
* ``none``   - freeze nothing (plain adapter tuning through this code path).

Decisions are made on the main process and broadcast, so every rank freezes
the same adapters at the same step; after a freezing event a DDP-wrapped model
is wrapped afresh, so DDP's reducer only waits for gradients that still come.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
from accelerate.utils import broadcast_object_list
from torch.nn.parallel import DistributedDataParallel as DDP

from runner import run_clock
from runner.measure import history_peak, optimizer_state_bytes, tensor_bytes
from runner.methods import LoopContext, StepUpdate, TrainingMethod
from runner.preflight.errors import ConfigError
from runner.preflight.schema import SafeSettings
from runner.safe import checks, schedule
from runner.safe.freezer import AdapterFreezer
from runner.safe.importance import RepresentationProbe, probe_batch, probe_targets
from runner.safe.plot import freeze_timeline

log = logging.getLogger(__name__)

MEASURING = ("safe", "random")
TIMELINE_PNG = "safe_freeze_timeline.png"


IMPORTANCE_SCORES = {  # safe.importance -> what the report's importances are (runner.safe.importance)
    "drift": "1 - mean CKA(representation now, at step 0)",
    "own": "1 - mean CKA(representation with the layer's adapters, without them), same step and input",
}
MIN_DECISIONS = 3  # fewer importance measurements in the freezing window: warn that the schedule is too short


def rewrap_ddp(acc, old):
    """A fresh DDP around ``old``'s module, so its reducer only covers parameters that still train
    (None when ``old`` is not DDP-wrapped: nothing to re-wrap). Accelerate has no public call to swap a model it
    prepared, so its list of prepared models is pointed at the new wrapper (it saves and loads those)."""
    if not isinstance(old, DDP):
        return None
    handler = getattr(acc, "ddp_handler", None)
    kwargs = handler.to_kwargs() if handler is not None else {}
    if old.device_ids:
        kwargs.update(device_ids=old.device_ids, output_device=old.output_device)
    new = DDP(old.module, **kwargs)
    if handler is not None:
        handler.register_comm_hook(new)
    # Accelerate saves and loads the models it prepared: point it at the new wrapper.
    acc._models = [new if m is old else m for m in acc._models]
    return new


class SafeMethod(TrainingMethod):
    name = "safe"

    @classmethod
    def check_config(cls, cfg) -> None:
        """What the schema cannot see (runner.safe.checks, torch-free: the pre-flight calls it directly)."""
        checks.check_config(cfg)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.settings: SafeSettings = checks.safe_settings(cfg)
        self.policy = self.settings.policy
        self.seed = self.settings.seed
        self.ctx: LoopContext | None = None
        self.freezer: AdapterFreezer | None = None
        self.probe: RepresentationProbe | None = None
        self.measurements: list[dict] = []  # {step, threshold, importance, normalised, froze}
        self.events: list[dict] = []  # {step, layers, trainable_adapter_params}
        self.probe_flops = 0
        self.probe_seconds = 0.0
        self.reference_checksum: float | None = None
        self._pending: tuple[int, float] | None = None
        self._measure_steps: set[int] = set()  # decision_steps(), fixed in setup
        self.schedule_warning: str | None = None
        self.window: dict | None = None  # t_w / t_f in steps, epochs and fractions (setup: runner.safe.schedule.window)
        self.importance_kind = self.settings.importance

    # ----------------------------------------------------------------- setup

    def setup(self, ctx: LoopContext):
        """Freezer, schedule, the probe's reference (main process); policy static freezes here."""
        self.ctx = ctx
        acc = ctx.accelerator
        module = acc.unwrap_model(ctx.model)
        merge = bool(self.cfg.adapter.get("merge_on_freeze", False))
        self.freezer = AdapterFreezer(module, ctx.optimizer, merge=merge)
        if not self.freezer.groups:
            raise ConfigError("method=safe freezes the adapters of each encoder layer, but the model has none; "
                              "use adapter=lora or adapter=bottleneck")
        self.total_steps = int(ctx.total_steps)
        self.window = self._window(ctx)
        self.t_w_step, self.t_f_step = self.window["steps"]["t_w"], self.window["steps"]["t_f"]
        self._measure_steps = set(self.decision_steps())
        self.schedule_warning = self._check_schedule_length()
        if self.policy in MEASURING and acc.is_main_process:
            batch = probe_batch(ctx.train_loader, self.settings.probe_size, self.seed, acc.device)
            self.probe = self._make_probe(module, batch)
            self.probe.set_reference()  # step 0: every adapter is still (close to) the identity
            self.probe_flops += self.probe.last_flops
            self.probe_seconds += self.probe.last_seconds
            self._pending = (self.probe.last_flops, self.probe.last_seconds)  # charged to step 1
            self.reference_checksum = self.probe.reference_checksum()
            log.info("SAFE: probe of %d examples (%d tokens), reference captured for layers %s",
                     len(batch["input_ids"]), self.probe.n_tokens, sorted(self.probe.targets))
        if self.policy == "static":
            k = self.settings.static_k
            n = len(self.freezer.groups)
            if k is None or not 0 <= int(k) <= n:
                raise ConfigError(f"safe.policy=static needs safe.static_k in 0..{n} (the number of lowest adapters to freeze; "
                                  f"the benchmark passes SAFE's final frozen count)")
            return self._freeze(ctx, self.freezer.layers[:int(k)], step=0)[1]
        return None

    def micro_batch_splits(self, step: int) -> int:
        """``safe.budget_mode`` (ours, beyond the paper): every micro-batch may run as ``safe.budget_splits``
        chunks, so the warm-up, when every adapter trains, keeps ~1/k of the activations at once. Up to
        t_f (while the schedule can still freeze) every micro-batch is split; after it
        (:meth:`whole_within_peak`) only those whose whole forward would save more bytes for backward than
        the run's peak so far, the split warm-up's: with many adapters frozen every micro-batch runs whole
        again, with few only the short ones. The same updates either way (runner.train)."""
        return self._budget_splits()

    def whole_within_peak(self, step: int) -> bool:
        return self._budget_splits() > 1 and step >= self.t_f_step

    def _budget_splits(self) -> int:
        if not self.settings.budget_mode or self.policy == "static":
            return 1
        return self.settings.budget_splits

    def _window(self, ctx: LoopContext) -> dict:
        """t_w and t_f in this run's steps, epochs and fractions (runner.safe.schedule.window)."""
        try:
            return schedule.window(self.settings.t_w, self.settings.t_f, self.settings.schedule_unit,
                                   self.total_steps, ctx.steps_per_epoch)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def _make_probe(self, module, batch) -> RepresentationProbe:
        """The probe on the layers that have an adapter group, scoring with ``safe.importance``."""
        targets = probe_targets(module, self.settings.representation)
        targets = {k: v for k, v in targets.items() if k in self.freezer.groups}
        try:
            return RepresentationProbe(
                module, batch, targets, kernel=self.settings.kernel, max_tokens=self.settings.max_tokens,
                seed=self.seed, count_flops=bool(self.cfg.trainer.count_flops),
                importance=self.importance_kind,
                adapted=probe_targets(module, "adapted") if self.importance_kind == "own" else None,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def _freeze(self, ctx: LoopContext, layers, step: int) -> tuple[list[int], object]:
        """Freeze ``layers``; returns those frozen now and the model wrapper to train from now on (None: unchanged)."""
        done = self.freezer.freeze(layers, step)
        if not done:
            return done, None
        self.events.append({"step": int(step), "layers": done,
                            "trainable_adapter_params": self._trainable_adapter_params()})
        return done, rewrap_ddp(ctx.accelerator, ctx.model)

    def _trainable_adapter_params(self) -> int:
        return int(sum(p.numel() for g in self.freezer.groups.values() for p in g.values() if p.requires_grad))

    # ------------------------------------------------------------------ steps

    def decision_steps(self) -> list[int]:
        """The steps at which SAFE measures importance with a threshold above 0 (where it may freeze)."""
        if self.policy not in MEASURING:
            return []
        interval = self.settings.interval
        t_w, t_f = self._fractions()
        steps = [s for s in range(1, self.t_f_step + 1) if s % interval == 0 or s == self.t_f_step]
        return [s for s in steps if schedule.threshold(s / max(1, self.total_steps), t_w, t_f, self.settings.threshold) > 0]

    def _fractions(self) -> tuple[float, float]:
        """t_w and t_f as fractions of training, what the threshold schedule runs on (epochs converted in setup)."""
        return self.window["fractions"]["t_w"], self.window["fractions"]["t_f"]

    def _check_schedule_length(self) -> str | None:
        """A run too short for the schedule: too few measurements for the freezing decisions to mean anything."""
        if self.policy not in MEASURING:
            return None
        steps = self.decision_steps()
        if len(steps) >= MIN_DECISIONS:
            return None
        warning = (f"SAFE's schedule gets only {len(steps)} importance measurement(s) that can freeze "
                   f"(steps {steps or 'none'} of {self.total_steps}; window {self.t_w_step}-{self.t_f_step}, every "
                   f"{self.settings.interval} steps): too few for its freezing decisions to mean anything; train longer "
                   f"or lower safe.interval (at least {MIN_DECISIONS} measurements)")
        log.warning(warning)
        return warning

    def _is_measure_step(self, step: int) -> bool:
        """Only where the threshold is above 0: a warm-up measurement could freeze nothing, and the
        decision reads the current measurement alone, so measuring there would only spend probe FLOPs."""
        return bool(self.freezer.active) and step in self._measure_steps

    def _decide(self, step: int) -> dict:
        """Measure importance of the active adapters and choose which to freeze (main process)."""
        start = run_clock.now()
        progress = step / max(1, self.total_steps)
        t = schedule.threshold(progress, *self._fractions(), self.settings.threshold)
        active = self.freezer.active
        importance = self.probe.importance(active)
        finite = [v for v in importance.values() if not math.isnan(v)]
        top = max(finite, default=0.0)
        normalised = {k: (v / top if top > 1e-12 and not math.isnan(v) else float("nan")) for k, v in importance.items()}
        freeze: list[int] = []
        below: list[int] = []
        if t > 0 and top > 1e-12:
            below = [k for k in active if normalised[k] < t]  # NaN compares False: never frozen
            if self.policy == "safe":
                freeze = below
            elif below:  # random: as many as SAFE would freeze now, chosen uniformly among the active
                rng = np.random.default_rng([self.seed, step])
                freeze = sorted(int(k) for k in rng.choice(active, size=len(below), replace=False))
        return {"step": step, "threshold": t, "importance": importance, "normalised": normalised, "freeze": freeze,
                "below": below,
                "flops": self.probe.last_flops, "seconds": run_clock.now() - start}

    def on_step_end(self, ctx: LoopContext, step: int) -> StepUpdate:
        out: dict = {}
        model = None
        if self._pending is not None:  # the reference capture in setup (main process)
            out["method_flops"], out["method_time_s"] = self._pending
            self._pending = None
        if self._is_measure_step(step):
            acc = ctx.accelerator
            decision = self._decide(step) if acc.is_main_process else None
            if acc.num_processes > 1:
                decision = broadcast_object_list([decision], from_process=0)[0]
            froze, model = self._freeze(ctx, decision["freeze"], step)
            self.measurements.append({
                "step": step, "threshold": decision["threshold"], "importance": decision["importance"],
                "normalised": decision["normalised"], "below": decision["below"], "froze": froze,
            })
            metrics = {"safe/threshold": decision["threshold"]}
            for k, v in decision["importance"].items():
                metrics[f"safe/importance/layer{k}"] = v
                metrics[f"safe/importance_normalised/layer{k}"] = decision["normalised"][k]
            metrics["safe/frac_frozen"] = self.freezer.frac_frozen()
            ctx.tracker.log({k: v for k, v in metrics.items() if not math.isnan(v)}, step)
            out.update(metrics)
            out["safe/froze"] = froze
            if acc.is_main_process:  # only the main process ran the probe (FLOPs are summed over processes)
                self.probe_flops += decision["flops"]
                self.probe_seconds += decision["seconds"]
                # Compute spent outside the training forward/backward; added to the run's training FLOPs.
                out["method_flops"] = out.get("method_flops", 0) + decision["flops"]
                out["method_time_s"] = out.get("method_time_s", 0.0) + decision["seconds"]
        grad_bytes = tensor_bytes(p for p in (model or ctx.model).parameters() if p.requires_grad)
        out["safe/frac_frozen"] = self.freezer.frac_frozen()
        out["safe/n_frozen"] = len(self.freezer.frozen)
        out["safe/grad_bytes"] = int(grad_bytes)
        out["safe/optimizer_state_bytes"] = optimizer_state_bytes(ctx.optimizer)
        return StepUpdate(metrics=out, model=model)

    # ------------------------------------------------------------- checkpoint

    def state_dict(self) -> dict:
        return {
            "policy": self.policy,
            "frozen": {str(k): v for k, v in (self.freezer.frozen.items() if self.freezer else [])},
            "measurements": [_jsonable(m) for m in self.measurements],
            "events": self.events,
            "probe_flops": self.probe_flops,
            "probe_seconds": self.probe_seconds,
            "reference_checksum": self.reference_checksum,
        }

    def changed_base_layers(self) -> set[int]:
        return set(self.freezer.merged) if self.freezer is not None else set()

    def load_state_dict(self, state: dict):
        """Re-freeze what was frozen. Runs before the checkpoint's weights and optimizer state
        are loaded, so the optimizer's param groups match those saved (and merged LoRA base
        weights are then overwritten by the saved, merged ones). Returns the re-wrapped model, if any."""
        if not state:
            return None
        if state.get("policy", self.policy) != self.policy:
            raise ConfigError(f"the checkpoint was trained with safe.policy={state['policy']}, not safe.policy={self.policy}")
        frozen = {int(k): int(v) for k, v in state.get("frozen", {}).items()}
        for step in sorted(set(frozen.values())):
            self.freezer.freeze([k for k, s in frozen.items() if s == step], step)
        model = rewrap_ddp(self.ctx.accelerator, self.ctx.model) if frozen else None
        self.measurements = [_from_json(m) for m in state.get("measurements", [])]
        self.events = list(state.get("events", []))
        self.probe_flops = state.get("probe_flops", 0)
        self.probe_seconds = state.get("probe_seconds", 0.0)
        saved = state.get("reference_checksum")
        if saved is not None and self.reference_checksum is not None and not math.isclose(saved, self.reference_checksum, rel_tol=1e-4):
            log.warning("SAFE: the probe's reference representations differ from the original run's "
                        "(checksum %.6g vs %.6g); importances after resuming are not comparable", self.reference_checksum, saved)
        return model

    # ----------------------------------------------------------------- report

    def report(self, ctx: LoopContext, history: list[dict]) -> dict:
        acc = ctx.accelerator
        log.info("SAFE rank %d/%d: frozen %s; trainable checksum %.12e", acc.process_index, acc.num_processes,
                 sorted(self.freezer.frozen.items()), _checksum(ctx.model))
        layers = self.freezer.layers
        freeze_steps = {k: self.freezer.frozen.get(k) for k in layers}
        last_freeze = max((e["step"] for e in self.events), default=None)
        splits = self._budget_splits()
        report = {
            "policy": self.policy,
            "config": dataclasses.asdict(self.settings),
            "adapter_unit": "all adapter modules of one encoder layer",
            "n_adapters": len(layers),
            "n_frozen": len(self.freezer.frozen),
            "merged_layers": sorted(self.freezer.merged),
            "schedule_steps": {"total": self.total_steps, "t_w": self.t_w_step, "t_f": self.t_f_step},
            # t_w / t_f as given (safe.schedule_unit) and in steps, epochs and fractions of this run
            "schedule": self.window,
            "importance": (None if self.policy not in MEASURING else {
                "kind": self.importance_kind, "representation": self.settings.representation,
                "kernel": self.settings.kernel, "score": IMPORTANCE_SCORES[self.importance_kind]}),
            "adapters": {
                f"layer{k}": {
                    "freeze_step": freeze_steps[k],
                    # relative: importance / the largest importance among the adapters active at that step
                    "importance": [{"step": m["step"], "importance": m["importance"][k], "relative": m["normalised"][k]}
                                   for m in self.measurements if k in m["importance"]],
                } for k in layers
            },
            "frac_frozen": _frac_frozen_changes(self.events, len(layers)),
            "threshold": [[m["step"], m["threshold"]] for m in self.measurements],
            "decisions": [{"step": m["step"], "threshold": m["threshold"], "below": m.get("below", []), "froze": m["froze"]}
                          for m in self.measurements],
            "events": self.events,
            "memory": _memory_phases(history, self.events),
            # safe.budget_mode: every micro-batch of optimizer steps 1..until_step split into `splits` chunks; after
            # it only those whose whole forward would exceed the peak so far (the split warm-up's)
            "budget_mode": (_budget_report(history, splits, self.t_f_step, int(self.cfg.trainer.grad_accum_steps))
                            if splits > 1 else None),
            "overhead": {"probe_flops_total": self.probe_flops, "probe_seconds_total": self.probe_seconds,
                         "measurements": len(self.measurements) + (1 if self.probe is not None else 0)},
            "last_freeze_step": last_freeze,
            "schedule_warning": self.schedule_warning,
        }
        if ctx.accelerator.is_main_process:
            try:
                path = freeze_timeline(
                    Path(ctx.output_dir) / TIMELINE_PNG, layers, self.total_steps,
                    [{"step": m["step"], "normalised": m["normalised"]} for m in self.measurements],
                    freeze_steps, [(0, 0.0)] + [(s, f) for s, f in report["frac_frozen"]] + [(self.total_steps, self.freezer.frac_frozen())],
                    [(0, 0.0), (self.t_w_step, 0.0), *report["threshold"]], title=f"SAFE freeze timeline ({self.policy}); grey: frozen, red: freeze step",
                )
                report["timeline_png"] = path.name
                ctx.tracker.log_image("safe/freeze_timeline", path, self.total_steps)
            except Exception as exc:  # a plot must never fail a finished run
                log.warning("SAFE: could not draw the freeze timeline: %s", exc)
        return report


def _checksum(model) -> float:
    """Sum of |w| over trainable parameters: equal on every rank when DDP kept them in sync."""
    return float(sum(p.detach().double().abs().sum() for p in model.parameters() if p.requires_grad))


def _frac_frozen_changes(events: list[dict], n: int) -> list[list]:
    out, count = [], 0
    for e in events:
        count += len(e["layers"])
        out.append([e["step"], count / max(1, n)])
    return out


def _budget_report(history: list[dict], splits: int, until_step: int, accum: int) -> dict:
    """What budget_mode did: the split phase's peak (the budget), and after t_f the peak and how many
    optimizer steps ran a micro-batch split (steps.jsonl's ``chunks``, forward passes per step, above
    ``accum``, its micro-batches)."""
    after = [s for s in history if s["step"] > until_step]
    chunks = [s.get("chunks") for s in after]
    return {"splits": splits, "until_step": until_step,
            "peak_until_bytes": history_peak([s for s in history if s["step"] <= until_step]),
            "peak_after_bytes": history_peak(after), "steps_after": len(after),
            "steps_after_split": None if None in chunks else sum(1 for c in chunks if c > accum)}


def _memory_phases(history: list[dict], events: list[dict]) -> dict:
    """Saved-for-backward (and CUDA) memory before the first and after the last freezing event,
    and the state bytes (gradients, optimizer) at the start and end."""
    def mean(key, steps):
        vals = [s[key] for s in steps if s.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    first = min((e["step"] for e in events), default=None)
    last = max((e["step"] for e in events), default=None)
    before = [s for s in history if first is None or s["step"] <= first]
    after = [s for s in history if last is not None and s["step"] > last]
    out = {
        "saved_for_backward_mean_bytes": mean("saved_bytes", history),
        "saved_for_backward_mean_before_first_freeze_bytes": mean("saved_bytes", before),
        "saved_for_backward_mean_after_last_freeze_bytes": mean("saved_bytes", after),
        "saved_for_backward_peak_after_last_freeze_bytes": history_peak(after),
        "steps_after_last_freeze": len(after),
        "grad_bytes_first_step": history[0].get("safe/grad_bytes") if history else None,
        "grad_bytes_last_step": history[-1].get("safe/grad_bytes") if history else None,
        "optimizer_state_bytes_first_step": history[0].get("safe/optimizer_state_bytes") if history else None,
        "optimizer_state_bytes_peak": history_peak(history, "safe/optimizer_state_bytes"),
        "optimizer_state_bytes_last_step": history[-1].get("safe/optimizer_state_bytes") if history else None,
    }
    if any("cuda_allocated_bytes" in s for s in history):
        out["cuda_allocated_mean_bytes"] = mean("cuda_allocated_bytes", history)
        out["cuda_allocated_mean_after_last_freeze_bytes"] = mean("cuda_allocated_bytes", after)
    return out


def _jsonable(m: dict) -> dict:
    return {**m, "importance": {str(k): v for k, v in m["importance"].items()},
            "normalised": {str(k): v for k, v in m["normalised"].items()}}


def _from_json(m: dict) -> dict:
    return {**m, "importance": {int(k): v for k, v in m["importance"].items()},
            "normalised": {int(k): v for k, v in m["normalised"].items()}}


__all__ = ["SafeMethod", "rewrap_ddp"]
