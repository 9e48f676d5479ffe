"""Head scores: HIS against finite differences, attention entropy's range and padding, HIES, magnitude."""

from __future__ import annotations

import math
import types

import pytest
import torch
from helpers import ARCHS, family_arch, tiny_batch, tiny_model

from runner.prune.gate import HeadGate
from runner.prune.scores import (
    attention_entropy,
    calibration_scores,
    hies_scores,
    layer_normalize,
    magnitude_scores,
    minmax,
    random_scores,
    ranking_agreement,
)

# ---------------------------------------------------------------------------
# HIS
# ---------------------------------------------------------------------------


def _loss_at(model, batch, mask) -> float:
    """The mean cross-entropy of the logits in the model's own precision (DeBERTa computes its own loss in
    float32, too coarse for a finite difference)."""
    with torch.no_grad(), HeadGate(model) as gate:
        gate.set(mask)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return float(torch.nn.functional.cross_entropy(logits, batch["labels"]))


def _rms_norms_in_float64(model):
    """The decoders' RMSNorm computes in float32 whatever the model's dtype (transformers upcasts half
    precision that way, and so downcasts float64), which puts float32 rounding into a finite difference:
    here it computes the same formula in the model's float64."""
    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    for norm in [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]:  # GPT-2 has LayerNorm
        norm.forward = types.MethodType(forward, norm)


