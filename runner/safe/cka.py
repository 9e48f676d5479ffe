"""Centered Kernel Alignment (Kornblith et al., 2019) between two representations.

SAFE scores an adapter by how far its layer's representation moved from the
start of training, ``importance = 1 - CKA(now, start)`` (``safe.importance=drift``),
or by its own effect, ``1 - CKA(with the adapter, without it)`` (``own``). Representations here
are token matrices ``[n_tokens, features]``; :func:`token_matrix` turns a
``[batch, seq, features]`` activation into one with padding tokens removed.

* Linear CKA: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred
  ``X`` and ``Y``. Invariant to orthogonal transforms and isotropic scaling;
  computed from the ``d x d`` feature products or the ``n x n`` token Grams, whichever
  costs fewer FLOPs (:func:`feature_space`; the same value), in float64.
* RBF CKA: HSIC of Gaussian-kernel Gram matrices, the bandwidth a fraction of
  the median squared distance between different tokens (so it is scale invariant too). Costs
  ``O(n_tokens^2)``: cap the tokens (``safe.max_tokens``).
"""

from __future__ import annotations

import torch


def token_matrix(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``[batch, seq, features]`` -> ``[tokens, features]`` without padding tokens."""
    if hidden.dim() == 2:
        return hidden
    if attention_mask is None:
        return hidden.reshape(-1, hidden.shape[-1])
    return hidden[attention_mask.to(torch.bool)]


def _centered(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    return x - x.mean(dim=0, keepdim=True)


def feature_space(n: int, dx: int, dy: int, reference: bool = False) -> bool:
    """Whether linear CKA of ``[n, dx]`` against ``[n, dy]`` is cheaper through ``d x d`` products
    than through ``n x n`` Gram matrices (the same value either way). ``reference``: the ``x`` side's
    products are cached (:class:`LinearCKAReference`), only those with ``y`` are paid, and the route
    is fixed by ``x`` alone when the reference is built (as if ``dy == dx``, as SAFE's always is)."""
    if reference:
        return 2 * dx <= n  # n (dx dy + dy^2) <= n^2 dy with dy = dx
    return dx * dy + dx * dx + dy * dy <= n * (dx + dy)


def linear_cka_flops(n: int, dx: int, dy: int, reference: bool = False) -> int:
    """FLOPs (2 per multiply-add) of the matrix products :func:`linear_cka` (``reference``:
    a :class:`LinearCKAReference` call) computes for these shapes, on the route it takes."""
    if feature_space(n, dx, dy, reference):
        macs = n * (dx * dy + dy * dy + (0 if reference else dx * dx))
    else:
        macs = n * n * (dy + (0 if reference else dx))
    return 2 * macs


def _check_rows(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples in both: {x.shape[0]} vs {y.shape[0]} rows")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two ``[n, d]`` matrices over the same ``n`` examples (tokens), through
    ``d x d`` or ``n x n`` products, whichever costs less (:func:`feature_space`).

    Returns NaN when either representation is constant (CKA is undefined).
    """
    _check_rows(x, y)
    x, y = _centered(x), _centered(y)
    if feature_space(x.shape[0], x.shape[1], y.shape[1]):
        cross = (y.T @ x).pow(2).sum()
        norm_x = (x.T @ x).pow(2).sum().sqrt()
        norm_y = (y.T @ y).pow(2).sum().sqrt()
    else:  # sample space: n x n Gram matrices (same value)
        kx, ky = x @ x.T, y @ y.T
        cross = (kx * ky).sum()
        norm_x, norm_y = kx.pow(2).sum().sqrt(), ky.pow(2).sum().sqrt()
    denom = norm_x * norm_y
    if denom <= 0:
        return float("nan")
    return float(cross / denom)


class LinearCKAReference:
    """Linear CKA against one fixed representation, its centring, norm and (for wide
    representations) Gram matrix computed once.

    ``LinearCKAReference(x)(y) == linear_cka(x, y)``; each call pays only the products with ``y``
    (SAFE compares every measurement with the same start-of-training reference).
    """

    def __init__(self, x: torch.Tensor):
        self.x = _centered(x)
        n, d = self.x.shape
        self.gram = None if feature_space(n, d, d, reference=True) else self.x @ self.x.T  # n x n, float64
        square = self.x.T @ self.x if self.gram is None else self.gram
        self.norm = float(square.pow(2).sum().sqrt())

    def __call__(self, y: torch.Tensor) -> float:
        _check_rows(self.x, y)
        y = _centered(y)
        if self.gram is None:
            cross = (y.T @ self.x).pow(2).sum()
            norm_y = (y.T @ y).pow(2).sum().sqrt()
        else:
            ky = y @ y.T
            cross = (self.gram * ky).sum()
            norm_y = ky.pow(2).sum().sqrt()
        denom = self.norm * float(norm_y)
        return float(cross / denom) if denom > 0 else float("nan")


def _rbf_gram(x: torch.Tensor, sigma_frac: float) -> torch.Tensor:
    x = x.to(torch.float64)
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    d2.fill_diagonal_(0.0)  # a token's distance to itself, without the rounding residue of the form above
    return torch.exp(-d2 / (2 * _bandwidth2(d2, sigma_frac)))


def _bandwidth2(d2: torch.Tensor, sigma_frac: float) -> torch.Tensor:
    """``sigma^2 = sigma_frac^2 x`` the median squared distance between *different* tokens (i != j). The
    diagonal is dropped by index, not by value (``> 0`` let rounding residue such as 1e-7 there into the
    median); exact duplicates among different tokens count as the zeros they are."""
    n = d2.shape[0]
    off = d2[~torch.eye(n, dtype=torch.bool, device=d2.device)]
    median = off.median() if off.numel() else d2.new_zeros(())
    if median <= 0:  # most pairs identical (or one token): fall back to the positive distances, else 1
        positive = off[off > 0]
        median = positive.median() if positive.numel() else d2.new_ones(())
    return (sigma_frac ** 2) * median  # median heuristic on squared distances


def _hsic(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    kc = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
    lc = l - l.mean(0, keepdim=True) - l.mean(1, keepdim=True) + l.mean()
    return (kc * lc).sum()


def rbf_cka(x: torch.Tensor, y: torch.Tensor, sigma_frac: float = 0.8) -> float:
    """CKA with Gaussian kernels; bandwidth ``sigma_frac * median distance``."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples in both: {x.shape[0]} vs {y.shape[0]} rows")
    k, l = _rbf_gram(x, sigma_frac), _rbf_gram(y, sigma_frac)
    denom = (_hsic(k, k) * _hsic(l, l)).sqrt()
    if denom <= 0:
        return float("nan")
    return float(_hsic(k, l) / denom)


KERNELS = {"linear": linear_cka, "rbf": rbf_cka}


def cka(x: torch.Tensor, y: torch.Tensor, kernel: str = "linear") -> float:
    try:
        fn = KERNELS[kernel]
    except KeyError:
        raise ValueError(f"unknown CKA kernel {kernel!r}; valid: {', '.join(KERNELS)}") from None
    return fn(x, y)
