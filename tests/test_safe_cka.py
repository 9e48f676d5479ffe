"""CKA: invariances and the independent-representations limit."""

import math

import pytest
import torch

from runner.safe.cka import cka, linear_cka, rbf_cka, token_matrix


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_identical_representations_have_cka_one(kernel):
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert cka(x, x, kernel) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cka_is_invariant_to_isotropic_scaling_rotation_and_shift(kernel):
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = 7.5 * x @ _rotation(16, 2) + 3.0  # scale, rotate, translate
    assert cka(x, y, kernel) == pytest.approx(1.0, abs=1e-9)
    assert cka(x, 0.01 * x, kernel) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_independent_random_representations_have_cka_near_zero(kernel):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(1500, 8, generator=g), torch.randn(1500, 8, generator=g)
    assert abs(cka(x, y, kernel)) < 0.03


def test_cka_is_not_invariant_to_anisotropic_scaling():
    """Sanity: a representation that really changed scores below 1."""
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = x * torch.tensor([10.0, 1, 1, 1, 1, 1, 1, 0.1], dtype=torch.float64)
    assert linear_cka(x, y) < 0.9


def test_feature_and_sample_space_forms_agree():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 0.5 * torch.randn(40, 8, generator=g)
    y = torch.cat([y, x[:, :3]], 1)
    wide_x, wide_y = torch.randn(20, 64, generator=g), torch.randn(20, 64, generator=g)  # features > samples
    from runner.safe import cka as mod

    def sample_space(a, b):
        a, b = mod._centered(a), mod._centered(b)
        ka, kb = a @ a.T, b @ b.T
        return float((ka * kb).sum() / (ka.pow(2).sum().sqrt() * kb.pow(2).sum().sqrt()))

    assert linear_cka(x, y) == pytest.approx(sample_space(x, y), rel=1e-9)
    assert linear_cka(wide_x, wide_y) == pytest.approx(sample_space(wide_x, wide_y), rel=1e-9)


def test_constant_representation_gives_nan_and_mismatched_rows_raise():
    x = torch.randn(10, 4)
    assert math.isnan(linear_cka(x, torch.ones(10, 4)))
    with pytest.raises(ValueError):
        linear_cka(x, torch.randn(9, 4))
    with pytest.raises(ValueError):
        cka(x, x, "cosine")


def test_token_matrix_drops_padding_so_padding_values_do_not_matter():
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    tokens = token_matrix(hidden, mask)
    assert tokens.shape == (9, 4)
    garbage = hidden.clone()
    garbage[mask == 0] = 1e6
    moved = hidden + 0.1 * torch.randn(3, 5, 4, generator=g)
    assert linear_cka(token_matrix(garbage, mask), token_matrix(moved, mask)) == pytest.approx(
        linear_cka(tokens, token_matrix(moved, mask)))
    assert rbf_cka(token_matrix(garbage, mask), tokens) == pytest.approx(1.0)


def test_cached_reference_gives_the_same_linear_cka():
    from runner.safe.cka import LinearCKAReference

    g = torch.Generator().manual_seed(7)
    x = torch.randn(200, 12, generator=g)
    ref = LinearCKAReference(x)
    for y in (x, 3 * x + 1, x + 0.3 * torch.randn(200, 12, generator=g), torch.randn(200, 5, generator=g)):
        assert ref(y) == pytest.approx(linear_cka(x, y), rel=1e-12)
    wide = torch.randn(30, 40, generator=g)  # 2 d > n: the reference keeps its n x n Gram matrix instead
    ref = LinearCKAReference(wide)
    assert ref.gram is not None and ref.gram.shape == (30, 30)
    for y in (wide, wide + 0.5 * torch.randn(30, 40, generator=g)):
        assert ref(y) == pytest.approx(linear_cka(wide, y), rel=1e-12)


@pytest.mark.parametrize("n,d", [(1024, 384), (1024, 1536), (200, 12), (30, 40)])
def test_cka_flops_count_the_products_of_the_route_taken(n, d):
    """SAFE's probe FLOPs count the CKA products actually computed: the cheaper of d x d and n x n
    (MiniLM's 1536-wide feed-forward output on 1024 probe tokens goes through Gram matrices)."""
    from torch.utils.flop_counter import FlopCounterMode

    from runner.safe.cka import LinearCKAReference, linear_cka_flops

    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    with FlopCounterMode(display=False) as full:
        linear_cka(x, y)
    ref = LinearCKAReference(x)
    with FlopCounterMode(display=False) as cached:
        ref(y)
    assert full.get_total_flops() == linear_cka_flops(n, d, d)
    assert cached.get_total_flops() == linear_cka_flops(n, d, d, reference=True)
    assert linear_cka_flops(n, d, d) == 2 * min(3 * n * d * d, 2 * n * n * d)


def test_rbf_bandwidth_uses_off_diagonal_distances_only():
    """Rounding residue on the diagonal (a token's distance to itself) must not enter the median."""
    from runner.safe.cka import _bandwidth2, _rbf_gram

    # three tokens with squared distances 1, 4, 9 between them and 1e-7 residue on the diagonal
    d2 = torch.tensor([[1e-7, 1.0, 4.0], [1.0, 1e-7, 9.0], [4.0, 9.0, 1e-7]], dtype=torch.float64)
    assert float(d2[d2 > 0].median()) == 1.0  # the old filter: the residue shifts the median from 4 to 1
    assert float(_bandwidth2(d2, 1.0)) == 4.0  # off-diagonal 1, 1, 4, 4, 9, 9: median 4
    assert float(_bandwidth2(d2, 0.8)) == pytest.approx(0.64 * 4.0)
    # the whole Gram matrix against an explicit reference: exact distances, median over i != j
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 1e4  # large norms
    exact = (x[:, None, :] - x[None, :, :]).pow(2).sum(-1)
    off = exact[~torch.eye(7, dtype=torch.bool)]
    reference = torch.exp(-exact / (2 * 0.64 * off.median()))
    assert torch.allclose(_rbf_gram(x, 0.8), reference, rtol=1e-6, atol=1e-9)
    assert torch.equal(torch.diagonal(_rbf_gram(x, 0.8)), torch.ones(7, dtype=torch.float64))
