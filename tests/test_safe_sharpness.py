"""Sharpness: power iteration finds the top Hessian eigenvalue; merged LoRA is measured like unmerged."""

import pytest
import torch
from torch.func import functional_call

from helpers import single_thread, lora_batch, tiny_lora_model  # noqa: F401

from runner.safe.freezer import AdapterFreezer
from runner.sharpness import hessian_top_eigenvalue, measure_sharpness


def test_power_iteration_on_a_known_quadratic():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    eigs = torch.tensor([5.0, 2.0, 1.5, 1.0, 0.5, 0.2, 0.1, 0.0, -0.1, -0.5, -1.0, -2.0], dtype=torch.float64)
    a = (q * eigs) @ q.T
    x = torch.nn.Parameter(torch.randn(12, generator=g, dtype=torch.float64))
    result = hessian_top_eigenvalue(lambda: [0.5 * x @ a @ x], [x], iters=200, tol=1e-10)
    assert result["lambda_max"] == pytest.approx(5.0, rel=1e-6)
    assert result["converged"]


def test_sharpness_of_a_tiny_lora_model_matches_the_exact_hessian():
    model = tiny_lora_model(layers=1, r=1, seed=3)
    batch = lora_batch(batch=6, seq=10)
    result = measure_sharpness(model, [batch], uses_adapters=True, iters=300, tol=1e-9)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert result["num_params"] == sum(p.numel() for p in named.values())
    shapes = [(n, p.shape, p.numel()) for n, p in named.items()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in named.values()]).double()
    model.eval().double()

    def loss(flat):
        params, i = {}, 0
        for n, shape, k in shapes:
            params[n] = flat[i:i + k].reshape(shape)
            i += k
        return functional_call(model, params, args=(), kwargs=batch).loss

    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        hessian = torch.autograd.functional.hessian(loss, flat0)
    eigs = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    top = eigs[eigs.abs().argmax()].item()
    assert result["lambda_max"] == pytest.approx(top, rel=1e-3)


def test_merged_adapters_are_measured_unmerged_and_left_as_found():
    batch = lora_batch(batch=6, seq=12)
    plain = tiny_lora_model(seed=5)
    merged = tiny_lora_model(seed=5)
    opt = torch.optim.AdamW([p for p in merged.parameters() if p.requires_grad], lr=1e-3)
    AdapterFreezer(merged, opt, merge=True).freeze([0, 2], step=1)
    flags = {n: p.requires_grad for n, p in merged.named_parameters()}
    weights = {n: p.detach().clone() for n, p in merged.named_parameters()}

    a = measure_sharpness(plain, [batch], uses_adapters=True, iters=30, tol=1e-6, seed=1)
    b = measure_sharpness(merged, [batch], uses_adapters=True, iters=30, tol=1e-6, seed=1)
    assert b["num_params"] == a["num_params"]  # frozen adapters are part of the measured space
    assert b["unmerged_for_measurement"] == 4
    assert b["lambda_max"] == pytest.approx(a["lambda_max"], rel=1e-3)
    assert {n: p.requires_grad for n, p in merged.named_parameters()} == flags
    q0 = merged.get_submodule("base_model.model.bert.encoder.layer.0.attention.self.query")
    assert q0.merged and merged.training
    for n, p in merged.named_parameters():
        torch.testing.assert_close(p.detach(), weights[n], rtol=0, atol=1e-6)
