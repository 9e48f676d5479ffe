"""Per-head scores (layers x heads); higher means more worth keeping.

* ``his``: head importance, E_x |dL(x)/dm_h| through the gate (per example,
  as HIES defines it; ``his_per="batch"``: per batch, as Michel et al.'s code).
* ``entropy``: 1 - AE_h, AE the normalised attention entropy of the head.
* ``hies``: alpha * minmax(HIS) + (1 - alpha) * (1 - minmax(AE)).
* ``magnitude``: L2 norm of the head's weights; ``random``: seeded uniform.

HIS and AE come from one pass over the calibration batches with eager
attention (the only kernel that returns attention probabilities).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from scipy.stats import spearmanr
from torch import nn

from runner import run_clock
from runner.arch import architecture_of
from runner.classifier_heads import is_causal_lm
from runner.lm import example_losses
from runner.preflight.schema import CRITERIA as PRUNING_CRITERIA  # prune.his_per: where |dL/dm| is taken
from runner.preflight.schema import HIS_PER
from runner.prune.gate import HeadGate, encoder_layers, geometry
from runner.prune.select import select_heads_to_prune

CRITERIA = (*PRUNING_CRITERIA, "none")  # the names are declared with the settings (runner.preflight.schema)


# ---------------------------------------------------------------------------
# Attention entropy
# ---------------------------------------------------------------------------


def attention_entropy(probs: torch.Tensor, attention_mask: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """Normalised attention entropy per example and head, in [0, 1].

    ``probs``: [B, H, T, T] attention rows (query t -> distribution over keys);
    ``attention_mask``: [B, T], 1 for real tokens. For an example with ``n``
    real tokens::

        AE = sum over real queries t of H(p_t) / sum over real queries t of log k_t

    where ``p_t`` is row ``t`` restricted to the real keys (and renormalised,
    so weight a kernel leaves on padding cannot count), H the Shannon entropy
    in nats and ``k_t`` the keys query ``t`` may see: the ``n`` real tokens
    (the denominator is ``n log n``), or under ``causal`` attention (decoders)
    the real tokens up to ``t``. A uniform row over k keys has entropy log k, so
    AE = 1 when every row is uniform and 0 when every row is one-hot. Padding
    queries are skipped. Examples with n <= 1 get AE = 0 (a single key leaves
    no choice). Returns [B, H].
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
    if causal:  # query t sees the real keys up to t
        denom = (torch.log(keep.cumsum(-1).clamp_min(1.0)) * keep).sum(-1)
    else:
        denom = n * torch.log(n.clamp_min(1.0))
    ae = row_entropy.sum(-1) / denom.clamp_min(1e-30)[:, None]
    return torch.where((n > 1)[:, None], ae, torch.zeros_like(ae))


