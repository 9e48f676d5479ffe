"""The measurements are exact on cases small enough to count by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from helpers import ARCHS, family_arch, tiny_batch, tiny_model

from runner.measure import (FlopMeter, SavedTensorMeter, StepMeter, batch_key, count_flops, measurement_overhead_s,
                            trainable_signature)


def tiny_bert(attn: str, **kw) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0, **kw)
    config._attn_implementation = attn
    return BertForSequenceClassification(config).eval()


def expected_forward_flops(batch: int, seq: int, hidden=32, inter=64, layers=2, labels=2) -> int:
    tokens = batch * seq
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inter)  # q,k,v,o + ffn in/out
    per_layer += 2 * 2 * batch * seq * seq * hidden  # QK^T and AV over all heads
    pooler = 2 * batch * hidden * hidden
    classifier = 2 * batch * hidden * labels
    return layers * per_layer + pooler + classifier


def test_forward_flops_match_the_architecture_for_sdpa_and_eager():
    ids = torch.randint(0, 50, (3, 16))
    for attn in ("sdpa", "eager"):
        model = tiny_bert(attn)
        with torch.no_grad():
            _, flops = count_flops(model, input_ids=ids)
        # sdpa takes the fused CPU flash-attention kernel here, which the stock counter misses
        assert flops == expected_forward_flops(3, 16), attn


def test_training_step_flops_are_forward_plus_backward():
    model = tiny_bert("sdpa").train()
    ids, labels = torch.randint(0, 50, (2, 8)), torch.tensor([0, 1])
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)

    def step():
        model(input_ids=ids, labels=labels).loss.backward()

    _, flops = count_flops(step)
    fwd = expected_forward_flops(2, 8)
    # every matmul above the embeddings has weight and input gradients: backward = 2 x forward,
    # except the first layer's Q/K/V/FFN inputs, whose input gradient (to the frozen embeddings) is not needed
    assert 2.5 * fwd < flops <= 3 * fwd


def test_flop_meter_counts_once_per_shape_and_trainable_set():
    model = tiny_bert("sdpa")
    meter = FlopMeter()
    ids = torch.randint(0, 50, (2, 8))
    key = (batch_key({"input_ids": ids}), trainable_signature(model))
    for _ in range(3):
        with meter.context(key) as step, torch.no_grad():
            model(input_ids=ids)
    assert step.flops == expected_forward_flops(2, 8) and meter.counted_steps == 1
    model.classifier.weight.requires_grad_(False)
    assert trainable_signature(model) != key[1]


def test_saved_tensor_meter_counts_unique_activation_storages():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    with SavedTensorMeter(net) as meter:
        net(x).sum().backward()
    # Linear 1 saves x, ReLU saves its output, Linear 2 saves that same output: 5*8 + 5*16 floats
    assert meter.bytes == (5 * 8 + 5 * 16) * 4


def test_saved_tensor_meter_ignores_frozen_prefix():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    for p in net[0].parameters():
        p.requires_grad_(False)
    with SavedTensorMeter(net) as meter:
        net(torch.randn(5, 8)).sum().backward()
    assert meter.bytes == 5 * 16 * 4  # nothing below the first trainable layer is kept


def _fwd_bwd(model, batch):
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()


@pytest.mark.parametrize("attn, lora", [("sdpa", False), ("sdpa", True), ("eager", True)])
def test_flops_of_unseen_lengths_are_predicted_exactly_from_three_counted(attn, lora):
    """Variable-length training: FlopCounterMode runs on the first four lengths only (three to fit, one to
    check); every later length is predicted, and equals what the counter itself gives on that batch."""
    model = tiny_bert(attn).train()
    if lora:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"]))
    meter, signature = FlopMeter(), trainable_signature(model)
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 12), (4, 20), (4, 7), (4, 33), (4, 15), (3, 40), (4, 9), (2, 27)]
    for n, length in shapes:
        batch = {"input_ids": torch.randint(1, 50, (n, length), generator=g),
                 "attention_mask": torch.ones(n, length, dtype=torch.long), "labels": torch.randint(0, 2, (n,), generator=g)}
        with meter.context_for(batch, signature) as step:
            _fwd_bwd(model, batch)
        _, exact = count_flops(_fwd_bwd, model, batch)
        assert step.flops == exact, (n, length)
    assert meter.counted_steps == 4 and meter.predicted_steps == 4


def test_a_model_whose_flops_are_not_quadratic_in_length_is_counted_at_every_length():
    class Odd(nn.Module):  # FLOPs ~ L^3: the check at the fourth length catches it
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

        def forward(self, input_ids):
            x = input_ids.float()
            n, length = x.shape
            pairs = (x.unsqueeze(2) @ x.unsqueeze(1)).reshape(n, 1, length * length)  # 2 L^2 FLOPs
            return (self.w * (pairs @ torch.ones(n, length * length, length))).sum()  # 2 L^3 FLOPs

    model, meter = Odd(), FlopMeter()
    for length in (3, 5, 8, 11, 13):
        ids = torch.ones(2, length, dtype=torch.long)
        with meter.context_for({"input_ids": ids}, 0) as step:
            model(ids)
        _, exact = count_flops(model, ids)
        assert step.flops == exact
    assert meter.predicted_steps == 0 and not meter.by_length


def _saved_by_step(model, shapes, check_every):
    """Saved-for-backward bytes per micro-batch through StepMeter, with hooks sampled every ``check_every``."""
    meter, signature = StepMeter(model, False, True, torch.device("cpu"), check_every=check_every), trainable_signature(model)
    g = torch.Generator().manual_seed(0)
    out = []
    for n, length in shapes:
        batch = {"input_ids": torch.randint(1, 50, (n, length), generator=g),
                 "attention_mask": torch.ones(n, length, dtype=torch.long), "labels": torch.randint(0, 2, (n,), generator=g)}
        batch["attention_mask"][0, length // 2:] = 0
        with meter.counting(batch, signature):
            with meter.saving(batch, signature):
                loss = model(**batch).loss
            loss.backward()
        meter.add(batch, loss)
        out.append(meter.end_step())
    return out, meter


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_saved_bytes_are_measured_on_a_sample_and_predicted_exactly_between(attn):
    """Hooks run on the first lengths of each (batch size, trainable set) and on every 5th micro-batch; every
    other step's bytes equal what the hooks measure on that step (check_every=1 hooks every step)."""
    model = tiny_bert(attn).train()
    shapes = [(4, 12), (4, 20), (4, 7), (4, 33), (4, 15), (4, 40), (4, 9), (2, 27), (4, 18), (4, 25), (4, 11), (4, 30)]
    sampled, meter = _saved_by_step(model, shapes, check_every=5)
    every, every_meter = _saved_by_step(model, shapes, check_every=1)
    assert [s["saved_bytes"] for s in sampled] == [s["saved_bytes"] for s in every]
    assert every_meter.saved_predicted == 0 and every_meter.saved_measured == len(shapes)
    # hooked: 4 lengths at n=4 (three to fit, one to check), micro-batches 5 and 10 (checks), the lone n=2 batch
    assert [s["measured"] for s in sampled] == [True] * 5 + [False] * 2 + [True, False, True, False, False]
    assert meter.saved_measured == 7 and meter.saved_predicted == 5 and meter.saved_fit.enabled


