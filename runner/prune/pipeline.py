"""Score once, then prune and measure every (criterion, ratio).

Reading order: :func:`run_pruning` -> data (:class:`PruneData`) -> the
unpruned :class:`Reference` -> :func:`score_heads` (calibration pass, alpha)
-> for each criterion and ratio, :class:`MaskEvaluator` (select, remove heads
physically, evaluate, count FLOPs, time) -> :func:`write_artifacts` (files,
plots) -> W&B. Returns the ``pruning`` section of results.json.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from runner import measure, run_clock
from runner.atomic_io import atomic_write_json
from runner.preflight.errors import ConfigError
from runner.prune import plots, quality
from runner.prune.gate import HeadGate, geometry, unwrap_peft
from runner.prune.persist import save_pruned
from runner.prune.physical import count_parameters, heads_kept, prune_heads
from runner.prune.scores import (
    CalibrationScores, calibration_scores, criterion_scores, hies_scores, magnitude_scores, ranking_agreement,
)
from runner.prune.select import mask_to_dict, select_heads_to_prune
from runner.prune.settings import Pruning

log = logging.getLogger(__name__)



@dataclass
class PruneInputs:
    """What the pipeline needs from a job (after training, or a saved run)."""

    model: nn.Module  # fine-tuned; PEFT-wrapped models are merged
    tokenizer: object
    task: DictConfig
    data: object  # runner.data.TaskData (raw splits)
    max_seq_length: int
    eval_batch_size: int
    train_batch_size: int
    output_dir: Path
    device: torch.device
    tracker: object | None = None
    step: int = 0
    data_cache_dir: Path | None = None
    source_run: str | None = None


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


MIN_HOLDOUT = 16  # fewer examples cannot rank alphas


def dev_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """``prune.alpha_split=dev_half``: the eval split's ``n`` examples halved by a permutation seeded with
    ``seed`` (``numpy.random.default_rng(seed).permutation(n)``): its first ``n // 2`` are the half alpha is
    chosen on, the other ``n - n // 2`` the half every result is reported on; each in dataset order."""
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[: n // 2]), sorted(int(i) for i in order[n // 2:])


class PruneData:
    """Tokenised eval split, calibration and held-out slices of the training split.

    The calibration examples are drawn from the training split with
    ``prune.seed`` (under both alpha protocols). ``prune.alpha_split``:

    * ``train_holdout``: the alpha hold-out (``prune.alpha=auto``) is drawn from
      the examples fine-tuning held out (``task.holdout_samples``) when the run
      has them, else from the rest of the training split, disjoint from the
      calibration examples but seen in fine-tuning (``holdout_source`` says
      which). The whole eval split is used only to report results.
    * ``dev_half``: the eval split is halved (:func:`dev_halves`); alpha is chosen
      on one half (``holdout_source`` ``dev_half``), ``self.eval`` is the other
      half and everything is reported on it.

    ``split`` describes which examples were reported on (results.json's ``pruning.alpha_split``).
    """

    def __init__(self, inputs: PruneInputs, s: Pruning):
        self.quality = quality.for_task(inputs.task, inputs.tokenizer, inputs.max_seq_length, inputs.data_cache_dir,
                                        getattr(inputs.data, "choices", None))
        self.collator = self.quality.collator
        self.eval_split, eval_raw = next(iter(inputs.data.evals.items()))
        full_eval = self.quality.tokenize(eval_raw)
        train = self.quality.tokenize(inputs.data.train)
        self.train = train
        n_train = len(train)
        choosing = s.alpha_auto and "hies" in s.compare
        if s.calib_samples > n_train:
            raise ConfigError(f"prune.calib_samples={s.calib_samples} exceeds the {n_train} training examples")
        order = np.random.default_rng(s.seed).permutation(n_train)
        self.calib_indices = sorted(int(i) for i in order[: s.calib_samples])
        self.eval, choose = self._split_eval(full_eval, s, choosing)
        if not choosing:
            self.holdout_source, self.holdout_pool, pick = None, train, []
        elif s.alpha_split == "dev_half":
            self.holdout_source, self.holdout_pool, pick = "dev_half", full_eval, choose  # the choosing half
        else:
            self.holdout_source, self.holdout_pool, pick = self._training_holdout(inputs, s, train, order)
        self.holdout_indices = sorted(int(i) for i in pick)
        self.eval_batch_size = inputs.eval_batch_size
        self.train_batch_size = inputs.train_batch_size
        self._eval = self._holdout = None

    def _split_eval(self, full_eval, s: Pruning, choosing: bool):
        """(the reported eval examples, the dev half alpha is chosen on or []); sets ``self.split``."""
        n = len(full_eval)
        self.split = {"protocol": s.alpha_split, "eval_split": self.eval_split, "eval_examples": n}
        if s.alpha_split == "train_holdout":
            self.split.update(report_examples=n, choose_examples=0)
            return full_eval, []
        need = 2 * MIN_HOLDOUT if choosing else 2
        if n < need:
            raise ConfigError(f"prune.alpha_split=dev_half needs at least {need} {self.eval_split} examples to halve"
                              f"{f' ({MIN_HOLDOUT} to choose alpha on)' if choosing else ''}; got {n}")
        choose, report = dev_halves(n, s.seed)
        if not choosing:
            log.info("prune.alpha_split=dev_half with no alpha to choose (a fixed alpha, or no hies): reporting on %d "
                     "of the %d %s examples (the half an alpha=auto run reports on); the other half is unused",
                     len(report), n, self.eval_split)
        self.split.update(seed=s.seed, choose_examples=len(choose), report_examples=len(report), alpha_chosen_here=choosing,
                          choose_indices=choose, report_indices=report)
        return full_eval.select(report), choose

    def _training_holdout(self, inputs: PruneInputs, s: Pruning, train, order):
        """``train_holdout``: (source, pool, indices) of the alpha hold-out among the training examples."""
        reserved = getattr(inputs.data, "holdout", None)
        if reserved is not None and len(reserved) >= MIN_HOLDOUT:  # task.holdout_samples: never trained on
            pool = self.quality.tokenize(reserved)
            return "reserved", pool, np.random.default_rng(s.seed).permutation(len(reserved))[: s.alpha_holdout_samples]
        pick = order[s.calib_samples: s.calib_samples + s.alpha_holdout_samples]  # seen in fine-tuning
        if len(pick) < MIN_HOLDOUT:
            raise ConfigError(
                f"prune.alpha=auto needs held-out training examples beyond the {s.calib_samples} calibration ones; "
                f"only {len(pick)} left of {len(train)}"
            )
        log.warning("prune.alpha=auto: the fine-tuned model saw these %d hold-out examples in training "
                    "(fine-tune with task.holdout_samples=%d to keep them unseen)", len(pick), s.alpha_holdout_samples)
        return "training", train, pick

    def loader(self, ds, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        return DataLoader(ds.with_format("torch"), batch_size=batch_size, shuffle=shuffle, collate_fn=self.collator,
                          generator=g if shuffle else None)

    def calibration(self, batch_size: int) -> DataLoader:
        return self.loader(self.train.select(self.calib_indices), batch_size)

    def holdout(self) -> list[dict]:
        if self._holdout is None:  # collated once, reused by every evaluation
            self._holdout = list(self.loader(self.holdout_pool.select(self.holdout_indices), self.eval_batch_size))
        return self._holdout

    def evaluation(self) -> list[dict]:
        if self._eval is None:
            self._eval = list(self.loader(self.eval, self.eval_batch_size))
        return self._eval

    def fixed_batches(self, batch_size: int, n_examples: int) -> list[dict]:
        """The first ``n_examples`` eval examples in batches of ``batch_size`` (labels dropped)."""
        ds = self.eval.select(range(min(n_examples, len(self.eval))))
        return [{k: v for k, v in b.items() if k != "labels"} for b in self.loader(ds, batch_size)]


# ---------------------------------------------------------------------------
# Evaluation, stability, FLOPs, latency
# ---------------------------------------------------------------------------


def forward_flops(model: nn.Module, batch: dict, device) -> int:
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        _, flops = measure.count_flops(lambda: model(**batch))
    return flops


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op threads (None: leave torch's setting)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _time_once(model: nn.Module, batch: dict, device) -> float:
    measure.sync(device)
    start = run_clock.now()
    model(**batch)
    measure.sync(device)
    return run_clock.now() - start


@torch.inference_mode()
def compare_latency(reference: nn.Module, pruned: nn.Module, batches: list[dict], repeats: int, device,
                    warmup: int = 1) -> dict:
    """Interleaved timing of the unpruned and the pruned model on the same batches.

    Every batch is run by both models back to back, alternating which goes
    first, ``repeats`` times; so a slow spell of a shared CPU hits both alike.
    ``ratio`` is the median over all these (batch, repetition) pairs of
    pruned time / unpruned time; each model's median time per pass over the
    batches (sum over batches of each batch's median) is reported too.
    """
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    reference.eval()
    pruned.eval()
    for _ in range(warmup):
        for b in batches:
            _time_once(reference, b, device)
            _time_once(pruned, b, device)
    ref_t = np.zeros((repeats, len(batches)))
    pr_t = np.zeros((repeats, len(batches)))
    for r in range(repeats):
        for i, b in enumerate(batches):
            if (r + i) % 2 == 0:
                ref_t[r, i] = _time_once(reference, b, device)
                pr_t[r, i] = _time_once(pruned, b, device)
            else:
                pr_t[r, i] = _time_once(pruned, b, device)
                ref_t[r, i] = _time_once(reference, b, device)
    n = sum(int(b["input_ids"].shape[0]) for b in batches)
    ratios = (pr_t / ref_t).reshape(-1)
    ref_pass = float(np.median(ref_t, axis=0).sum())
    pr_pass = float(np.median(pr_t, axis=0).sum())
    return {
        "batch_size": int(batches[0]["input_ids"].shape[0]),
        "examples": n,
        "batches": len(batches),
        "repeats": repeats,
        "unpruned_pass_s": ref_pass,
        "pruned_pass_s": pr_pass,
        "unpruned_ms_per_example": 1000 * ref_pass / n,
        "pruned_ms_per_example": 1000 * pr_pass / n,
        "ratio": float(np.median(ratios)),
        "ratio_of_medians": pr_pass / ref_pass,
        "ratio_q25": float(np.quantile(ratios, 0.25)),
        "ratio_q75": float(np.quantile(ratios, 0.75)),
    }


def recover(model: nn.Module, data: PruneData, steps: int, lr: float, seed: int, device) -> dict:
    """Optional recovery fine-tuning of a pruned model: all weights, AdamW, ``steps`` steps on the train split."""
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loader = data.loader(data.train, data.train_batch_size, shuffle=True, seed=seed)
    done, losses = 0, []
    while done < steps:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            done += 1
            if done >= steps:
                break
    model.eval()
    return {"steps": done, "lr": lr, "final_loss": float(np.mean(losses[-10:])) if losses else None}


# ---------------------------------------------------------------------------
# Scoring and alpha
# ---------------------------------------------------------------------------


def _auc(ratios: list[float], values: list[float]) -> float:
    """Mean quality over the ratio range (trapezoid area divided by its width)."""
    x = np.asarray(ratios, dtype=float)
    y = np.asarray(values, dtype=float)
    if len(x) == 1:
        return float(y[0])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def choose_alpha(model: nn.Module, calib: CalibrationScores, data: PruneData, s: Pruning, task, device) -> dict:
    """Pick alpha by the area under the quality-vs-ratio curve on held-out examples: training examples
    (``prune.alpha_split=train_holdout``) or the choosing half of the eval split (``dev_half``).

    For every alpha in ``prune.alpha_grid`` the heads are ranked by HIES and
    gated off (gate 0, which equals physical removal) at each of
    ``prune.alpha_ratios``; the main metric on the hold-out slice, with the
    unpruned value at ratio 0, gives the curve. The alpha with the largest
    area wins; ties go to the larger area under the stability curve, then to
    the alpha closest to 0.5.
    """
    start = run_clock.now()
    loader, q = data.holdout(), data.quality
    base = q.outputs(model, loader, device, choices=False)
    base_metric = q.selection(q.metrics(base, [task.main_metric]))
    cache: dict[bytes, tuple[float, float]] = {}
    table = []
    with HeadGate(model) as gate:
        for a in s.alpha_grid:
            scores = hies_scores(calib.his, calib.entropy, a)
            metrics, stabs = [], []
            for r in s.alpha_ratios:
                pruned = select_heads_to_prune(scores, r, s.min_heads_per_layer)
                key = pruned.numpy().tobytes()
                if key not in cache:
                    gate.set((~pruned).float())
                    out = q.outputs(model, loader, device, choices=False)
                    cache[key] = (q.selection(q.metrics(out, [task.main_metric])), q.stability(out, base))
                metrics.append(cache[key][0])
                stabs.append(cache[key][1])
            xs = [0.0, *s.alpha_ratios]
            table.append({
                "alpha": a, "metrics": metrics, "stability": stabs,
                "auc": _auc(xs, [base_metric, *metrics]), "stability_auc": _auc(xs, [1.0, *stabs]),
            })
    best = max(table, key=lambda t: (np.nan_to_num(t["auc"], nan=-np.inf), np.nan_to_num(t["stability_auc"], nan=-np.inf),
                                     -abs(t["alpha"] - 0.5)))
    return {
        "alpha": best["alpha"], "table": table, "ratios": list(s.alpha_ratios), "holdout_examples": len(data.holdout_indices),
        "holdout_source": data.holdout_source, "alpha_split": s.alpha_split,
        "holdout_unpruned_metric": base_metric, "metric": "-loss" if isinstance(q, quality.LanguageModel) else task.main_metric,
        "evaluations": len(cache),
        "time_s": run_clock.now() - start,
    }


def score_heads(model: nn.Module, data: PruneData, s: Pruning, task, device) -> tuple[dict, dict, dict]:
    """Score maps for every compared criterion; returns (maps, extra maps, scoring report)."""
    geo = geometry(model)
    shape = (geo.num_layers, geo.num_heads)
    report: dict = {"calib_examples": 0, "time_s": 0.0}
    calib = None
    extra: dict = {}
    if s.needs_calibration:
        entropy = any(c in ("hies", "entropy") for c in s.compare)  # else no attention probabilities: the model's own kernel
        calib = calibration_scores(model, data.calibration(s.calib_batch_size), normalize_layers=s.normalize_layers,
                                   device=device, his_per=s.his_per, entropy=entropy)
        report.update({
            "calib_examples": calib.examples, "calib_tokens": calib.tokens, "calib_batches": calib.batches,
            "calib_batch_size": s.calib_batch_size, "time_s": calib.seconds,
            "attn_implementation": "eager" if entropy else model.config._attn_implementation,
            "normalize_layers": s.normalize_layers,
            "what": "one pass: forward (eager attention, gate at 1) and backward to the gate, HIS and AE together" if entropy
            else "one pass: forward (the model's attention kernel, gate at 1) and backward to the gate, HIS only",
        })
        # his_agreement: the HIS ranking against the other his_per variant from the same pass (both layer-
        # normalised if asked): Spearman's rho over all heads, and how many of the `lowest` heads each would
        # prune first at prune.ratio (global ranking) they share.
        report["his_per"] = calib.his_per
        report["his_agreement"] = {"other": "batch" if calib.his_per == "example" else "example", "ratio": s.ratio,
                                   **ranking_agreement(calib.his, calib.his_other, s.ratio)}
        extra = {"his_raw": calib.his_raw, **({"attention_entropy": calib.entropy} if entropy else {})}
    magnitude = None
    if "magnitude" in s.compare:
        t0 = run_clock.now()
        magnitude = magnitude_scores(model)
        report["magnitude_time_s"] = run_clock.now() - t0
    alpha = s.alpha
    if "hies" in s.compare and s.alpha_auto:
        auto = choose_alpha(model, calib, data, s, task, device)
        alpha = auto["alpha"]
        report["alpha_auto"] = auto
        report["alpha_auto_time_s"] = auto["time_s"]
    report["alpha"] = alpha
    maps = {c: criterion_scores(c, calib=calib, magnitude=magnitude, shape=shape, alpha=alpha, seed=s.seed)
            for c in s.compare}
    return maps, extra, report


# ---------------------------------------------------------------------------
# The whole stage
# ---------------------------------------------------------------------------


@dataclass
class Reference:
    """The unpruned model's numbers every pruned model is compared with."""

    outputs: quality.Outputs
    metrics: dict
    flops_batch: dict
    flops: int
    params: int
    latency_batches: dict  # batch size -> fixed batches


def measure_reference(model: nn.Module, data: PruneData, s: Pruning, task, device) -> Reference:
    out = data.quality.outputs(model, data.evaluation(), device)
    flops_batch = data.fixed_batches(s.flops_batch_size, s.flops_batch_size)[0]
    return Reference(
        outputs=out, metrics=data.quality.metrics(out), flops_batch=flops_batch,
        flops=forward_flops(model, flops_batch, device), params=count_parameters(model),
        latency_batches={bs: data.fixed_batches(bs, s.latency_examples) for bs in s.latency_batch_sizes},
    )


class MaskEvaluator:
    """Prunes a copy of the model by one mask and measures it (quality, stability, FLOPs, latency);
    a mask already measured is reused (criteria that agree at a ratio cost one evaluation)."""

    def __init__(self, model: nn.Module, ref: Reference, data: PruneData, s: Pruning, inputs: PruneInputs, scoring: dict):
        self.model, self.ref, self.data, self.s, self.inputs, self.scoring = model, ref, data, s, inputs, scoring
        self.geo = geometry(model)
        self.eval_loader = data.evaluation()
        self.by_mask: dict[bytes, dict] = {}
        self.flops_by_layout: dict[tuple, int] = {}
        self.saved_model: Path | None = None

    def mask(self, maps: dict, crit: str, ratio: float) -> torch.Tensor:
        if crit == "none":
            return torch.zeros(self.geo.num_layers, self.geo.num_heads, dtype=torch.bool)
        return select_heads_to_prune(maps[crit], ratio, self.s.min_heads_per_layer)

    def evaluate(self, crit: str, ratio: float, pruned_mask: torch.Tensor) -> dict:
        s = self.s
        timed = (s.latency == "all" or (s.latency == "primary" and crit == s.criterion)) and (
            s.latency_ratios is None or ratio in s.latency_ratios)
        save = s.save_model == "primary" and crit == s.criterion and ratio == s.ratio and crit != "none"
        key = pruned_mask.numpy().tobytes()
        cached = self.by_mask.get(key)
        if cached is not None and not save and (not timed or cached.get("latency")) and not s.recovery_finetune:
            return {**copy.deepcopy(cached), "criterion": crit, "ratio": ratio,
                    "latency": copy.deepcopy(cached["latency"]) if timed else None}
        pruned = prune_heads(copy.deepcopy(self.model), pruned_mask) if bool(pruned_mask.any()) else copy.deepcopy(self.model)
        record = self._measure(pruned, crit, ratio, pruned_mask)
        if timed:
            with torch_threads(s.latency_threads):
                record["latency"] = {
                    f"bs{bs}": {**compare_latency(self.model, pruned, batches, s.latency_repeats, self.inputs.device),
                                "threads": torch.get_num_threads()}
                    for bs, batches in self.ref.latency_batches.items()
                }
        if save:
            self.saved_model = save_pruned(pruned, Path(self.inputs.output_dir) / "pruning" / f"model_{crit}_r{ratio}",
                                           self.inputs.tokenizer, extra={
                "criterion": crit, "ratio": ratio, "alpha": self.scoring.get("alpha"), "source_run": self.inputs.source_run,
                "attn_implementation": self.model.config._attn_implementation,
            })
        self.by_mask[key] = record
        return record

    def _measure(self, pruned: nn.Module, crit: str, ratio: float, pruned_mask: torch.Tensor) -> dict:
        s, ref, task, device, geo = self.s, self.ref, self.inputs.task, self.inputs.device, self.geo
        recovery = None
        if s.recovery_finetune and bool(pruned_mask.any()):
            recovery = recover(pruned, self.data, s.recovery_steps, s.recovery_lr, s.seed, device)
        q = self.data.quality
        out = q.outputs(pruned, self.eval_loader, device)
        metrics = q.metrics(out)
        layout = tuple(heads_kept(pruned))
        if layout not in self.flops_by_layout:
            self.flops_by_layout[layout] = forward_flops(pruned, ref.flops_batch, device)
        flops = self.flops_by_layout[layout]
        params = count_parameters(pruned)
        n_pruned = int(pruned_mask.sum())
        return {
            "criterion": crit, "ratio": ratio,
            "heads_pruned": n_pruned, "heads_kept": geo.total_heads - n_pruned,
            "heads_kept_ratio": (geo.total_heads - n_pruned) / geo.total_heads,
            "heads_per_layer": list(layout), "pruned_heads": {str(k): v for k, v in mask_to_dict(pruned_mask).items()},
            "metrics": metrics, "main_metric": metrics[task.main_metric],
            "stability": q.stability(out, ref.outputs),
            "params": params, "params_ratio": params / ref.params,
            "flops": flops, "flops_ratio": flops / ref.flops,
            "latency": None, "recovery": recovery,
        }


def _evaluate_every_mask(evaluator: MaskEvaluator, maps: dict, s: Pruning, task) -> tuple[list[dict], dict]:
    """(a record per (criterion, ratio), the primary ratio's mask per criterion)."""
    records, primary_masks = [], {}
    for crit in s.compare:
        for ratio in s.ratios:
            pruned_mask = evaluator.mask(maps, crit, ratio)
            if ratio == s.ratio:
                primary_masks[crit] = pruned_mask.numpy()
            record = evaluator.evaluate(crit, ratio, pruned_mask)
            records.append(record)
            last = f"bs{s.latency_batch_sizes[-1]}"
            log.info("pruning: %-9s ratio %.2f  %s=%.4f  stability=%.4f  flops x%.3f%s", crit, ratio,
                     task.main_metric, record["main_metric"], record["stability"], record["flops_ratio"],
                     f"  latency({last}) x{record['latency'][last]['ratio']:.3f}" if record["latency"] else "")
    return records, primary_masks


def run_pruning(inputs: PruneInputs, s: Pruning) -> dict:
    """Score once, then for every (criterion, ratio): prune, measure; then files, plots, W&B.
    Returns the ``pruning`` section of results.json."""
    t_start, paused_before = run_clock.now(), run_clock.paused_s()
    task, device = inputs.task, inputs.device
    if device.type == "cuda":  # the stage's own peak (results.json pruning.cuda_peak_bytes)
        torch.cuda.reset_peak_memory_stats(device)
    out_dir = Path(inputs.output_dir) / "pruning"
    out_dir.mkdir(parents=True, exist_ok=True)
    model = unwrap_peft(inputs.model).to(device).eval()
    geometry(model)  # refuses unsupported architectures with a clear message
    for p in model.parameters():
        p.requires_grad_(False)
    data = PruneData(inputs, s)
    ref = measure_reference(model, data, s, task, device)
    log.info("pruning: unpruned %s=%.4f on %d %s examples (alpha_split=%s); scoring %s", task.main_metric,
             ref.metrics[task.main_metric], ref.outputs.examples, data.eval_split, s.alpha_split, ", ".join(s.compare))
    maps, extra_maps, scoring = score_heads(model, data, s, task, device)

    evaluator = MaskEvaluator(model, ref, data, s, inputs, scoring)
    records, primary_masks = _evaluate_every_mask(evaluator, maps, s, task)

    artifacts = write_artifacts(out_dir, inputs, s, evaluator.geo, maps, extra_maps, scoring, primary_masks, records, ref, data)
    artifacts["model"] = str(evaluator.saved_model) if evaluator.saved_model else None
    section = {
        "criterion": s.criterion,
        "ratio": s.ratio,
        "ratios": list(s.ratios),
        "compare": list(s.compare),
        "alpha": scoring.get("alpha"),
        "source_run": inputs.source_run,
        "eval_split": data.eval_split,
        "eval_examples": ref.outputs.examples,  # the examples (LM: blocks) reported on (dev_half: the reporting half)
        "alpha_split": data.split,
        "stability_definition": data.quality.stability_definition,
        "model": {**dataclasses.asdict(evaluator.geo), "total_heads": evaluator.geo.total_heads,
                  "attn_implementation": model.config._attn_implementation},
        "unpruned": {
            "metrics": ref.metrics, "main_metric": ref.metrics[task.main_metric], "params": ref.params,
            "flops": ref.flops, "flops_batch_shape": list(ref.flops_batch["input_ids"].shape),
        },
        "scoring": scoring,
        "primary": next(r for r in records if r["criterion"] == s.criterion and r["ratio"] == s.ratio),
        "results": records,
        "settings": s.as_record(),
        "artifacts": artifacts,
        "time_s": run_clock.now() - t_start,
        "paused_s": run_clock.paused_s() - paused_before,  # SIGTSTP to SIGCONT: left out of time_s and every time above
        "cuda_peak_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
    }
    _log_to_tracker(inputs, section, task.main_metric)
    return section


def write_artifacts(out_dir: Path, inputs: PruneInputs, s: Pruning, geo, maps: dict, extra_maps: dict, scoring: dict,
                    primary_masks: dict, records: list[dict], ref: Reference, data: PruneData) -> dict:
    """scores.json, the head-score heatmaps, the quality curve (and alpha's, when chosen); returns their paths."""
    task = inputs.task
    score_maps = {**{k: v.tolist() for k, v in maps.items()}, **{k: v.tolist() for k, v in extra_maps.items()}}
    atomic_write_json(out_dir / "scores.json", {
        "layers": geo.num_layers, "heads": geo.num_heads, "alpha": scoring.get("alpha"),
        "higher_is_kept": True, "maps": score_maps,
    })
    heat = plots.heatmaps({**maps, **extra_maps}, out_dir / "head_scores.png", pruned=primary_masks,
                          alpha=scoring.get("alpha"), title=f"{task.name}: head scores (x = pruned at ratio {s.ratio})")
    trivial, trivial_label = data.quality.trivial(inputs.data.train, data.eval, ref.outputs)
    curve = plots.quality_curves(records, ref.metrics[task.main_metric], task.main_metric, out_dir / "quality_vs_ratio.png",
                                 title=f"{task.name}: pruning without fine-tuning", trivial=trivial, trivial_label=trivial_label)
    artifacts = {"dir": str(out_dir), "scores": str(out_dir / "scores.json"), "heatmaps": str(heat), "curve": str(curve)}
    if "alpha_auto" in scoring:
        artifacts["alpha_curve"] = str(plots.alpha_curve(scoring["alpha_auto"]["table"], scoring["alpha"], out_dir / "alpha_auto.png"))
    return artifacts


def _log_to_tracker(inputs: PruneInputs, section: dict, metric: str) -> None:
    tracker = inputs.tracker
    if tracker is None:
        return
    flat = {}
    for r in section["results"]:
        tag = f"prune/{r['criterion']}/r{r['ratio']}"
        flat[f"{tag}/{metric}"] = r["main_metric"]
        flat[f"{tag}/stability"] = r["stability"]
        flat[f"{tag}/flops_ratio"] = r["flops_ratio"]
        flat[f"{tag}/params_ratio"] = r["params_ratio"]
        for name, lat in (r["latency"] or {}).items():
            flat[f"{tag}/latency_ratio_{name}"] = lat["ratio"]
    flat["prune/scoring_time_s"] = section["scoring"]["time_s"]
    flat["prune/calib_examples"] = section["scoring"]["calib_examples"]
    flat["prune/unpruned/" + metric] = section["unpruned"]["main_metric"]
    tracker.log({k: v for k, v in flat.items() if v is not None and not (isinstance(v, float) and np.isnan(v))}, inputs.step)
    for key in ("heatmaps", "curve", "alpha_curve"):
        path = section["artifacts"].get(key)
        if path:
            tracker.log_image(f"prune/{key}", Path(path), inputs.step)
    tracker.summary({"prune/primary/" + k: v for k, v in section["primary"].items() if isinstance(v, (int, float))})