@pytest.mark.parametrize("arch", ARCHS)
def test_his_equals_finite_differences(arch):
    model = tiny_model(arch, dtype=torch.float64)
    if family_arch(arch).decoder:
        _rms_norms_in_float64(model)
    batch = tiny_batch(batch=4, pad_from={1: 6, 3: 4})
    scores = calibration_scores(model, [batch], normalize_layers=False, his_per="batch")  # |d(mean loss)/dm|
    tokens = int(batch["attention_mask"].sum())
    assert scores.tokens == tokens and scores.examples == 4 and scores.batches == 1
    # ModernBERT applies its rotary embedding in float32 inside a float64 model: a step of 1e-5 would
    # measure float32 rounding; at 1e-2 the central difference's own error is below the tolerance
    eps = 1e-2 if arch == "modernbert" else 1e-5
    fd = torch.zeros(3, 4, dtype=torch.float64)
    for layer in range(3):
        for head in range(4):
            plus = torch.ones(3, 4, dtype=torch.float64)
            minus = torch.ones(3, 4, dtype=torch.float64)
            plus[layer, head] += eps
            minus[layer, head] -= eps
            fd[layer, head] = abs(_loss_at(model, batch, plus) - _loss_at(model, batch, minus)) / (2 * eps)
    assert fd.max() > 2e-4  # the heads matter, so the comparison means something (DeBERTa-v3's: 4e-4 here)
    torch.testing.assert_close(scores.his_raw.double() * tokens, fd, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(scores.his, scores.his_raw)  # no layer normalisation asked


def test_his_accumulates_absolute_gradients_per_batch_and_normalises_layers():
    model = tiny_model(dtype=torch.float64)
    b1, b2 = tiny_batch(batch=2, seed=3), tiny_batch(batch=2, seed=4, pad_from={0: 5})
    s1 = calibration_scores(model, [b1], normalize_layers=False)
    s2 = calibration_scores(model, [b2], normalize_layers=False)
    both = calibration_scores(model, [b1, b2], normalize_layers=True)
    # sum of |grad| per batch (gate gradient reset in between), over all non-padding tokens
    expected = (s1.his_raw.double() * s1.tokens + s2.his_raw.double() * s2.tokens) / (s1.tokens + s2.tokens)
    torch.testing.assert_close(both.his_raw.double(), expected, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(both.his.norm(dim=-1), torch.ones(3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both.his, layer_normalize(both.his_raw))
    # the model is left as it was: weights frozen flags, attention kernel, training mode
    assert model.config._attn_implementation == "sdpa" and not model.training


def _examples(batch) -> list[dict]:
    """Each example of a padded batch alone, cut to its own length (what the collator gives at batch size 1)."""
    out = []
    for i, n in enumerate(batch["attention_mask"].sum(-1).tolist()):
        out.append({k: (v[i:i + 1, :n] if k != "labels" else v[i:i + 1]) for k, v in batch.items()})
    return out


def _his_by_hand(model, batches, per_example: bool) -> torch.Tensor:
    """Sum of |dL/dm| through a plain [L, H] gate, one backward per batch (per_example: per example, alone), / tokens."""
    parts = [e for b in batches for e in _examples(b)] if per_example else batches
    total = torch.zeros(3, 4, dtype=torch.float64)
    with HeadGate(model, requires_grad=True) as gate:
        for b in parts:
            gate.mask.grad = None
            model(**b).loss.backward()
            total += gate.mask.grad.abs().double()
    return total / sum(int(b["attention_mask"].sum()) for b in batches)


def _labelled(batch, problem: str, seed: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    if problem == "regression":
        return batch | {"labels": torch.randn(len(batch["labels"]), generator=g, dtype=torch.float64)}
    if problem == "multi_label_classification":
        return batch | {"labels": torch.randint(0, 2, (len(batch["labels"]), 3), generator=g).double()}
    return batch


@pytest.mark.parametrize("problem", ["single_label_classification", "regression", "multi_label_classification"])
def test_per_example_his_equals_one_backward_per_example_by_hand(problem):
    """HIS = sum over examples of |dL(x)/dm| (each example's own loss, alone, unpadded) / tokens."""
    labels = {"regression": 1, "multi_label_classification": 3}.get(problem, 2)
    model = tiny_model(dtype=torch.float64, labels=labels)
    model.config.problem_type = problem
    batch = _labelled(tiny_batch(batch=3, pad_from={0: 5, 2: 7}), problem)
    scores = calibration_scores(model, [batch], normalize_layers=False, his_per="example")
    torch.testing.assert_close(scores.his_raw.double(), _his_by_hand(model, [batch], per_example=True),
                               rtol=1e-6, atol=1e-12)
    # and the other variant of the same pass is the per-batch one
    torch.testing.assert_close(scores.his_other.double(), _his_by_hand(model, [batch], per_example=False),
                               rtol=1e-6, atol=1e-12)
    assert scores.his_per == "example"


@pytest.mark.parametrize("arch", ARCHS)
def test_per_example_his_in_batches_of_four_equals_per_batch_his_at_batch_size_one(arch):
    model = tiny_model(arch)
    batches = [tiny_batch(batch=4, seed=6, pad_from={1: 6, 3: 4}), tiny_batch(batch=4, seed=7, pad_from={0: 3})]
    singles = [e for b in batches for e in _examples(b)]
    four = calibration_scores(model, batches, normalize_layers=False)  # his_per="example" is the default
    one = calibration_scores(model, singles, normalize_layers=False, his_per="batch")
    assert four.tokens == one.tokens and four.examples == one.examples == 8 and four.batches == 2
    torch.testing.assert_close(four.his_raw, one.his_raw, rtol=1e-5, atol=1e-6)
    # at batch size 1 the two variants are the same numbers
    torch.testing.assert_close(one.his_other, one.his, rtol=1e-5, atol=1e-7)
    # the per-batch variant differs (|.| after the mean over the batch): not the same ranking for free
    assert float((four.his_other - four.his).abs().max()) > 0.1 * float(four.his.max())


def test_per_batch_his_is_michel_et_al_s_per_batch_gradient():
    """his_per="batch": |d(mean batch loss)/dm| through a plain [L, H] gate, summed over batches (the code before)."""
    model = tiny_model(dtype=torch.float64)
    batches = [tiny_batch(batch=4, seed=8, pad_from={2: 5}), tiny_batch(batch=3, seed=9)]
    scores = calibration_scores(model, batches, normalize_layers=False, his_per="batch")
    # the same float64 sums, up to rounding; his_raw is stored in float32: at most one ulp apart
    torch.testing.assert_close(scores.his_raw, _his_by_hand(model, batches, per_example=False).float(),
                               rtol=2.4e-7, atol=0)
    normalised = calibration_scores(model, batches, his_per="batch")
    torch.testing.assert_close(normalised.his, layer_normalize(scores.his_raw))
    torch.testing.assert_close(normalised.his_other, layer_normalize(calibration_scores(model, batches, False).his_raw))
    with pytest.raises(ValueError, match="his_per must be one of example, batch"):
        calibration_scores(model, batches, his_per="token")


def test_per_example_gate_gates_each_example_by_its_own_row():
    model = tiny_model()
    batch = tiny_batch(batch=2, pad_from={1: 6})
    rows = torch.tensor([[[1.0, 0.0, 1.0, 1.0]] * 3, [[0.0, 1.0, 0.5, 1.0]] * 3])
    with torch.no_grad(), HeadGate(model) as gate:
        gate.per_example(2).copy_(rows)
        both = model(**batch).logits
    for b, e in enumerate(_examples(batch)):
        with torch.no_grad(), HeadGate(model) as gate:
            gate.set(rows[b])
            torch.testing.assert_close(both[b], model(**e).logits[0], rtol=1e-5, atol=1e-5)


def test_ranking_agreement():
    a = torch.arange(12.0).view(3, 4)
    same = ranking_agreement(a, a * 2 + 1, 0.25)
    assert same == {"spearman": pytest.approx(1.0), "lowest": 3, "shared_lowest": 3}
    flipped = ranking_agreement(a, -a, 0.5)
    assert flipped == {"spearman": pytest.approx(-1.0), "lowest": 6, "shared_lowest": 0}
    swapped = a.clone().view(-1)
    swapped[[0, 11]] = swapped[[11, 0]]  # the lowest head becomes the highest
    out = ranking_agreement(a, swapped.view(3, 4), 0.25)
    assert out["shared_lowest"] == 2 and -1 < out["spearman"] < 1


# ---------------------------------------------------------------------------
# Attention entropy
# ---------------------------------------------------------------------------


def test_entropy_is_one_for_uniform_and_zero_for_one_hot():
    n = 6
    uniform = torch.full((2, 3, n, n), 1.0 / n)
    assert torch.allclose(attention_entropy(uniform), torch.ones(2, 3))
    one_hot = torch.zeros(2, 3, n, n)
    one_hot[..., 0] = 1.0
    assert torch.allclose(attention_entropy(one_hot), torch.zeros(2, 3))
    # every row one-hot but on different keys: per-row entropy is 0, although
    # the entropy of the averaged distribution would be log n
    diagonal = torch.eye(n).expand(1, 1, n, n)
    assert attention_entropy(diagonal).item() == pytest.approx(0.0, abs=1e-7)


def test_entropy_matches_the_formula_and_ignores_padding():
    torch.manual_seed(0)
    n, t = 4, 7
    logits = torch.randn(1, 2, n, n)
    probs = logits.softmax(-1)
    per_row = -(probs * probs.log()).sum(-1)  # [1, 2, n]
    expected = per_row.sum(-1) / (n * math.log(n))
    assert torch.allclose(attention_entropy(probs), expected, atol=1e-6)
    # the same example padded to t tokens, with garbage in padding rows and keys
    padded = torch.rand(1, 2, t, t)
    padded[..., :n, :n] = probs * 0.7  # weight 0.3 left on padding keys: must not count
    padded[..., :n, n:] = 0.3 / (t - n)
    mask = torch.tensor([[1] * n + [0] * (t - n)])
    assert torch.allclose(attention_entropy(padded, mask), expected, atol=1e-6)
    # one real token: no choice, AE 0
    assert attention_entropy(torch.rand(1, 2, t, t), torch.tensor([[1] + [0] * (t - 1)])).abs().max() == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_model_entropy_per_example_does_not_depend_on_padding(arch):
    """AE of an example is the same alone and inside a padded batch (padding queries and keys excluded)."""
    model = tiny_model(arch, attn="eager")
    batch = tiny_batch(batch=2, length=10, pad_from={1: 6})
    alone = {k: v[1:2, :6] for k, v in batch.items() if k != "labels"} | {"labels": batch["labels"][1:2]}
    first = {k: v[0:1] for k, v in batch.items()}
    s_batch = calibration_scores(model, [batch])
    s_alone = calibration_scores(model, [alone])
    s_first = calibration_scores(model, [first])
    torch.testing.assert_close(s_batch.entropy, (s_alone.entropy + s_first.entropy) / 2, atol=1e-5, rtol=0)
    # and equals the formula on the probabilities transformers returns
    with torch.no_grad():
        out = model(**{k: v for k, v in alone.items() if k != "labels"}, output_attentions=True)
    manual = torch.stack([attention_entropy(a, causal=family_arch(arch).decoder)[0] for a in out.attentions])
    torch.testing.assert_close(s_alone.entropy, manual, atol=1e-5, rtol=0)
    assert 0 < float(s_alone.entropy.min()) and float(s_alone.entropy.max()) < 1


# ---------------------------------------------------------------------------
# HIES, magnitude, random
# ---------------------------------------------------------------------------


def test_hies_combination():
    his = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    ae = torch.tensor([[0.2, 0.4], [0.9, 0.1]])
    torch.testing.assert_close(minmax(his), torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    torch.testing.assert_close(hies_scores(his, ae, 0.999), 0.999 * minmax(his) + 0.001 * (1 - minmax(ae)))
    torch.testing.assert_close(hies_scores(his, ae, 0.0), 1 - minmax(ae))
    torch.testing.assert_close(hies_scores(his, ae, 0.3), 0.3 * minmax(his) + 0.7 * (1 - minmax(ae)))
    assert torch.equal(minmax(torch.full((2, 2), 3.0)), torch.zeros(2, 2))
    for bad in (1.5, -0.1, 1.0):  # alpha in [0, 1) as in the paper; alpha = 1 is HIS alone (the his criterion)
        with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\) \(alpha = 1 is HIS alone"):
            hies_scores(his, ae, bad)


def test_magnitude_and_random_scores():
    model = tiny_model()
    mag = magnitude_scores(model)
    att = model.bert.encoder.layer[2].attention
    rows = slice(8, 16)  # head 1
    with torch.no_grad():
        manual = math.sqrt(sum(float(getattr(att.self, n).weight[rows].pow(2).sum()) for n in ("query", "key", "value"))
                           + float(att.output.dense.weight[:, rows].pow(2).sum()))
    assert mag[2, 1].item() == pytest.approx(manual, rel=1e-5)
    assert torch.equal(random_scores((3, 4), 7), random_scores((3, 4), 7))
    assert not torch.equal(random_scores((3, 4), 7), random_scores((3, 4), 8))


def test_every_criterion_has_one_scorer_and_the_settings_know_them_all():
    from runner.preflight.schema import CRITERIA as SETTINGS_CRITERIA
    from runner.prune.scores import CRITERIA, SCORERS

    assert set(SCORERS) == set(CRITERIA) == {*SETTINGS_CRITERIA, "none"}