def test_saved_bytes_of_a_shape_seen_before_are_not_measured_again():
    """Fixed-length batches (RTE at 128 tokens, or pad_to_multiple_of): the first is measured, the rest reuse it."""
    model = tiny_bert("sdpa").train()
    steps, meter = _saved_by_step(model, [(4, 16)] * 5, check_every=4)
    assert [s["measured"] for s in steps] == [True, False, False, True, False]  # the 4th is a check
    assert len({s["saved_bytes"] for s in steps}) == 1 and meter.saved_fit.enabled


def test_a_whole_batchs_saved_bytes_are_predicted_from_its_split_chunks():
    """SAFE's budget_mode asks, before running a micro-batch whole, what it would save: from chunks of half
    its examples measured at the same length (exactly that shape), or from their fitted lengths, scaled by
    the examples; a few bytes from what hooks measure on the whole batch (check_every=1 as well)."""
    model = tiny_bert("sdpa").train()
    for check_every in (1, 100):
        _, meter = _saved_by_step(model, [(2, 12), (2, 20), (2, 7), (2, 33)], check_every=check_every)
        signature = trainable_signature(model)
        whole = {"input_ids": torch.ones(4, 20, dtype=torch.long), "attention_mask": torch.ones(4, 20, dtype=torch.long),
                 "labels": torch.zeros(4, dtype=torch.long)}
        whole["attention_mask"][0, 10:] = 0  # padded, as the chunks were (a mask-free batch takes another kernel)
        longer = {k: torch.cat([v, v[:, :7]], 1) if v.dim() == 2 else v for k, v in whole.items()}  # an unseen length
        assert meter.predict_saved(whole, signature) is None  # no whole batch of 4 seen, no chunk size given
        assert meter.predict_saved(longer, signature, rows=3) is None  # no chunks of 3 seen
        measured = []
        for batch in (whole, longer):
            with SavedTensorMeter(model) as saved:
                model(**batch).loss.backward()
            measured.append(saved.bytes)
        predicted = [meter.predict_saved(whole, signature, rows=2), meter.predict_saved(longer, signature, rows=2)]
        # off by the few per-batch bytes (position ids, the loss) counted twice: 0.3% on this toy, 1e-7 on MiniLM
        assert predicted == pytest.approx(measured, rel=5e-3), check_every
        assert all(p >= m for p, m in zip(predicted, measured))  # the few bytes off err on the side of splitting


