"""The real pipeline (Hydra config -> data -> model -> Accelerate loop -> results) on a tiny model."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import compose_config, read_steps, save_tiny_model_dir
from wandb_files import find_run_file, read_run

from runner.results import undeclared
from runner.train import run


def train(overrides, tmp_path, name="run"):
    out = tmp_path / name
    results = run(compose_config(overrides, output_dir=out))
    return results, out


def test_adapter_run_writes_every_measurement(tiny_overrides, tmp_path):
    results, out = train(tiny_overrides, tmp_path)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == results["status"] == "completed"
    assert undeclared(on_disk) == []  # every key is declared in runner.results (docs/results.md)
    assert set(on_disk["metrics"]) >= {"accuracy", "f1", "loss", "num_examples"}
    assert on_disk["metrics"]["num_examples"] == 32
    mem, flops, time, params = on_disk["memory"], on_disk["flops"], on_disk["time"], on_disk["params"]
    assert mem["saved_for_backward_peak_bytes"] >= mem["saved_for_backward_mean_bytes"] > 0
    assert mem["state_plus_saved_peak_bytes"] == (mem["saved_for_backward_peak_bytes"] + mem["param_bytes"]
                                                   + mem["grad_bytes"] + mem["optimizer_state_bytes"])
    assert mem["optimizer_state_bytes"] == 2 * mem["trainable_param_bytes"]  # AdamW: two moments per weight
    assert mem["process_max_rss_bytes"] > mem["param_bytes"]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == on_disk["steps"]["total"] == 4  # 64 examples / batch 16
    assert flops["train_total"] == sum(s["flops"] for s in steps) > 0
    assert flops["eval_per_pass"] > 0
    assert time["train_s"] > 0 and time["step_mean_s"] > 0 and time["train_tokens_per_s"] > 0
    # the final evaluation runs after the train phase: train time still holds every step
    assert time["train_s"] >= sum(s["step_time_s"] for s in steps)
    assert 0 < params["params_trainable"] < params["params_total"]
    assert params["params_adapter"] == 2 * 2 * 8 * (32 + 32)  # 2 layers x (query, value) x r(A+B)
    prov = on_disk["provenance"]
    assert prov["packages"]["torch"] and prov["seed"] == 42 and prov["device"] == "cpu"
    assert (out / "model" / "adapter_model.safetensors").is_file()
    saved_cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert saved_cfg["trainer"]["batch_size"] == 16 and saved_cfg["output_dir"] == str(out)


def test_sampled_activation_measurement_reports_the_same_bytes_as_hooks_on_every_step(tiny_overrides, tmp_path):
    """The default measures saved-for-backward bytes on a sample of MRPC's variable-length steps and predicts
    the rest; every step's bytes equal a run with hooks on every step, and results say how each was got."""
    common = [*tiny_overrides, "task.max_train_samples=160", "trainer.batch_size=8", "trainer.activations_check_every=7",
              "trainer.max_seq_length=128"]
    sampled, out_s = train(common, tmp_path, "sampled")
    every, out_e = train([*common, "trainer.activations_check_every=1"], tmp_path, "every")
    steps_s, steps_e = read_steps(out_s), read_steps(out_e)
    assert [s["saved_bytes"] for s in steps_s] == [s["saved_bytes"] for s in steps_e]
    assert len({s["padded_length"] for s in steps_s}) > 4  # variable lengths: some were predicted
    mem_s, mem_e = sampled["memory"], every["memory"]
    assert mem_s["saved_for_backward_peak_bytes"] == mem_e["saved_for_backward_peak_bytes"] > 0
    assert mem_e["saved_for_backward_predicted_micro_batches"] == 0
    assert mem_e["saved_for_backward_measured_micro_batches"] == 20
    assert 0 < mem_s["saved_for_backward_predicted_micro_batches"] < 20
    assert (mem_s["saved_for_backward_measured_micro_batches"] + mem_s["saved_for_backward_predicted_micro_batches"]
            == 20)
    assert "hooks" in mem_s["saved_for_backward_method"]
    t = sampled["time"]
    assert 0 < t["measured_steps"] < 20 and t["measure_overhead_s"] >= 0
    assert t["measured_steps"] == sum(s["measured"] for s in steps_s)


