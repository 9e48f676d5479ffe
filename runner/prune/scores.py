"""Per-head scores (layers x heads); higher means more worth keeping.

* ``his``: Michel et al.'s head importance, E_x |dL/dm_h| through the gate.
* ``entropy``: 1 - AE_h, AE the normalised attention entropy of the head.
* ``hies``: alpha * minmax(HIS) + (1 - alpha) * (1 - minmax(AE)).
* ``magnitude``: L2 norm of the head's weights; ``random``: seeded uniform.

HIS and AE come from one pass over the calibration batches with eager
attention (the only kernel that returns attention probabilities).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from runner.schema import CRITERIA as PRUNING_CRITERIA
from runner.prune.gate import HeadGate, encoder_layers, geometry, _output_projection

CRITERIA = (*PRUNING_CRITERIA, "none")  # the names are declared with the settings (runner.schema)


# ---------------------------------------------------------------------------
# Attention entropy
# ---------------------------------------------------------------------------


def attention_entropy(probs: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised attention entropy per example and head, in [0, 1].

    ``probs``: [B, H, T, T] attention rows (query t -> distribution over keys);
    ``attention_mask``: [B, T], 1 for real tokens. For an example with ``n``
    real tokens::

        AE = 1 / (n log n) * sum over real queries t of H(p_t)

    where ``p_t`` is row ``t`` restricted to the real keys (and renormalised,
    so weight a kernel leaves on padding cannot count) and H the Shannon
    entropy in nats. A uniform row over n keys has entropy log n, so AE = 1
    when every row is uniform and 0 when every row is one-hot. Padding queries
    are skipped. Examples with n <= 1 get AE = 0 (a single key leaves no choice).
    Returns [B, H].
    """
    probs = probs.detach().float()
    b, _, t, t_k = probs.shape
    if attention_mask is None:
        attention_mask = torch.ones(b, t, device=probs.device)
    keep = attention_mask.to(probs.device).float()
    if keep.shape[1] != t_k:
        raise ValueError(f"attention mask has {keep.shape[1]} positions, attention rows have {t_k}")
    p = probs * keep[:, None, None, :]  # drop padding keys
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), torch.zeros_like(p))
    row_entropy = -plogp.sum(-1)  # [B, H, T]
    row_entropy = row_entropy * keep[:, None, :]  # drop padding queries
    n = keep.sum(-1)  # [B]
    denom = n * torch.log(n.clamp_min(1.0))
    ae = row_entropy.sum(-1) / denom.clamp_min(1e-30)[:, None]
    return torch.where((n > 1)[:, None], ae, torch.zeros_like(ae))


# ---------------------------------------------------------------------------
# One calibration pass: HIS and AE together
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Switch the model to eager attention (returns probabilities), then back."""
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.set_attn_implementation(before)


@contextlib.contextmanager
def frozen_weights(model: nn.Module):
    """No weight gradients during scoring: only the gate's gradient is needed."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass
class CalibrationScores:
    his: torch.Tensor  # [L, H], token-averaged |dL/dm| (layer-normalised if asked)
    his_raw: torch.Tensor  # [L, H], before layer normalisation
    entropy: torch.Tensor  # [L, H], AE in [0, 1]
    examples: int
    tokens: int
    batches: int
    seconds: float


