"""Freezing an adapter for real: weights, optimizer state, merging, saved-for-backward bytes."""

import pytest
import torch

from helpers import single_thread, lora_batch, tiny_lora_model  # noqa: F401 (autouse fixture)

from runner import measure
from runner.adapters import adapter_groups
from runner.measure import inner_optimizer, optimizer_state_bytes
from runner.safe.freezer import AdapterFreezer


def optimizer_params(optimizer) -> list:
    return [p for g in inner_optimizer(optimizer).param_groups for p in g["params"]]


def _train_steps(model, optimizer, batch, n=3):
    model.train()
    for _ in range(n):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _snapshot(params):
    return {n: p.detach().clone() for n, p in params.items()}


@pytest.mark.parametrize("merge", [True, False])
def test_frozen_adapter_does_not_change_and_its_optimizer_state_is_gone(merge):
    model = tiny_lora_model(dropout=0.1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = lora_batch()
    _train_steps(model, opt, batch)  # optimizer state exists for every adapter
    groups = adapter_groups(model)
    state_before = optimizer_state_bytes(opt)
    freezer = AdapterFreezer(model, opt, merge=merge)
    assert freezer.freeze([1], step=3) == [1]
    frozen, live = groups[1], groups[2]
    frozen_ids = {id(p) for p in frozen.values()}

    assert all(not p.requires_grad and p.grad is None for p in frozen.values())
    assert not frozen_ids & {id(p) for p in optimizer_params(opt)}
    assert not any(id(p) in frozen_ids for p in opt.state)
    assert optimizer_state_bytes(opt) == state_before - 2 * sum(p.numel() * 4 for p in frozen.values())
    assert len(opt.state_dict()["state"]) == len(optimizer_params(opt))

    before_frozen, before_live = _snapshot(frozen), _snapshot(live)
    base = dict(model.named_parameters())
    base_names = [n for n in base if ".layer.1." in n and "base_layer.weight" in n]
    base_before = _snapshot({n: base[n] for n in base_names})
    _train_steps(model, opt, batch, n=3)
    for n, p in frozen.items():
        assert torch.equal(p, before_frozen[n]), n
    assert any(not torch.equal(p, before_live[n]) for n, p in live.items())
    for n in base_names:  # the (merged) base weight stays put as well
        assert torch.equal(base[n], base_before[n])
    assert freezer.frozen == {1: 3} and freezer.active == [0, 2, 3]
    assert freezer.freeze([1], step=9) == []  # frozen stays frozen, first step kept
    assert freezer.frozen == {1: 3}


def test_merge_keeps_the_function_and_removes_lora_from_the_forward():
    model = tiny_lora_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = lora_batch()
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    base_w = model.get_submodule("base_model.model.bert.encoder.layer.0.attention.self.query").base_layer.weight.clone()
    AdapterFreezer(model, opt, merge=True).freeze([0, 1], step=1)
    q0 = model.get_submodule("base_model.model.bert.encoder.layer.0.attention.self.query")
    assert q0.merged and not torch.equal(q0.base_layer.weight, base_w)
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # the merged LoRA path is skipped: lora_A is never called
    calls = []
    handle = q0.lora_A["default"].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    assert calls == []


def test_saved_adapter_of_a_partly_merged_model_reproduces_it(tmp_path):
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    from helpers import tiny_config

    model = tiny_lora_model(seed=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = lora_batch()
    _train_steps(model, opt, batch, n=2)
    freezer = AdapterFreezer(model, opt, merge=True)
    freezer.freeze([0], step=2)
    _train_steps(model, opt, batch, n=2)
    freezer.freeze([1], step=4)
    AdapterFreezer(model, opt, merge=False).freeze([2], step=4)  # frozen but not merged
    _train_steps(model, opt, batch, n=2)
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(str(tmp_path))
    torch.manual_seed(1)
    fresh = BertForSequenceClassification(tiny_config())  # same seed: same base weights as before LoRA
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    with torch.no_grad():
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def _saved_bytes(model, batch):
    model.train()
    meter = measure.SavedTensorMeter(model)
    with meter:
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return meter.bytes


def _flops(model, batch):
    model.train()
    _, flops = measure.count_flops(lambda: model(**batch).loss.backward())
    model.zero_grad(set_to_none=True)
    return flops


@pytest.mark.parametrize("merge", [True, False])
def test_freezing_lowest_layers_drops_saved_bytes_to_those_of_a_never_trainable_model(merge):
    batch = lora_batch(batch=8, seq=32)
    model = tiny_lora_model(dropout=0.1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    all_trainable, flops_all = _saved_bytes(model, batch), _flops(model, batch)

    AdapterFreezer(model, opt, merge=merge).freeze([0, 1], step=1)
    after, flops_after = _saved_bytes(model, batch), _flops(model, batch)

    never = tiny_lora_model(dropout=0.1, trainable_layers={2, 3})  # layers 0-1 never trainable, not merged
    reference, flops_never = _saved_bytes(never, batch), _flops(never, batch)

    assert after < 0.75 * all_trainable  # half the layers no longer keep activations for backward
    assert after == reference
    assert flops_after < flops_all
    if merge:
        assert flops_after < flops_never  # merged LoRA also costs nothing in the forward
    else:
        assert flops_after == flops_never

    AdapterFreezer(model, opt, merge=merge).freeze([2], step=2)  # deeper: less again
    assert _saved_bytes(model, batch) < after