def test_saved_bytes_that_a_check_contradicts_are_measured_on_every_step_from_then_on(caplog):
    meter = StepMeter(nn.Linear(1, 1), False, True, torch.device("cpu"), check_every=3)
    group = ((("input_ids", (4, "L")),), 0)
    for length in (5, 6, 7, 8):  # a fit that passes its own check: 10 bytes per position
        meter.saved_fit.learn(group, length, 10.0 * length)
    batch = {"input_ids": torch.ones(4, 9, dtype=torch.long)}
    with caplog.at_level("WARNING"):
        for _ in range(4):  # no forward inside: 0 bytes saved, not the 90 predicted
            with meter.saving(batch, 0):
                pass
    # micro-batches 1, 2 predicted; 3 checked and contradicted; 4 measured since
    assert not meter.saved_fit.enabled and "saved-for-backward bytes are not quadratic" in caplog.text
    assert meter.saved_predicted == 2 and meter.saved_measured == 2 and meter.saved == 90


def test_measurement_overhead_is_the_measured_steps_time_beyond_the_unmeasured_rate():
    steps = [{"step_time_s": 3.0, "padded_tokens": 100, "measured": True},   # unmeasured: 1 s per 100 tokens; 2 s beyond
             {"step_time_s": 1.0, "padded_tokens": 100, "measured": False},
             {"step_time_s": 2.0, "padded_tokens": 200, "measured": False},
             {"step_time_s": 4.5, "padded_tokens": 300, "measured": True},   # 1.5 s beyond
             {"step_time_s": 0.5, "padded_tokens": 100, "measured": True}]   # faster than the rate: 0
    assert measurement_overhead_s(steps) == pytest.approx(3.5)
    assert measurement_overhead_s([{"step_time_s": 1.0, "padded_tokens": 10, "measured": True}]) is None