def layer_normalize(scores: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """Divide each layer's row by its L2 norm (Michel et al.'s default)."""
    return scores / (scores.norm(p=2, dim=-1, keepdim=True) + eps)


def calibration_scores(model: nn.Module, batches, normalize_layers: bool = True, device=None) -> CalibrationScores:
    """HIS and AE from calibration batches (dicts with input_ids, attention_mask, labels).

    For each batch: gate gradient reset, forward with the gate at 1 and eager
    attention, backward of the batch's mean loss; ``|dL/dm|`` is added up over
    batches and divided by the number of non-padding tokens seen (as in
    Michel et al.'s and transformers' bertology code). AE is summed per
    example and divided by the number of examples.
    """
    layers = encoder_layers(model)
    geo = geometry(model)
    device = device or next(model.parameters()).device
    his = torch.zeros(geo.num_layers, geo.num_heads, dtype=torch.float64)
    ae_sum = torch.zeros(geo.num_layers, geo.num_heads, dtype=torch.float64)
    examples = tokens = n_batches = 0
    current_mask: list[torch.Tensor] = []
    captured: dict[int, torch.Tensor] = {}

    def capture(index):
        def hook(module, args, output):
            probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if probs is None:
                raise RuntimeError("attention probabilities missing: the scoring pass needs eager attention")
            captured[index] = attention_entropy(probs, current_mask[0]).sum(0).double().cpu()
        return hook

    was_training = model.training
    model.eval()  # no dropout: scores must not depend on dropout noise
    start = time.perf_counter()
    handles = [layer.attention.self.register_forward_hook(capture(i)) for i, layer in enumerate(layers)]
    try:
        with eager_attention(model), frozen_weights(model), HeadGate(model, requires_grad=True) as gate:
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
                mask = batch.get("attention_mask")
                if mask is None:
                    mask = torch.ones_like(batch["input_ids"])
                current_mask[:] = [mask]
                captured.clear()
                gate.mask.grad = None  # reset after each batch
                out = model(**batch)
                out.loss.backward()
                his += gate.mask.grad.detach().abs().double().cpu()
                ae_sum += torch.stack([captured[i] for i in range(geo.num_layers)])
                examples += int(mask.shape[0])
                tokens += int(mask.sum())
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if examples == 0:
        raise ValueError("no calibration examples")
    his_raw = (his / tokens).float()
    his_final = layer_normalize(his_raw) if normalize_layers else his_raw
    return CalibrationScores(
        his=his_final, his_raw=his_raw, entropy=(ae_sum / examples).float(), examples=examples, tokens=tokens,
        batches=n_batches, seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------
# Data-free scores and the combination
# ---------------------------------------------------------------------------


def magnitude_scores(model: nn.Module) -> torch.Tensor:
    """L2 norm of each head's weights: its rows of W_q, W_k, W_v and its columns of W_o (biases left out)."""
    layers = encoder_layers(model)
    geo = geometry(model)
    out = torch.zeros(geo.num_layers, geo.num_heads)
    d = geo.head_size
    for i, layer in enumerate(layers):
        att = layer.attention.self
        wo = _output_projection(layer).weight.detach().float()
        for h in range(geo.num_heads):
            rows = slice(h * d, (h + 1) * d)
            sq = sum(float(getattr(att, name).weight.detach().float()[rows].pow(2).sum()) for name in ("query", "key", "value"))
            sq += float(wo[:, rows].pow(2).sum())
            out[i, h] = math.sqrt(sq)
    return out


def random_scores(shape: tuple[int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(*shape, generator=g)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1] over all heads; a constant map becomes all zeros."""
    x = x.float()
    lo, hi = x.min(), x.max()
    if float(hi - lo) <= 0:
        return torch.zeros_like(x)
    return (x - lo) / (hi - lo)


def hies_scores(his: torch.Tensor, entropy: torch.Tensor, alpha: float) -> torch.Tensor:
    """HIES = alpha * minmax(HIS) + (1 - alpha) * (1 - minmax(AE))."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    return alpha * minmax(his) + (1.0 - alpha) * (1.0 - minmax(entropy))


# criterion -> its (layers x heads) score map from what was measured; low scores are pruned first.
# Arguments: calib (CalibrationScores), magnitude ([L, H]), shape, alpha, seed. A new criterion is one entry.
SCORERS = {
    "hies": lambda calib, magnitude, shape, alpha, seed: hies_scores(calib.his, calib.entropy, alpha),
    "his": lambda calib, magnitude, shape, alpha, seed: calib.his.clone(),
    "entropy": lambda calib, magnitude, shape, alpha, seed: 1.0 - calib.entropy,  # low entropy kept
    "magnitude": lambda calib, magnitude, shape, alpha, seed: magnitude.clone(),
    "random": lambda calib, magnitude, shape, alpha, seed: random_scores(shape, seed),
    "none": lambda calib, magnitude, shape, alpha, seed: torch.ones(shape),  # the unpruned model as a row
}


def criterion_scores(criterion: str, *, calib: CalibrationScores | None, magnitude: torch.Tensor | None,
                     shape: tuple[int, int], alpha: float | None, seed: int) -> torch.Tensor:
    """The (layers x heads) score map of one criterion (:data:`SCORERS`); low scores are pruned first."""
    if criterion not in SCORERS:
        raise ValueError(f"unknown criterion {criterion!r}; valid: {', '.join(CRITERIA)}")
    return SCORERS[criterion](calib, magnitude, shape, alpha, seed)