# ---------------------------------------------------------------------------
# One calibration pass: HIS and AE together
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Switch the model to eager attention (returns probabilities), then back; with the family's fixes
    (ModernBERT's eager attention needs one to stay finite on padding)."""
    architecture_of(model).prepare(model)
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
    his: torch.Tensor  # [L, H], token-averaged |dL/dm| per `his_per` (layer-normalised if asked)
    his_raw: torch.Tensor  # [L, H], before layer normalisation
    entropy: torch.Tensor  # [L, H], AE in [0, 1]
    examples: int
    tokens: int
    batches: int
    seconds: float
    his_per: str = "example"
    his_other: torch.Tensor | None = None  # [L, H], the other `his_per` variant, same pass, normalised like `his`


def layer_normalize(scores: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """Divide each layer's row by its L2 norm (Michel et al.'s default)."""
    return scores / (scores.norm(p=2, dim=-1, keepdim=True) + eps)


def gate_gradients(model: nn.Module, gate: HeadGate, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's ``(sum_b |dL(x_b)/dm|, |dL_batch/dm|)``, both [L, H] float64 on the CPU.

    The gate is made per example (row ``b`` gates example ``b``) for this
    batch's size. The model's loss is a mean over examples (single-label
    cross-entropy, MSE; multi-label BCE is a mean over B * C elements, so
    B * loss is still the sum over examples of each example's mean), so the
    gradient of B * loss w.r.t. row ``b`` is example ``b``'s own dL(x_b)/dm
    (eval mode: examples do not interact; padding positions feed no real
    token). The mean of the rows is the gradient of the batch's mean loss.
    A causal LM's loss is a mean over the batch's target tokens, which weighs
    examples by their length: there ``L(x_b)`` is example ``b``'s own mean
    negative log-likelihood per target token (:func:`runner.lm.example_losses`).
    """
    n = int(batch["input_ids"].shape[0])
    mask = gate.per_example(n)
    if is_causal_lm(model):  # the model's LM loss averages tokens over the batch: each example's own mean instead
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        example_losses(out.logits, batch["labels"]).sum().backward()
    else:
        (model(**batch).loss * n).backward()
    g = mask.grad.detach().double().cpu()  # [B, L, H]
    return g.abs().sum(0), g.mean(0).abs()


def _capture_entropy(model: nn.Module, layers, current_mask: list) -> tuple[dict, list]:
    """Forward hooks that put each layer's summed per-example AE of a batch into the returned dict (layer
    index -> [H]); ``current_mask[0]`` is the batch's attention mask. Each family's attention module returns
    (output, probabilities) in eager mode."""
    arch = architecture_of(model)
    captured: dict[int, torch.Tensor] = {}

    def capture(index):
        def hook(module, args, output):
            probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if probs is None:
                raise RuntimeError("attention probabilities missing: the scoring pass needs eager attention")
            captured[index] = attention_entropy(probs, current_mask[0], causal=arch.decoder).sum(0).double().cpu()
        return hook

    return captured, [arch.attention_module(layer).register_forward_hook(capture(i)) for i, layer in enumerate(layers)]


def calibration_scores(model: nn.Module, batches, normalize_layers: bool = True, device=None,
                       his_per: str = "example", entropy: bool = True) -> CalibrationScores:
    """HIS and AE from calibration batches (dicts with input_ids, attention_mask, labels).

    Per batch, one forward (gate at 1, eager attention) and one backward (:func:`gate_gradients`)
    give both HIS variants: ``example`` adds ``|dL(x)/dm|`` of every example (the paper's; no
    cancellation across examples), ``batch`` adds ``|dL_batch/dm|`` of the batch's mean loss. Each sum
    is divided by the non-padding tokens seen (as Michel et al.'s code); ``his`` is the ``his_per``
    one, ``his_other`` the other. AE: per example, averaged. ``entropy=False`` (no criterion reads AE):
    the model keeps its own attention kernel (SDPA: no [T, T] probabilities in memory, which a long
    decoder sequence cannot afford) and ``entropy`` is NaN."""
    if his_per not in HIS_PER:
        raise ValueError(f"his_per must be one of {', '.join(HIS_PER)}, got {his_per!r}")
    layers = encoder_layers(model)
    geo = geometry(model)
    device = device or next(model.parameters()).device
    zeros = torch.zeros(geo.num_layers, geo.num_heads, dtype=torch.float64)
    his, ae_sum = {k: zeros.clone() for k in HIS_PER}, zeros.clone()
    examples = tokens = n_batches = 0
    current_mask: list[torch.Tensor] = []
    was_training, start = model.training, run_clock.now()
    model.eval()  # no dropout: scores must not depend on dropout noise
    captured, handles = _capture_entropy(model, layers, current_mask) if entropy else ({}, [])
    kernel = eager_attention(model) if entropy else contextlib.nullcontext()
    try:
        with kernel, frozen_weights(model), HeadGate(model, requires_grad=True) as gate:
            for batch in batches:
                # output_attentions: MPNet's and DeBERTa's attention return their probabilities only when asked
                batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)} | ({"output_attentions": True} if entropy else {})
                mask = batch.get("attention_mask")
                current_mask[:] = [torch.ones_like(batch["input_ids"]) if mask is None else mask]
                captured.clear()
                for key, grad in zip(HIS_PER, gate_gradients(model, gate, batch)):  # (example, batch)
                    his[key] += grad
                if entropy:
                    ae_sum += torch.stack([captured[i] for i in range(geo.num_layers)])
                examples += int(current_mask[0].shape[0])
                tokens += int(current_mask[0].sum())
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if examples == 0:
        raise ValueError("no calibration examples")
    raw = {k: (v / tokens).float() for k, v in his.items()}
    final = {k: layer_normalize(v) if normalize_layers else v for k, v in raw.items()}
    other = next(k for k in HIS_PER if k != his_per)
    return CalibrationScores(
        his=final[his_per], his_raw=raw[his_per], entropy=(ae_sum / examples).float() if entropy else torch.full_like(ae_sum, float("nan")).float(),
        examples=examples, tokens=tokens,
        batches=n_batches, seconds=run_clock.now() - start, his_per=his_per, his_other=final[other],
    )


def ranking_agreement(primary: torch.Tensor, other: torch.Tensor, ratio: float) -> dict:
    """How two [L, H] score maps rank heads: Spearman's rho over all heads, and how many
    of the ``lowest`` = round(ratio * heads) heads each would prune (global ranking, no
    per-layer floor) they share."""
    a, b = primary.detach().double().flatten().numpy(), other.detach().double().flatten().numpy()
    low_a, low_b = select_heads_to_prune(primary, ratio), select_heads_to_prune(other, ratio)
    return {"spearman": float(spearmanr(a, b).statistic), "lowest": int(low_a.sum()),
            "shared_lowest": int((low_a & low_b).sum())}


# ---------------------------------------------------------------------------
# Data-free scores and the combination
# ---------------------------------------------------------------------------


def magnitude_scores(model: nn.Module) -> torch.Tensor:
    """L2 norm of each head's weights: its rows of W_q, W_k, W_v and its columns of W_o (biases left out)."""
    layers = encoder_layers(model)
    geo = geometry(model)
    arch = architecture_of(model)
    out = torch.zeros(geo.num_layers, geo.num_heads)
    d = geo.head_size
    for i, layer in enumerate(layers):
        weights = [(w.detach().float(), dim, starts) for w, dim, starts in arch.head_weights(layer)]  # q/k/v, W_o
        for h in range(geo.num_heads):
            sq = sum(float(w.narrow(dim, start + h * d, d).pow(2).sum()) for w, dim, starts in weights for start in starts)
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
    """HIES = alpha * minmax(HIS) + (1 - alpha) * (1 - minmax(AE)), alpha in [0, 1) as in the paper
    (alpha = 1 would be HIS alone: the ``his`` criterion)."""
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in [0, 1) (alpha = 1 is HIS alone, the his criterion), got {alpha}")
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