def fake_run_clock(monkeypatch):
    """The clock every duration the runner reports reads (runner.run_clock), faked: it moves 1 ms per padded
    token of a training forward and otherwise only when the test moves it (``clock.now``)."""
    import types

    from runner import run_clock
    from runner import train as train_module

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(run_clock, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    forward_module = train_module.Recipe._forward_module

    def timed_forward(self, batch):
        module = forward_module(self, batch)

        def forward(**kwargs):
            clock.now += 1e-3 * kwargs["input_ids"].numel()
            return module(**kwargs)
        return forward

    monkeypatch.setattr(train_module.Recipe, "_forward_module", timed_forward)
    return clock


def test_the_runs_estimate_of_what_measuring_cost_finds_a_known_cost(tiny_overrides, tmp_path, monkeypatch):
    """time.measure_overhead_s, checked on a run whose costs are known: the clock the loop reads is a fake
    that moves only when a micro-batch runs (1 ms per padded token) and when a FLOP count starts (0.3 s
    more). The estimate must be exactly 0.3 s per counted step: its method, not this machine's timing."""
    from runner import measure

    clock = fake_run_clock(monkeypatch)
    enter = measure.TotalFlopCounter.__enter__

    def counting_costs_more(self):
        clock.now += 0.3
        return enter(self)

    monkeypatch.setattr(measure.TotalFlopCounter, "__enter__", counting_costs_more)
    results, out = train([*tiny_overrides, "task.max_train_samples=160", "trainer.batch_size=8", "trainer.max_seq_length=128",
                          "trainer.measure_activations=false"], tmp_path, "known")
    counted = results["flops"]["counted_train_shapes"]
    assert 4 <= counted == results["time"]["measured_steps"] < 20  # variable lengths: the rest predicted
    assert results["time"]["measure_overhead_s"] == pytest.approx(0.3 * counted)


def test_a_steps_time_is_its_own_not_the_evaluation_before_it(tiny_overrides, tmp_path, monkeypatch):
    """A fake clock moves 1 ms per padded token of a training forward and 100 s per evaluation: each step's
    step_time_s is exactly its own forwards' time, the first step after an epoch's evaluation included."""
    from runner import train as train_module

    clock = fake_run_clock(monkeypatch)
    evaluate, evaluations = train_module.Recipe.evaluate, []

    def slow_evaluate(self):
        clock.now += 100.0
        evaluations.append(self.global_step)
        return evaluate(self)

    monkeypatch.setattr(train_module.Recipe, "evaluate", slow_evaluate)
    _, out = train([*tiny_overrides, "trainer.epochs=3", "trainer.measure_activations=false"], tmp_path, "evals")
    steps = read_steps(out)
    assert len(steps) == 12 and evaluations[:2] == [4, 8]  # after the first and second epochs (then the final one)
    assert [s["step_time_s"] for s in steps] == pytest.approx([1e-3 * s["padded_tokens"] for s in steps])


@pytest.mark.slow
def test_compiled_training_matches_eager_and_measures_on_the_eager_module(tiny_overrides, tmp_path):
    """trainer.compile=true (inductor on CPU here; about a minute to compile): the same losses as eager
    training; the measured first step runs eager, the rest compiled, and results say so."""
    # one shape: one compile; no dropout (compiled code draws its masks from another generator)
    model = save_tiny_model_dir(tmp_path / "no-dropout", layers=2)
    common = [*tiny_overrides, f"model.name_or_path={model}", "trainer.max_steps=3", "trainer.pad_to_multiple_of=32",
              "adapter.dropout=0"]
    eager, out_e = train(common, tmp_path, "eager")
    compiled, out_c = train([*common, "trainer.compile=true"], tmp_path, "compiled")
    steps_e, steps_c = read_steps(out_e), read_steps(out_c)
    assert [s["padded_length"] for s in steps_c] == [64, 64, 64]
    assert [s["measured"] for s in steps_c] == [True, False, False]
    assert [s["loss"] for s in steps_c] == pytest.approx([s["loss"] for s in steps_e], rel=1e-4)
    assert compiled["metrics"]["loss"] == pytest.approx(eager["metrics"]["loss"], rel=1e-4)
    assert compiled["compute"] == {"device": "cpu", "mixed_precision": "no", "tf32": False, "compile": True}
    assert eager["compute"]["compile"] is False


def test_full_fine_tuning_trains_every_weight_and_learns(tiny_overrides, tmp_path):
    # a small train set seen for many epochs: the model memorises it, the training loss must fall
    results, out = train([*tiny_overrides, "method=full", "adapter=none", "trainer.lr=1e-3", "trainer.epochs=40",
                          "task.max_train_samples=8", "trainer.batch_size=8", "trainer.warmup_ratio=0",
                          "trainer.lr_schedule=constant", "trainer.max_grad_norm=0", "trainer.weight_decay=0",
                          "trainer.eval_every_steps=1000", "trainer.checkpoint_every_steps=1000"], tmp_path)
    assert results["params"]["params_trainable"] == results["params"]["params_total"]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    first, last = sum(s["loss"] for s in steps[:5]) / 5, sum(s["loss"] for s in steps[-5:]) / 5
    assert len(steps) == 40 and last < 0.7 * first
    assert (out / "model" / "model.safetensors").is_file()


def test_bottleneck_adapters_train_only_adapters_and_head(tiny_overrides, tmp_path):
    results, out = train([*tiny_overrides, "adapter=bottleneck", "adapter.reduction_factor=4"], tmp_path)
    hidden, size = 32, 8
    per_adapter = 2 * hidden * size + size + hidden
    pooler = hidden * hidden + hidden  # the tiny BERT pools with cls (no sentence-transformers config): its pooler trains
    head = hidden * 2 + 2 + pooler
    assert results["head"]["trains"] == ["classifier", "pooler"]
    assert results["params"]["params_adapter"] == 2 * 2 * per_adapter  # 2 layers x (attention, ffn)
    assert results["params"]["params_trainable"] == results["params"]["params_adapter"] + head
    assert (out / "model" / "bottleneck_adapters.safetensors").is_file()


def test_regression_task_reports_pearson_and_spearman(tiny_overrides, tmp_path):
    from test_data import write_task

    data = write_task(tmp_path / "glue", "stsb")
    overrides = [o for o in tiny_overrides if not o.startswith("task.data_dir")]
    results, _ = train([*overrides, "task=glue/stsb", f"task.data_dir={data}"], tmp_path)
    assert set(results["metrics"]) >= {"pearson", "spearmanr", "loss"}


def test_mnli_reports_matched_and_mismatched(tiny_overrides, tmp_path):
    from test_data import write_task

    data = write_task(tmp_path / "glue", "mnli")
    overrides = [o for o in tiny_overrides if not o.startswith("task.data_dir")]
    results, _ = train([*overrides, "task=glue/mnli", f"task.data_dir={data}"], tmp_path)
    assert "accuracy" in results["metrics"] and "validation_mismatched/accuracy" in results["metrics"]


def test_max_steps_and_grad_accumulation(tiny_overrides, tmp_path):
    results, out = train([*tiny_overrides, "trainer.max_steps=3", "trainer.grad_accum_steps=2", "trainer.batch_size=8"], tmp_path)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert results["steps"]["total"] == 3 and len(steps) == 3
    assert all(s["tokens"] > 0 for s in steps)


def test_wandb_offline_run_holds_the_same_numbers(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    overrides = [o for o in tiny_overrides if o != "logger=none"]
    results, out = train([*overrides, "logger=wandb", "trainer.log_every_steps=1"], tmp_path)
    run_file = find_run_file(out)
    assert run_file.parent.name.startswith("offline-run-")
    wb = read_run(run_file)
    summary = wb["summary"]
    assert summary["metrics/accuracy"] == pytest.approx(results["metrics"]["accuracy"])
    assert summary["memory/saved_for_backward_peak_bytes"] == results["memory"]["saved_for_backward_peak_bytes"]
    assert summary["flops/train_total"] == results["flops"]["train_total"]
    assert summary["status"] == "completed"
    losses = [row["train/loss"] for row in wb["history"] if "train/loss" in row]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([s["loss"] for s in steps])
    assert wb["config"]["trainer"]["batch_size"] == 16
    assert results["wandb"]["run_id"] == run_file.stem.removeprefix("run-")


# The default recipe (LoRA r8 on query/value, AdamW, linear schedule) on the tiny model: per-step
# losses pinned as measured (torch 2.13 CPU). Any change to what a step computes (data order,
# dropout seeding, the head, the optimizer, the schedule) moves them; change them only knowingly.
PINNED_LOSSES = {
    "adapter": [0.692476, 0.692742, 0.692724, 0.693107, 0.688878, 0.688528, 0.685709, 0.695552],
    "full": [0.693097, 0.694468, 0.693766, 0.69342, 0.694935, 0.693543, 0.690857, 0.6925],
}


@pytest.mark.parametrize("method, extra", [("adapter", []), ("full", ["method=full", "adapter=none", "trainer.lr=5e-5"])])
def test_the_default_recipe_reproduces_its_pinned_losses(tiny_overrides, tmp_path, method, extra):
    overrides = [o for o in tiny_overrides if not o.startswith("trainer.epochs")] + ["trainer.epochs=2", *extra]
    run(compose_config(overrides, output_dir=tmp_path / method))
    losses = [json.loads(line)["loss"] for line in (tmp_path / method / "steps.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(PINNED_LOSSES[method], abs=2e-6)


def test_dropout_seed_redraws_the_dropout_masks_and_nothing_else(tiny_overrides, tmp_path):
    """trainer.dropout_seed: with dropout (LoRA's), other losses from the first step on; without dropout the
    same run to the digit (the same weights, head and data order); equal to the run's seed (42), the
    default run."""
    base = [*tiny_overrides, "trainer.max_steps=3"]

    def losses(name, *extra):
        return [s["loss"] for s in read_steps(train([*base, *extra], tmp_path, name)[1])]

    default = losses("default")
    assert losses("seed-42", "trainer.dropout_seed=42") == default
    other = losses("other", "trainer.dropout_seed=7")
    assert other[0] != pytest.approx(default[0], abs=1e-6)
    no_dropout = ["adapter.dropout=0", f"model.name_or_path={save_tiny_model_dir(tmp_path / 'no-dropout', layers=2)}"]
    assert losses("none", *no_dropout) == losses("none-other", *no_dropout, "trainer.dropout_seed=7")


def test_split_micro_batches_give_the_same_training_with_less_activation_memory(tiny_overrides, tmp_path, monkeypatch):
    """A method that asks for split micro-batches (SAFE's budget_mode): each micro-batch runs as chunks
    whose gradients add up, so with no dropout the losses and the final model match the unsplit run up
    to float error, while the bytes saved for backward at once are (about) halved."""
    from runner.methods import TrainingMethod

    model = save_tiny_model_dir(tmp_path / "no-dropout", layers=2)
    common = [*tiny_overrides, f"model.name_or_path={model}", "trainer.max_steps=3", "adapter.dropout=0",
              "trainer.activations_check_every=1"]
    whole, out_w = train(common, tmp_path, "whole")
    monkeypatch.setattr(TrainingMethod, "micro_batch_splits", lambda self, step: 2 if step < 2 else 1)
    split, out_s = train(common, tmp_path, "split")
    steps_w, steps_s = read_steps(out_w), read_steps(out_s)
    assert [s["loss"] for s in steps_s] == pytest.approx([s["loss"] for s in steps_w], rel=1e-5)
    assert split["metrics"]["loss"] == pytest.approx(whole["metrics"]["loss"], rel=1e-5)
    assert [s["tokens"] for s in steps_s] == [s["tokens"] for s in steps_w]
    # chunks are cut to their own longest example: never more padded tokens than the whole batch
    assert all(a["padded_tokens"] <= b["padded_tokens"] for a, b in zip(steps_s, steps_w))
    for a, b in zip(steps_s[:2], steps_w[:2]):  # split steps: half the examples saved at once
        assert a["saved_bytes"] <= 0.6 * b["saved_bytes"]
    assert steps_s[2]["saved_bytes"] == steps_w[2]["saved_bytes"]  # step 3 runs whole again
