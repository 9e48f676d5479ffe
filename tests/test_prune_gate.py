"""The head gate and physical removal: gate 1 changes nothing, gate 0 equals removing the head."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import ARCHS, family_arch, tiny_batch, tiny_model

from runner.arch import architecture_of
from runner.preflight.errors import ModelError
from runner.prune.gate import HeadGate, encoder_layers, supports_head_gating, unwrap_peft
from runner.prune.physical import count_parameters, heads_kept, prune_heads


def _logits(model, batch):
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gate_at_one_changes_nothing(arch, attn):
    model = tiny_model(arch, attn=attn)
    batch = tiny_batch(pad_from={1: 5})
    ref = _logits(model, batch)
    with HeadGate(model) as gate:
        assert torch.equal(gate.mask, torch.ones(3, 4))
        assert torch.equal(_logits(model, batch), ref)
    assert torch.equal(_logits(model, batch), ref)  # hooks removed on exit


def _mask_with_empty_layer():
    pruned = torch.zeros(3, 4, dtype=torch.bool)
    pruned[0, [1, 3]] = True
    pruned[1, :] = True  # the whole layer goes
    pruned[2, 2] = True
    return pruned


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gate_zero_equals_physical_removal(arch, attn):
    model = tiny_model(arch, attn=attn)
    batch = tiny_batch(pad_from={0: 6, 2: 3})
    pruned = _mask_with_empty_layer()
    full = _logits(model, batch)
    with HeadGate(model) as gate:
        gate.set((~pruned).float())
        gated = _logits(model, batch)
    small = prune_heads(copy.deepcopy(model), pruned)
    physical = _logits(small, batch)
    torch.testing.assert_close(physical, gated, atol=1e-5, rtol=0)
    assert (physical - full).abs().max() > 1e-4  # removing heads did change the output
    assert heads_kept(small) == [2, 0, 3]
    family, layers = architecture_of(small), encoder_layers(small)
    att0 = family.attention_module(layers[0])
    conv1d = family.name == "gpt2"  # Conv1D stores its weight [in, out]
    shape = lambda rows, cols: (cols, rows) if conv1d else (rows, cols)  # noqa: E731
    assert all(att0.get_submodule(name).weight.shape == shape(2 * 8 * (3 if len(family.qkv) == 1 else 1), 32)
               for name in family.qkv[:1 if family.decoder else 3])  # ModernBERT, GPT-2: q, k and v fused in one projection
    assert family.output_projection(layers[0]).weight.shape == shape(32, 16)
    assert family.output_projection(layers[1]).weight.shape == shape(32, 0)  # the emptied layer adds only its bias
    # parameters removed per head: its rows of q, k, v (DeBERTa: and of its position projections) with their
    # biases, and its columns of W_o
    removed = count_parameters(model) - count_parameters(small)
    if family.decoder and family.name != "gpt2":  # a query head takes its q rows and o columns; a key/value head goes with its group's last query head
        att = family.attention_module(encoder_layers(model)[0])
        group = att.num_key_value_groups
        kv_gone = int(pruned.view(3, -1, group).all(-1).sum())
        bias = lambda proj: 8 if proj.bias is not None else 0  # noqa: E731  (Qwen2: q/k/v biases)
        assert removed == int(pruned.sum()) * (2 * 8 * 32 + bias(att.q_proj)) + kv_gone * 2 * (8 * 32 + bias(att.k_proj))
        return
    *qkv, _ = architecture_of(model).head_weights(encoder_layers(model)[0])  # q/k/v (with their biases), then W_o
    bias = 8 if getattr(model.config, "attention_bias", True) else 0  # ModernBERT's projections have none
    per_head = sum(len(starts) * (8 * 32 + bias) for _, _, starts in qkv) + 8 * 32
    assert removed == int(pruned.sum()) * per_head


def test_pruned_model_is_cheaper():
    from runner.measure import count_flops

    model = tiny_model("bert")
    batch = {k: v for k, v in tiny_batch().items() if k != "labels"}
    small = prune_heads(copy.deepcopy(model), _mask_with_empty_layer())
    with torch.no_grad():
        _, f_full = count_flops(lambda: model(**batch))
        _, f_small = count_flops(lambda: small(**batch))
    assert 0 < f_small < f_full


def test_prune_refuses_twice_and_wrong_shapes():
    model = prune_heads(tiny_model(), _mask_with_empty_layer())
    with pytest.raises(ValueError, match="already pruned"):
        prune_heads(model, torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ModelError, match="already pruned"):
        HeadGate(model)
    with pytest.raises(ValueError, match="shape"):
        prune_heads(tiny_model(), torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("arch", ARCHS)
def test_gate_through_merged_lora_and_bottleneck(arch):
    from omegaconf import OmegaConf
    from peft import LoraConfig, TaskType, get_peft_model

    from runner.adapters import add_bottleneck_adapters

    batch = tiny_batch(pad_from={1: 4})
    pruned = _mask_with_empty_layer()
    # LoRA on query/value: merged first, outputs unchanged by the merge
    family = family_arch(arch)
    peft_model = get_peft_model(tiny_model(arch), LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=list(family.lora_targets)))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft_model.eval()
    ref = _logits(peft_model, batch)
    # SAFE merges a frozen layer's LoRA modules in place (PEFT merge()); unwrapping must not add them twice
    for name, module in peft_model.named_modules():
        if ".layer.0." in name and hasattr(module, "merge") and hasattr(module, "lora_A"):
            module.merge()
    torch.testing.assert_close(_logits(peft_model, batch), ref, atol=1e-5, rtol=0)
    with pytest.raises(ModelError, match="unwrap_peft"):
        HeadGate(peft_model)
    merged = unwrap_peft(peft_model)
    torch.testing.assert_close(_logits(merged, batch), ref, atol=1e-5, rtol=0)
    with HeadGate(merged) as gate:
        gate.set((~pruned).float())
        gated = _logits(merged, batch)
    torch.testing.assert_close(_logits(prune_heads(merged, pruned), batch), gated, atol=1e-5, rtol=0)
    # bottleneck adapter wrapped around the attention output projection (BERT's attention.output.dense)
    acfg = OmegaConf.create({"name": "bottleneck", "target_modules": [family.output], "reduction_factor": 4,
                             "activation": "gelu", "init_scale": 0.1})
    model = add_bottleneck_adapters(tiny_model(arch), acfg).eval()
    with HeadGate(model) as gate:
        gate.set((~pruned).float())
        gated = _logits(model, batch)
    torch.testing.assert_close(_logits(prune_heads(model, pruned), batch), gated, atol=1e-5, rtol=0)


def test_unsupported_architectures_are_refused_clearly():
    from transformers import BloomConfig, BloomForSequenceClassification

    bloom = BloomForSequenceClassification(BloomConfig(n_layer=1, n_head=2, hidden_size=8, vocab_size=50))
    assert not supports_head_gating(bloom)
    with pytest.raises(ModelError, match=r"model type bloom is not supported; supported: .*bert.*distilbert.*gpt2.*llama.*mpnet"):
        HeadGate(bloom)
    with pytest.raises(ModelError, match="model type bloom"):
        prune_heads(bloom, torch.zeros(1, 2, dtype=torch.bool))
    albert = tiny_model("albert")  # one layer's weights shared across depth: no per-layer head to remove
    with pytest.raises(ModelError, match="ALBERT shares one layer's weights across all its layers"):
        HeadGate(albert)
    assert all(supports_head_gating(tiny_model(family)) for family in ARCHS)