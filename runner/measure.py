"""Measurements we can trust: saved-for-backward bytes, FLOPs, memory, time.

* ``SavedTensorMeter``: bytes of activations autograd keeps for backward,
  counted with saved-tensor hooks (unique storages, parameters excluded).
* ``FlopMeter``: PyTorch's FLOP counter on the real batch, cached per batch
  shape and trainable set (FLOPs depend on nothing else). We register formulas
  for the CPU flash-attention kernels that the counter misses in torch 2.x.
* ``StepMeter``: the two above plus tokens, loss and time of one optimizer
  step, so the training loop shows the step, not the bookkeeping.
* ``model_state_bytes``, ``cuda_peaks``, ``max_rss_bytes``: parameter,
  gradient and optimizer-state bytes, CUDA peaks and the process's max RSS,
  each under its own name.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import resource
import statistics
import sys
from collections.abc import Hashable

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode
from transformers.modeling_layers import GradientCheckpointingLayer

from runner import run_clock

# ---------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------

_REGISTERED = False


def _cpu_flash_forward_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register_missing_flop_formulas() -> None:
    """Teach the FLOP counter the CPU flash-attention ops SDPA dispatches to.

    Without this, attention matmuls on CPU are silently not counted whenever
    SDPA picks its fused kernel (about 5-10% of an encoder's FLOPs at 128 tokens).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    aten = torch.ops.aten
    registry = flop_counter.flop_registry
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in registry:
        flop_counter.register_flop_formula(fwd)(_cpu_flash_forward_flop)
    if bwd is not None and bwd not in registry:
        flop_counter.register_flop_formula(bwd)(_cpu_flash_backward_flop)
    _REGISTERED = True


class _GlobalOnly:
    """Stands in for FlopCounterMode's ModuleTracker: every op is credited to "Global" alone."""

    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class TotalFlopCounter(FlopCounterMode):
    """PyTorch's FLOP counter (its formulas, its dispatch and decompositions), counting the total only.

    FlopCounterMode also attributes every op to the modules it runs in: a ModuleTracker hooks the
    forward and the backward of every module, which on MiniLM with LoRA is about half of what a
    counted training step costs beyond an uncounted one (0.10 s against 0.05 s here). The runner reads
    only the total, so the tracker is replaced by one that credits everything to "Global"; the count
    is the same (tested against FlopCounterMode on every model family)."""

    def __init__(self):
        register_missing_flop_formulas()
        super().__init__(display=False)
        if hasattr(self, "mod_tracker"):  # the attribute FlopCounterMode (torch 2.x) attributes through
            self.mod_tracker = _GlobalOnly()


def count_flops(fn, *args, **kwargs) -> tuple[object, int]:
    """Run ``fn`` under the FLOP counter; return its result and the FLOPs."""
    with TotalFlopCounter() as counter:
        result = fn(*args, **kwargs)
    return result, int(counter.get_total_flops())


class LengthFit:
    """Values that are exactly quadratic in the sequence length L within a group (a batch's shape
    pattern and the trainable set): learned from the first three lengths of a group, checked on a
    fourth before anything is predicted. A check that fails turns prediction off for good (with a
    warning naming ``what``), so the caller measures every batch from then on."""

    def __init__(self, what: str):
        self.what, self.enabled = what, True
        self._points: dict[Hashable, dict[int, float]] = {}  # group -> {length: value}
        self._checked: set[Hashable] = set()

    def predict(self, group: Hashable, length: int) -> float | None:
        """The value at ``length``, or None while the group is still being learned (measure it)."""
        if not self.enabled or group not in self._checked:
            return None
        return _quadratic(self._points[group], length)

    def learn(self, group: Hashable, length: int, value: float) -> None:
        known = self._points.setdefault(group, {})
        if len(known) < 3:
            known.setdefault(length, value)
        elif group not in self._checked and length not in known:
            if self.check(group, length, value, _quadratic(known, length)):
                self._checked.add(group)

    def state_dict(self) -> dict:
        """What was learned, JSON-ready (groups as nested lists; :meth:`load_state_dict` makes them tuples again)."""
        return {"enabled": self.enabled, "points": [[g, list(p.items())] for g, p in self._points.items()],
                "checked": [g for g in self._points if g in self._checked]}

    def load_state_dict(self, state: dict) -> None:
        self.enabled = bool(state["enabled"])
        self._points = {_tuples(g): {int(x): y for x, y in p} for g, p in state["points"]}
        self._checked = {_tuples(g) for g in state["checked"]}

    def check(self, group: Hashable, length: int, value: float, predicted: float) -> bool:
        """Whether a measured ``value`` matches the prediction; turns prediction off when it does not."""
        if abs(predicted - value) <= 1e-9 * max(abs(value), 1.0):
            return True
        self.enabled = False
        logging.getLogger(__name__).warning(
            "%s are not quadratic in the sequence length here (%.0f measured vs %.0f predicted at length %d); "
            "measuring every batch shape instead", self.what, value, predicted, length)
        return False


class FlopMeter:
    """FLOPs per step, counted on the real batch under ``FlopCounterMode`` the first time a key is seen.

    ``key`` must capture everything FLOPs depend on: input shapes and which parameters are
    trainable (``trainable_signature``). With variable-length batches (dynamic padding) a run
    sees dozens of padded lengths, and counting each costs a slow step. :meth:`context_for`
    therefore counts only the first lengths of each (shape pattern, trainable set): an encoder's
    FLOPs per example are exactly quadratic in the sequence length L (linear layers ~L,
    attention scores ~L^2, the head a constant), so three counted lengths give every other
    length, and a fourth count checks that before any length is predicted (a mismatch turns
    prediction off for the run, with a warning).
    """

    def __init__(self, enabled: bool = True, by_length: bool = True):
        self.enabled = enabled
        self.fit = LengthFit("FLOPs per example")
        self.fit.enabled = by_length
        self.cache: dict[Hashable, int] = {}
        self.counted_steps = 0
        self.predicted_steps = 0

    @property
    def by_length(self) -> bool:
        return self.fit.enabled

    def context(self, key: Hashable):
        """A context manager for one step; read ``.flops`` after it exits."""
        return _FlopStep(self, key)

    def will_count(self, batch: dict, signature: Hashable) -> bool:
        """Whether :meth:`context_for` would run the counter on this batch (nothing cached or predictable)."""
        if not self.enabled or (batch_key(batch), signature) in self.cache:
            return False
        ids = batch.get("input_ids")
        if not self.by_length or ids is None or ids.dim() != 2:
            return True
        n, length = (int(d) for d in ids.shape)
        return self.fit.predict((_shape_pattern(batch, n, length), signature), length) is None

    def context_for(self, batch: dict, signature: Hashable):
        """:meth:`context` for a model batch, predicting FLOPs from counted lengths when it can."""
        key = (batch_key(batch), signature)
        ids = batch.get("input_ids")
        if not (self.enabled and self.by_length) or key in self.cache or ids is None or ids.dim() != 2:
            return _FlopStep(self, key)
        n, length = (int(d) for d in ids.shape)
        group = (_shape_pattern(batch, n, length), signature)
        per_example = self.fit.predict(group, length)
        if per_example is not None:
            self.cache[key] = round(n * per_example)
            self.predicted_steps += 1
            return _FlopStep(self, key)
        return _FlopStep(self, key, on_count=lambda flops: self.fit.learn(group, length, flops / n))


def _shape_pattern(batch: dict, n: int | None, length: int) -> tuple:
    """The batch's tensor shapes with the sequence length (and the batch size ``n``, unless None) abstracted away."""
    def dim(d: int, i: int) -> object:
        return "N" if i == 0 and d == n else ("L" if i == 1 and d == length else d)

    return tuple(sorted((k, tuple(dim(int(d), i) for i, d in enumerate(v.shape)))
                        for k, v in batch.items() if torch.is_tensor(v)))


def _tuples(value):
    """JSON's lists back into the tuples that key the meters' dicts."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _with_rows(pattern: tuple, n: int, rows: int) -> tuple:
    """A :func:`batch_key` or :func:`_shape_pattern` (batch size kept) with its ``n`` examples as ``rows``."""
    return tuple((k, tuple(rows if i == 0 and d == n else d for i, d in enumerate(dims))) for k, dims in pattern)


def _quadratic(points: dict[int, float], x: int) -> float:
    """The quadratic through three (length, value) points, at ``x`` (Lagrange form)."""
    (x0, y0), (x1, y1), (x2, y2) = list(points.items())[:3]
    return (y0 * (x - x1) * (x - x2) / ((x0 - x1) * (x0 - x2)) + y1 * (x - x0) * (x - x2) / ((x1 - x0) * (x1 - x2))
            + y2 * (x - x0) * (x - x1) / ((x2 - x0) * (x2 - x1)))


class _FlopStep:
    def __init__(self, meter: FlopMeter, key: Hashable, on_count=None):
        self.meter, self.key, self.flops, self._mode, self._on_count = meter, key, None, None, on_count
        self.counted = False

    def __enter__(self):
        if self.meter.enabled and self.key not in self.meter.cache:
            self._mode = TotalFlopCounter()
            self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        if self._mode is not None:
            self._mode.__exit__(*exc)
            if exc[0] is None:
                flops = int(self._mode.get_total_flops())
                self.meter.cache[self.key] = flops
                self.meter.counted_steps += 1
                self.counted = True
                if self._on_count is not None:
                    self._on_count(flops)
        self.flops = self.meter.cache.get(self.key) if self.meter.enabled else None
        return False


def batch_key(batch: dict) -> tuple:
    return tuple(sorted((k, tuple(v.shape)) for k, v in batch.items() if torch.is_tensor(v)))


def trainable_signature(model: nn.Module) -> str:
    """Changes whenever the set of trainable parameters (or their shapes) changes; from their names, so
    the same in every process and after a resume (which keeps what :class:`StepMeter` learned)."""
    digest = hashlib.blake2b(digest_size=8)
    for name, p in model.named_parameters():
        if p.requires_grad:
            digest.update(f"{name}{tuple(p.shape)};".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Bytes saved for backward
# ---------------------------------------------------------------------------


class SavedTensorMeter:
    """Bytes of non-parameter tensors saved for backward during a context.

    Each storage is counted once, however many ops save it. Enter around the
    forward pass; everything saved lives until backward, so the total is the
    activation memory that backward needs.

    Under gradient checkpointing (``trainer.gradient_checkpointing``) a
    checkpointed layer saves nothing through autograd: it keeps its inputs and
    recomputes its activations during backward. The meter then counts what
    autograd saves outside those layers plus the inputs each checkpointed layer
    keeps, which is what lives between forward and backward; the transient
    peak of one layer's recomputed activations during backward is not in it.
    """

    def __init__(self, model: nn.Module | None = None, enabled: bool = True):
        self.enabled = enabled
        self.model = model
        self.bytes = 0
        self._seen: set[int] = set()
        self._param_ptrs: set[int] = set()
        self._hooks = None

    def _pack(self, t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or meta tensors
            return t
        if ptr and ptr not in self._seen and ptr not in self._param_ptrs:
            self._seen.add(ptr)
            self.bytes += storage.nbytes()
        return t

    def _checkpoint_inputs(self, module, args, kwargs):
        """A checkpointed layer's tensor inputs (one level of tuples: rotary cos/sin), kept for its recomputation."""
        if torch.is_grad_enabled():
            for value in (*args, *kwargs.values()):
                for t in value if isinstance(value, (tuple, list)) else (value,):
                    if torch.is_tensor(t):
                        self._pack(t)

    def __enter__(self):
        self.bytes = 0
        self._seen = set()
        if self.enabled:
            if self.model is not None:
                self._param_ptrs = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
                self._input_hooks = [m.register_forward_pre_hook(self._checkpoint_inputs, with_kwargs=True)
                                     for m in checkpointed_layers(self.model)]
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
            self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        if self._hooks is not None:
            self._hooks.__exit__(*exc)
            self._hooks = None
        for handle in getattr(self, "_input_hooks", []):
            handle.remove()
        self._input_hooks = []
        self._seen = set()
        return False


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The layers gradient checkpointing recomputes in backward (transformers' ``GradientCheckpointingLayer``)."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and getattr(m, "gradient_checkpointing", False)]


# ---------------------------------------------------------------------------
# One optimizer step's bookkeeping
# ---------------------------------------------------------------------------


class StepMeter:
    """Everything the runner measures about one optimizer step, out of the loop's way: FLOPs
    (:class:`FlopMeter`), bytes saved for backward (:class:`SavedTensorMeter`), real and padded
    tokens, the mean loss over its micro-batches and its wall time. Use::

        with meter.counting(batch, signature):          # forward + backward of one micro-batch
            with meter.saving(batch, signature):        # the forward only
                loss = model(**batch).loss
            backward(loss)
        meter.add(batch, loss)
        ...
        record = meter.end_step()                # once per optimizer step; starts the next one

    Saved-for-backward bytes depend only on the batch's shape and the trainable set, and are
    exactly quadratic in the padded length for a given batch size (:class:`LengthFit`). They are
    measured with saved-tensor hooks on the first batch of each shape and trainable set (so after
    every change of the trainable set too) until three lengths of each (shape pattern, trainable
    set) give every other length, and on every ``check_every``-th micro-batch, which must match
    the prediction (else every batch is measured from then on);
    the other micro-batches get the exact prediction without hooks. ``check_every=1`` measures
    every micro-batch. Each step record says whether it was measured (``measured``: FLOPs
    counted or hooks on), which :func:`measurement_overhead_s` uses.
    """

    def __init__(self, model: nn.Module, count_flops: bool, measure_activations: bool, device: torch.device,
                 check_every: int = 100):
        self.flop_meter = FlopMeter(count_flops)
        self.saved_meter = SavedTensorMeter(model, enabled=measure_activations)
        self.saved_fit = LengthFit("saved-for-backward bytes")  # learned always; steps use it when check_every > 1
        self.count_flops, self.measure_activations, self.device = count_flops, measure_activations, device
        self.check_every = check_every
        self.saved_measured = self.saved_predicted = 0
        self._micro_seen = 0
        self._saved_cache: dict[Hashable, int] = {}  # (batch shape, trainable set) -> bytes measured
        self._reset()

    def state_dict(self) -> dict:
        """What the meter learned about saved-for-backward bytes, JSON-ready, for the checkpoint: a resumed
        run then predicts (and splits SAFE's budget_mode micro-batches) as the uninterrupted one would."""
        return {"saved_cache": [[k, v] for k, v in self._saved_cache.items()], "saved_fit": self.saved_fit.state_dict(),
                "micro_seen": self._micro_seen}

    def load_state_dict(self, state: dict) -> None:
        self._saved_cache = {_tuples(k): v for k, v in state["saved_cache"]}
        self.saved_fit.load_state_dict(state["saved_fit"])
        self._micro_seen = int(state["micro_seen"])

    def _reset(self) -> None:
        self.flops, self.saved, self.tokens, self.loss_sum, self.micro, self.padded_length = 0, 0, 0, 0.0, 0, 0
        self.loss_weight = 0.0
        self.padded_tokens, self.measured = 0, False
        self.started = run_clock.now()

    @contextlib.contextmanager
    def counting(self, batch: dict, signature: Hashable):
        with self.flop_meter.context_for(batch, signature) as fl:
            yield
        self.flops += fl.flops or 0
        self.measured |= fl.counted

    @contextlib.contextmanager
    def saving(self, batch: dict | None = None, signature: Hashable = None):
        """Around the forward: the bytes it saves for backward, measured or predicted (see the class)."""
        if not self.measure_activations:
            yield
            return
        self._micro_seen += 1
        group, length, predicted = self._saved_prediction(batch, signature)
        if predicted is not None and self._micro_seen % self.check_every:
            yield
            self.saved = max(self.saved, round(predicted))
            self.saved_predicted += 1
            return
        with self.saved_meter:
            yield
        measured = self.saved_meter.bytes
        self.saved, self.measured = max(self.saved, measured), True
        self.saved_measured += 1
        if predicted is not None:
            self.saved_fit.check(group, length, measured, predicted)
        elif group is not None:
            self.saved_fit.learn(group, length, measured)
            self._saved_cache[(batch_key(batch), signature)] = measured

    def _saved_prediction(self, batch: dict | None, signature: Hashable) -> tuple:
        """(group, padded length, predicted bytes or None) of a batch."""
        ids = batch.get("input_ids") if batch is not None else None
        if ids is None or ids.dim() != 2:
            return None, None, None
        length = int(ids.shape[1])
        group = (_shape_pattern(batch, None, length), signature)
        if not self.saved_fit.enabled or self.check_every <= 1:  # check_every 1: measure every micro-batch
            return group, length, None
        return group, length, self._measured_or_fitted(batch_key(batch), group, length)

    def _measured_or_fitted(self, key: tuple, group: tuple, length: int) -> float | None:
        """The bytes measured for this very shape (``key``) with this trainable set, else the fit's for its
        (shape pattern, trainable set) ``group`` at ``length``; None while neither knows."""
        known = self._saved_cache.get((key, group[1]))
        return known if known is not None else self.saved_fit.predict(group, length)

    def predict_saved(self, batch: dict, signature: Hashable, rows: int | None = None) -> float | None:
        """The bytes a forward of ``batch`` would save for backward, without running it; None while
        unknown. Exact for a shape measured before or a learned (shape pattern, trainable set); else,
        given ``rows``, from ``rows``-example chunks (split micro-batches) of the batch's padded length,
        measured or learned, scaled by its examples: every activation has one row per example (on
        MiniLM with LoRA the scaled value is within 1e-7 of the measured one, a few bytes above it)."""
        ids = batch.get("input_ids")
        if not self.measure_activations or ids is None or ids.dim() != 2:
            return None
        n, length = (int(d) for d in ids.shape)
        key, pattern = batch_key(batch), _shape_pattern(batch, None, length)
        whole = self._measured_or_fitted(key, (pattern, signature), length)
        if whole is not None or rows is None:
            return whole
        chunk = self._measured_or_fitted(_with_rows(key, n, rows), (_with_rows(pattern, n, rows), signature), length)
        return None if chunk is None else chunk * n / rows

    def will_measure(self, batch: dict, signature: Hashable) -> bool:
        """Whether the next micro-batch, ``batch``, will be measured (FLOPs counted or saved-tensor hooks on):
        the loop runs those on the eager module when the model is compiled (``trainer.compile``)."""
        if self.flop_meter.will_count(batch, signature):
            return True
        if not self.measure_activations:
            return False
        return self._saved_prediction(batch, signature)[2] is None or (self._micro_seen + 1) % self.check_every == 0

    def add(self, batch: dict, loss: torch.Tensor, weight: float = 1.0) -> None:
        """One micro-batch done, or a chunk of one (``weight``: its share of the micro-batch's examples;
        the chunks of a micro-batch add up to 1, so the step's loss is the mean over micro-batches as
        without splitting)."""
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.padded_length = max(self.padded_length, batch["input_ids"].shape[-1])
        self.padded_tokens += batch["input_ids"].numel()
        self.loss_sum += weight * loss.detach().float().item()
        self.loss_weight += weight
        self.micro += 1  # micro-batches and chunks seen in this step

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.loss_weight if self.loss_weight else 0.0

    def end_step(self) -> dict:
        """This step's measurements (``step_time_s`` up to now, after the device has finished); resets for the next."""
        sync(self.device)
        record = {
            "loss": self.mean_loss, "step_time_s": run_clock.now() - self.started,
            "flops": self.flops if self.count_flops else None,
            "saved_bytes": self.saved if self.measure_activations else None,
            "tokens": self.tokens, "padded_length": self.padded_length, "padded_tokens": self.padded_tokens,
            "measured": self.measured, "chunks": self.micro,
        }
        if self.device.type == "cuda":
            record["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated(self.device))
        self._reset()
        return record


def history_peak(steps: list[dict], key: str = "saved_bytes"):
    """The largest ``key`` over step records (``steps.jsonl``'s, the loop's history) that have one; None
    when none has."""
    return max((s[key] for s in steps if s.get(key) is not None), default=None)


def measurement_overhead_s(steps: list[dict]) -> float | None:
    """An estimate of the wall time measuring cost: for each step that was measured (FLOPs counted
    or saved-tensor hooks on), its time minus what an unmeasured step takes per padded token (the
    median over unmeasured steps) times its padded tokens. None when no step went unmeasured."""
    rates = [s["step_time_s"] / s["padded_tokens"] for s in steps
             if not s.get("measured") and s.get("padded_tokens")]
    if not rates:
        return None
    rate = statistics.median(rates)
    return float(sum(max(0.0, s["step_time_s"] - rate * s["padded_tokens"]) for s in steps
                     if s.get("measured") and s.get("padded_tokens")))


# ---------------------------------------------------------------------------
# Memory and time
# ---------------------------------------------------------------------------


def max_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def tensor_bytes(tensors) -> int:
    """Bytes of the given tensors (non-tensors skipped): the one place the runner counts them."""
    return int(sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t)))


def optimizer_state_tensors(state: dict) -> list[torch.Tensor]:
    """The tensors of one parameter's optimizer state (AdamW's moments; scalar step counters excluded)."""
    return [v for v in state.values() if torch.is_tensor(v) and v.dim() > 0]


def inner_optimizer(optimizer):
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` (or itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of an optimizer's state (Accelerate's wrapper unwrapped)."""
    opt = inner_optimizer(optimizer)
    return tensor_bytes(t for s in opt.state.values() for t in optimizer_state_tensors(s))


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, int]:
    params = list(model.parameters())
    return {
        "param_bytes": tensor_bytes(params),
        "trainable_param_bytes": tensor_bytes(p for p in params if p.requires_grad),
        "grad_bytes": tensor_bytes(p.grad for p in params if p.grad is not None),
        "optimizer_state_bytes": optimizer_state_bytes(optimizer) if optimizer is not None else 0,
    }


def cuda_peaks(device: torch.device) -> dict[str, int]:
    if device.type != "cuda":
        return {}
    return {
        "cuda_peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
        "cuda_peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
    }


def reset_cuda_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_peak_and_reset(device: torch.device) -> int:
    peak = int(torch.cuda.max_memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)
    return peak


class PhaseTimer:
    """Wall time per named phase (setup, train, eval, ...), accumulated; a phase entered inside another
    is also kept as nested time, so the outer one can be reported without it (``without``).

    On a CUDA device it also keeps each phase's peak allocated GPU memory (``peak_bytes``): the peak
    since the last phase boundary is read (and reset) at every boundary and credited to every phase
    open at that moment, so an outer phase's peak includes its inner phases' and an inner phase's
    excludes what came before it. ``peak_reader`` (device -> bytes since the last call) replaces
    the CUDA counters in tests."""

    def __init__(self, peak_reader=None):
        self.seconds: dict[str, float] = {}
        self.nested: dict[tuple[str, str], float] = {}  # (outer, inner) -> seconds of inner spent inside outer
        self.peak_bytes: dict[str, int] = {}
        self._open: list[tuple[str, float]] = []  # the open phases, outermost first, with their starts (run_clock.now)
        self._peak_reader = peak_reader
        self._paused_from, self._paused_before = run_clock.paused_s(), 0.0  # pauses: this process's, a resumed run's

    @property
    def paused_s(self) -> float:
        """Seconds the run stood paused by SIGTSTP (``runner.run_clock``), left out of every phase; a resumed
        run's include the interrupted one's."""
        return self._paused_before + run_clock.paused_s() - self._paused_from

    def _boundary(self, device: torch.device | None) -> None:
        reader = self._peak_reader or (_cuda_peak_and_reset if device is not None and device.type == "cuda" else None)
        if reader is None or device is None:
            return
        peak = int(reader(device))
        for name, _ in self._open:
            self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), peak)

    @contextlib.contextmanager
    def phase(self, name: str, device: torch.device | None = None):
        if device is not None:
            sync(device)
        self._boundary(device)
        start = run_clock.now()
        self._open.append((name, start))
        try:
            yield
        finally:
            if device is not None:
                sync(device)
            self._boundary(device)
            self._open.pop()
            elapsed = run_clock.now() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            for outer in {n for n, _ in self._open} - {name}:
                self.nested[(outer, name)] = self.nested.get((outer, name), 0.0) + elapsed

    def state_dict(self) -> dict:
        """The seconds so far, open phases up to now (a checkpoint taken inside ``train`` carries its time):
        what :meth:`load_state_dict` adds to a resumed run's timer."""
        now = run_clock.now()
        seconds = dict(self.seconds)
        for name, start in self._open:
            seconds[name] = seconds.get(name, 0.0) + now - start
        return {"seconds": seconds, "nested": [[outer, inner, v] for (outer, inner), v in self.nested.items()],
                "paused_s": self.paused_s}

    def load_state_dict(self, state: dict) -> None:
        """Add an interrupted run's phase times (from :meth:`state_dict`) to this one's."""
        for name, value in (state.get("seconds") or {}).items():
            self.seconds[name] = self.seconds.get(name, 0.0) + float(value)
        for outer, inner, value in state.get("nested") or []:
            self.nested[(outer, inner)] = self.nested.get((outer, inner), 0.0) + float(value)
        self._paused_before += float(state.get("paused_s", 0.0))

    def without(self, outer: str, *inner: str) -> float:
        """Seconds of ``outer`` less the time its ``inner`` phases took inside it (not the ones outside it)."""
        return self.seconds.get(outer, 0.0) - sum(self.nested.get((outer, i), 0.0) for i in inner)
