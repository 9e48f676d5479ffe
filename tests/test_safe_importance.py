"""safe.importance=own (an adapter's own effect: the same modules with and without it, same step, same input)
against drift (now versus step 0), on tiny random BERTs with real PEFT LoRA and our bottleneck adapters."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import BertForSequenceClassification

from helpers import lora_batch, tiny_config, tiny_lora_model

from runner.adapters import add_bottleneck_adapters, layer_index
from runner.safe.cka import cka, token_matrix
from runner.safe.importance import RepresentationProbe, probe_targets

LAYERS = 4


def _model(adapter: str):
    if adapter == "lora":
        return tiny_lora_model(layers=LAYERS)
    torch.manual_seed(0)
    acfg = OmegaConf.create({"reduction_factor": 4, "activation": "gelu", "init_scale": 1e-3,
                             "target_modules": ["attention.output.dense", "output.dense"]})
    return add_bottleneck_adapters(BertForSequenceClassification(tiny_config(layers=LAYERS)), acfg)


def _set_adapters(model, layer: int | None, std: float):
    """``std`` 0: the output weights (LoRA's B, the bottleneck's up projection) of the adapters of ``layer``
    (None: all) are zero, the adapter exactly the identity (as LoRA starts); else all their weights random."""
    g = torch.Generator().manual_seed(11)
    output = ("lora_B", ".bottleneck.up.") if not std else ("lora_", ".bottleneck.")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(o in name for o in output) and (layer is None or layer_index(name) == layer):
                p.copy_(torch.randn(p.shape, generator=g) * std if std else torch.zeros_like(p))


def _batch():
    return {k: v for k, v in lora_batch(seed=3).items() if k != "labels"}


@pytest.mark.parametrize("representation", ["adapted", "layer"])
@pytest.mark.parametrize("adapter", ["lora", "bottleneck"])
def test_a_zero_adapter_has_no_own_importance_even_when_a_lower_one_moved(adapter, representation):
    torch.set_num_threads(1)
    model = _model(adapter)
    _set_adapters(model, None, 0.0)
    targets = probe_targets(model, representation)
    probes = {kind: RepresentationProbe(model, _batch(), targets, max_tokens=100, importance=kind)
              for kind in ("drift", "own")}
    for probe in probes.values():
        probe.set_reference()
    _set_adapters(model, 0, 1.0)  # the lowest adapter changes a lot; the ones above stay exactly the identity
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    modules = [n for n, _ in model.named_modules()]
    drift = probes["drift"].importance(range(LAYERS))
    own = probes["own"].importance(range(LAYERS))
    for layer in (1, 2, 3):
        assert own[layer] == pytest.approx(0.0, abs=1e-9)  # CKA(with, without) = 1: its adapter does nothing
        assert drift[layer] > 1e-4 and drift[layer] > 1e5 * own[layer]  # drift sees the change from below
    assert own[0] > 1e-4 and drift[0] > 1e-4
    # the probe left the model as it was: nothing switched off, no module added, trainable set untouched
    assert [n for n, _ in model.named_modules()] == modules
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all("forward" not in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_own_importance_is_one_minus_cka_with_against_without_by_hand(kernel):
    torch.set_num_threads(1)
    model = tiny_lora_model(layers=2)  # LoRA B random: every adapter does something
    batch = _batch()
    probe = RepresentationProbe(model, batch, probe_targets(model, "adapted"), kernel=kernel, max_tokens=60,
                                importance="own")
    probe.set_reference()
    got = probe.importance([1])[1]
    names = probe.targets[1]  # layer 1's query and value projections
    inputs = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: inputs.__setitem__(n, a[0]))
               for n in names]
    model.eval()
    with torch.no_grad():
        model(**batch)
        values = []
        for n in names:
            lora, x = model.get_submodule(n), inputs[n]
            without = lora.base_layer(x)
            with_ = without + lora.lora_B["default"](lora.lora_A["default"](x)) * lora.scaling["default"]
            pick = probe.token_idx  # the probe's fixed subset of the non-padding tokens
            values.append(cka(token_matrix(with_, batch["attention_mask"])[pick],
                              token_matrix(without, batch["attention_mask"])[pick], kernel))
    for h in handles:
        h.remove()
    assert probe.n_tokens == 60 and len(values) == 2 and all(v < 1 - 1e-6 for v in values)
    assert got == pytest.approx(1.0 - float(np.mean(values)), abs=1e-9)


def test_own_costs_one_base_projection_per_adapted_module_in_the_same_forward():
    torch.set_num_threads(1)
    model = tiny_lora_model(layers=LAYERS)
    targets = probe_targets(model, "adapted")
    drift = RepresentationProbe(model, _batch(), targets, importance="drift")
    own = RepresentationProbe(model, _batch(), targets, importance="own")
    drift.capture_pairs(own=False)
    plain = drift.last_flops
    now, off = own.capture_pairs(own=True)
    # query and value: 2 extra [tokens x 32] @ [32 x 32] products per layer on the probe's tokens only
    # (padding dropped before the base projection runs), nothing else (one model forward)
    tokens = int(_batch()["attention_mask"].sum())
    assert tokens < _batch()["input_ids"].numel() and own.n_tokens == tokens
    assert own.last_flops - plain == LAYERS * 2 * 2 * tokens * 32 * 32
    assert set(now) == set(off) and all(a.shape == b.shape for k in now for a, b in zip(now[k], off[k]))


def test_own_needs_adapted_modules_that_keep_their_base_layer():
    model = BertForSequenceClassification(tiny_config(layers=2))
    with pytest.raises(ValueError, match="has none"):
        RepresentationProbe(model, _batch(), {0: ["bert.encoder.layer.0.attention.self.query"]}, importance="own",
                            adapted={0: ["bert.encoder.layer.0.attention.self.query"]})
    with pytest.raises(ValueError, match="unknown safe.importance 'mine'"):
        RepresentationProbe(model, _batch(), {}, importance="mine")