def test_phase_timer_subtracts_only_the_time_an_inner_phase_spent_inside_the_outer_one():
    import time

    from runner.measure import PhaseTimer

    timer = PhaseTimer()
    with timer.phase("train"):
        time.sleep(0.05)
        with timer.phase("eval"):
            time.sleep(0.03)
    with timer.phase("eval"):  # the final evaluation, after training
        time.sleep(0.04)
    assert timer.seconds["eval"] == pytest.approx(0.07, abs=0.02)
    assert timer.nested[("train", "eval")] == pytest.approx(0.03, abs=0.01)
    assert timer.without("train", "eval") == pytest.approx(0.05, abs=0.01)
    assert timer.without("train", "eval") > timer.seconds["train"] - timer.seconds["eval"]


def test_phase_times_carry_over_a_resume_open_phases_included(monkeypatch):
    """A checkpoint taken inside ``train`` carries the training time so far; the resumed run adds its own."""
    import json
    import types

    import runner.measure as measure

    clock = iter([0.0, 1.0, 3.0, 10.0,  # train opens at 0, eval from 1 to 3, the checkpoint's state at 10
                  100.0, 104.0,         # the resumed run's train phase: 4 s
                  200.0, 300.0])        # the interrupted run's train phase closes; a fresh timer's state
    monkeypatch.setattr(measure.run_clock, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    before = measure.PhaseTimer()
    with before.phase("train"):
        with before.phase("eval"):
            pass
        state = json.loads(json.dumps(before.state_dict()))  # what meta.json holds, mid-phase
        assert state == {"seconds": {"train": 10.0, "eval": 2.0}, "nested": [["train", "eval", 2.0]], "paused_s": 0.0}
        after = measure.PhaseTimer()
        after.load_state_dict(state)
        with after.phase("train"):
            pass
    assert after.without("train", "eval") == 10.0 - 2.0 + 4.0
    assert after.seconds["eval"] == 2.0
    assert measure.PhaseTimer().state_dict() == {"seconds": {}, "nested": [], "paused_s": 0.0}


def test_phase_peaks_credit_each_peak_to_the_phases_open_when_it_happened():
    """Per-phase peak GPU memory (results.json memory.cuda_peak_bytes_by_phase): the peak since the last phase
    boundary goes to every phase open then. The device's counter is replaced by a script of peaks (this machine
    has no GPU; scripts/gpu_check.sh runs the real one)."""
    from runner.measure import PhaseTimer

    peaks = iter([5, 40, 70, 30, 20, 90, 10])  # what the device's peak counter reads at each boundary, then resets
    timer = PhaseTimer(peak_reader=lambda device: next(peaks))
    gpu = torch.device("cpu")  # any device: the reader stands in for the CUDA counters
    with timer.phase("train", gpu):  # boundary: 5 (before training: nobody's)
        with timer.phase("eval", gpu):  # 40: train's so far
            pass  # 70: eval's peak (and train's, which is open)
        # 30 at the end of train: train only
    with timer.phase("eval", gpu):  # 20: nobody's
        pass  # 90: the final evaluation
    with timer.phase("setup"):  # no device: no memory boundary
        pass
    assert timer.peak_bytes == {"train": 70, "eval": 90}
    assert next(peaks) == 10  # setup read nothing
    assert PhaseTimer().peak_bytes == {}


@pytest.mark.parametrize("family", ARCHS)
def test_the_total_only_counter_counts_what_flopcountermode_counts(family):
    """TotalFlopCounter (no per-module attribution) gives FlopCounterMode's total for a training step's
    forward and backward, on every model family, SDPA and eager where the family has both."""
    from torch.utils.flop_counter import FlopCounterMode

    from runner.measure import TotalFlopCounter, register_missing_flop_formulas

    register_missing_flop_formulas()
    for attn in ("sdpa", "eager") if family_arch(family).supports_sdpa else ("eager",):
        model = tiny_model(family, layers=2, attn=attn).train()
        batch = tiny_batch(batch=3, length=9, pad_from={0: 6})
        totals = []
        for counter in (FlopCounterMode(display=False), TotalFlopCounter()):
            with counter:
                model(**batch).loss.backward()
            totals.append(counter.get_total_flops())
        assert totals[0] == totals[1] > 0, (family, attn, totals)
