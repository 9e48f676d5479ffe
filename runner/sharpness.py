"""Sharpness of a trained solution: the top eigenvalue of the training loss's Hessian.

``lambda_max`` of the Hessian of the mean training loss on a few fixed batches,
with respect to the parameters the method tunes, by power iteration on
Hessian-vector products (double backward; Pearlmutter's trick). Lower means a
flatter minimum. Used to compare SAFE with plain adapter tuning, so both must
be measured in the same parameter space:

* adapter methods: every adapter parameter (trainable or frozen by SAFE) plus
  the trainable head; LoRA layers that SAFE merged are unmerged for the
  measurement and merged again afterwards;
* ``method=full``: every parameter.

The model is in eval mode (no dropout) and attention runs on SDPA's math
kernel (the fused CPU/GPU kernels have no double backward). Batches are the
first ``batches x batch_size`` training examples, in file order, so every run
of a task with the same data cap sees the same ones.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from runner import run_clock
from runner.adapters import is_adapter_param, mergeable_modules
from runner.preflight.schema import SharpnessSettings, as_settings

log = logging.getLogger(__name__)


def fixed_batches(loader, n_batches: int, batch_size: int, device) -> list[dict]:
    dataset, collate = loader.dataset, loader.collate_fn
    out = []
    for b in range(int(n_batches)):
        idx = range(b * batch_size, min(len(dataset), (b + 1) * batch_size))
        if len(idx) == 0:
            break
        batch = collate([dataset[i] for i in idx])
        out.append({k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)})
    return out


def _math_attention():
    try:
        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()


def hessian_top_eigenvalue(loss_fn, params: list[nn.Parameter], iters: int = 20, tol: float = 1e-3,
                           seed: int = 0) -> dict:
    """Power iteration for the largest-magnitude eigenvalue of d^2 loss / d params^2.

    ``loss_fn()`` returns a list of scalar losses whose sum is the objective
    (one per batch, so only one batch's graph is alive at a time).
    """
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device, p.dtype) for p in params]
    norm = torch.sqrt(sum((x.double() ** 2).sum() for x in v))
    v = [x / norm for x in v]
    eig, history = None, []
    for it in range(int(iters)):
        hv = [torch.zeros_like(p) for p in params]
        for loss in loss_fn():
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
            dot = sum((g * x).sum() for g, x in zip(grads, v))
            parts = torch.autograd.grad(dot, params, allow_unused=True)
            for acc, part in zip(hv, parts):
                if part is not None:
                    acc.add_(part.detach())
        new_eig = float(sum((h.double() * x.double()).sum() for h, x in zip(hv, v)))  # Rayleigh quotient
        history.append(new_eig)
        hv_norm = torch.sqrt(sum((h.double() ** 2).sum() for h in hv))
        if hv_norm == 0:
            eig = 0.0
            break
        v = [h / hv_norm.to(h.dtype) for h in hv]
        converged = eig is not None and abs(new_eig - eig) <= tol * max(abs(new_eig), 1e-12)
        eig = new_eig
        if converged:
            break
    return {"lambda_max": eig, "iterations": len(history), "history": history,
            "converged": len(history) >= 2 and abs(history[-1] - history[-2]) <= tol * max(abs(history[-1]), 1e-12)}


def _merged_tuner_layers(model: nn.Module) -> list[nn.Module]:
    return [m for _, m in mergeable_modules(model) if getattr(m, "merged", False)]


def measure_sharpness(model: nn.Module, batches: list[dict], uses_adapters: bool, iters: int = 20,
                      tol: float = 1e-3, seed: int = 0) -> dict:
    """Top Hessian eigenvalue of the mean loss over ``batches``, in the method's parameter space."""
    named = dict(model.named_parameters())
    if uses_adapters:
        names = [n for n, p in named.items() if is_adapter_param(n) or p.requires_grad]
    else:
        names = list(named)
    params = [named[n] for n in names]
    flags = {n: named[n].requires_grad for n in names}
    merged = _merged_tuner_layers(model)
    was_training = model.training
    start = run_clock.now()
    try:
        for m in merged:
            m.unmerge()
        for p in params:
            p.requires_grad_(True)
        model.eval()

        def losses():
            for batch in batches:
                yield model(**batch).loss / len(batches)

        with _math_attention():
            result = hessian_top_eigenvalue(losses, params, iters=iters, tol=tol, seed=seed)
            with torch.no_grad():
                result["loss"] = float(sum(model(**b).loss.item() for b in batches) / len(batches))
    finally:
        for n in names:
            named[n].requires_grad_(flags[n])
        for m in merged:
            m.merge()
        model.train(was_training)
    result.update({
        "wrt": "adapter parameters (all, incl. frozen) + trainable head" if uses_adapters else "all parameters",
        "num_params": int(sum(p.numel() for p in params)),
        "batches": len(batches), "examples": int(sum(len(b["input_ids"]) for b in batches)),
        "unmerged_for_measurement": len(merged), "seconds": run_clock.now() - start,
    })
    return result


def sharpness_of_run(accelerator, model: nn.Module, train_loader, cfg) -> dict:
    """``trainer.sharpness`` settings applied to a finished run (call on the main process)."""
    sharp = as_settings(SharpnessSettings, cfg.trainer.sharpness)
    module = accelerator.unwrap_model(model)
    batches = fixed_batches(train_loader, sharp.batches, sharp.batch_size or int(cfg.trainer.batch_size), accelerator.device)
    return measure_sharpness(module, batches, bool(cfg.method.uses_adapters), iters=sharp.iters, tol=float(sharp.tol),
                             seed=int(cfg.seed))
