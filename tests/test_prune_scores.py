"""Head scores: HIS against finite differences, attention entropy's range and padding, HIES, magnitude."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ARCHS, tiny_batch, tiny_model

from runner.prune.gate import HeadGate
from runner.prune.scores import (
    attention_entropy,
    calibration_scores,
    hies_scores,
    layer_normalize,
    magnitude_scores,
    minmax,
    random_scores,
)

# ---------------------------------------------------------------------------
# HIS
# ---------------------------------------------------------------------------


def _loss_at(model, batch, mask) -> float:
    with torch.no_grad(), HeadGate(model) as gate:
        gate.set(mask)
        return float(model(**batch).loss)


@pytest.mark.parametrize("arch", ARCHS)
def test_his_equals_finite_differences(arch):
    model = tiny_model(arch, dtype=torch.float64)
    batch = tiny_batch(batch=4, pad_from={1: 6, 3: 4})
    scores = calibration_scores(model, [batch], normalize_layers=False)
    tokens = int(batch["attention_mask"].sum())
    assert scores.tokens == tokens and scores.examples == 4 and scores.batches == 1
    eps = 1e-5
    fd = torch.zeros(3, 4, dtype=torch.float64)
    for layer in range(3):
        for head in range(4):
            plus = torch.ones(3, 4, dtype=torch.float64)
            minus = torch.ones(3, 4, dtype=torch.float64)
            plus[layer, head] += eps
            minus[layer, head] -= eps
            fd[layer, head] = abs(_loss_at(model, batch, plus) - _loss_at(model, batch, minus)) / (2 * eps)
    assert fd.max() > 1e-3  # the heads matter, so the comparison means something
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
    manual = torch.stack([attention_entropy(a)[0] for a in out.attentions])
    torch.testing.assert_close(s_alone.entropy, manual, atol=1e-5, rtol=0)
    assert 0 < float(s_alone.entropy.min()) and float(s_alone.entropy.max()) < 1


# ---------------------------------------------------------------------------
# HIES, magnitude, random
# ---------------------------------------------------------------------------


def test_hies_combination():
    his = torch.tensor([[1.0, 3.0], [2.0, 5.0]])
    ae = torch.tensor([[0.2, 0.4], [0.9, 0.1]])
    torch.testing.assert_close(minmax(his), torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    torch.testing.assert_close(hies_scores(his, ae, 1.0), minmax(his))
    torch.testing.assert_close(hies_scores(his, ae, 0.0), 1 - minmax(ae))
    torch.testing.assert_close(hies_scores(his, ae, 0.3), 0.3 * minmax(his) + 0.7 * (1 - minmax(ae)))
    assert torch.equal(minmax(torch.full((2, 2), 3.0)), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        hies_scores(his, ae, 1.5)


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
    from runner.prune.scores import CRITERIA, SCORERS
    from runner.schema import CRITERIA as SETTINGS_CRITERIA

    assert set(SCORERS) == set(CRITERIA) == {*SETTINGS_CRITERIA, "none"}
