"""From a score map to the heads to remove: one global ranking over all layers."""

from __future__ import annotations

import math

import torch

from runner.preflight.errors import ConfigError


def num_heads_to_prune(ratio: float, total: int) -> int:
    """round(ratio * total), halves rounded up (0.5 * 72 = 36, 0.3 * 72 = 21.6 -> 22)."""
    if not 0.0 <= float(ratio) < 1.0:
        raise ConfigError(f"prune ratio must lie in [0, 1), got {ratio}")
    return int(math.floor(float(ratio) * total + 0.5))


def select_heads_to_prune(scores: torch.Tensor, ratio: float, min_heads_per_layer: int = 0) -> torch.Tensor:
    """Boolean (layers x heads) mask, True = prune.

    Heads are ranked by score over all layers at once (ties: lower layer,
    then lower head first) and the lowest ``round(ratio * L * H)`` are
    removed, skipping any head whose removal would leave its layer with fewer
    than ``min_heads_per_layer`` heads (the next-lowest head is taken instead).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (layers x heads), got shape {tuple(scores.shape)}")
    n_layers, n_heads = scores.shape
    total = n_layers * n_heads
    n_prune = num_heads_to_prune(ratio, total)
    if not 0 <= int(min_heads_per_layer) <= n_heads:
        raise ConfigError(f"prune.min_heads_per_layer must lie in [0, {n_heads}], got {min_heads_per_layer}")
    most = total - n_layers * int(min_heads_per_layer)
    if n_prune > most:
        raise ConfigError(
            f"pruning {n_prune} of {total} heads (ratio {ratio}) would leave fewer than "
            f"prune.min_heads_per_layer={min_heads_per_layer} heads in some layer; at most {most} can go"
        )
    flat = scores.detach().float().reshape(-1).cpu()
    if torch.isnan(flat).any():
        raise ValueError("head scores contain NaN")
    order = torch.sort(flat, stable=True).indices.tolist()
    pruned = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    left = [n_heads] * n_layers
    taken = 0
    for idx in order:
        if taken == n_prune:
            break
        layer, head = divmod(idx, n_heads)
        if left[layer] - 1 < min_heads_per_layer:
            continue
        pruned[layer, head] = True
        left[layer] -= 1
        taken += 1
    return pruned


def mask_to_dict(pruned: torch.Tensor) -> dict[int, list[int]]:
    """{layer: [pruned heads]} for layers that lose any head."""
    return {i: [int(h) for h in torch.nonzero(row).flatten()] for i, row in enumerate(pruned) if bool(row.any())}


def dict_to_mask(heads: dict, n_layers: int, n_heads: int) -> torch.Tensor:
    pruned = torch.zeros(n_layers, n_heads, dtype=torch.bool)
    for layer, hs in heads.items():
        for h in hs:
            pruned[int(layer), int(h)] = True
    return pruned
