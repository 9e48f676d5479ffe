"""Every model family through the real configuration and pipeline (runner/arch): LoRA with SAFE
freezing and HIES pruning after training, bottleneck adapters with a later pruning job on the saved
run (HIS and entropy, physical removal, the saved pruned model reloaded), full fine-tuning on an
STS-B-style regression; ALBERT trains and refuses the per-layer methods in one line. Tiny random
models (2 layers, 4 heads, hidden 32) with MiniLM's tokenizer; the references each family must meet
(gate at ones, gate zeros = physical removal, HIS, entropy) are in test_prune_gate/test_prune_scores."""

from __future__ import annotations

import json

import pytest
from helpers import ADAPTER_KINDS, ARCHS, GLUE_DIR, compose, family_arch, save_family_dir, single_thread  # noqa: F401

from runner.app import execute
from runner.arch import architecture_of
from runner.synthetic import make_overlap_stsb

pytestmark = pytest.mark.slow

# The pipeline once per family module of runner/arch (ELECTRA runs BERT's layout, XLM-RoBERTa and CamemBERT
# RoBERTa's: the references in test_prune_gate/test_prune_scores/test_heads run for every model type).
CLI_FAMILIES = ("bert", "roberta", "distilbert", "mpnet", "deberta-v3", "deberta-v2-pos-proj", "modernbert", "llama", "gpt2")


def test_the_pipeline_runs_on_every_family_module():
    assert {family_arch(f).name for f in CLI_FAMILIES} == {family_arch(f).name for f in ARCHS}


@pytest.fixture(scope="module")
def stsb_dir(tmp_path_factory):
    return make_overlap_stsb(GLUE_DIR / "MRPC", tmp_path_factory.mktemp("overlap-glue"))


def _base(model_dir, tmp_path):
    return [f"model.name_or_path={model_dir}", "model.short_name=tiny", f"task.data_dir={GLUE_DIR}",
            "task.max_train_samples=48", "task.max_eval_samples=32", "trainer.batch_size=8", "trainer.eval_batch_size=16",
            "trainer.progress_bar=false", "trainer.max_seq_length=48", "logger=none", f"data_cache_dir={tmp_path / 'cache'}"]


PRUNE = ["prune.latency=none", "prune.calib_samples=8", "prune.save_model=none"]


def _run(overrides, out) -> dict:
    execute(compose(overrides, out))
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("family", CLI_FAMILIES)
def test_lora_with_safe_freezing_then_hies_pruning(family, tmp_path):
    model_dir = save_family_dir(family, tmp_path / "model")
    res = _run([*_base(model_dir, tmp_path), "method=safe", "adapter=lora", "trainer.max_steps=6", "trainer.lr=5e-3",
                "safe.interval=1", "safe.t_w=0.1", "safe.t_f=0.5", "safe.threshold=1.0", "safe.probe_size=8",
                "prune=hies", *PRUNE, "prune.ratio=0.5", "prune.ratios=[0.5]", "prune.compare=[his,entropy]"], tmp_path / "safe")
    assert res["status"] == "completed" and res["head"]["adapter_targets"] == list(family_arch(family).lora_targets)
    adapters = res["method_report"]["adapters"]
    assert sorted(adapters) == ["layer0", "layer1"]  # one SAFE unit per layer, found through the family's layout
    assert any(a["freeze_step"] is not None for a in adapters.values()), adapters
    pruning = res["pruning"]
    assert pruning["primary"]["heads_pruned"] == 4  # 50% of 2 layers x 4 heads, ranked globally
    criteria = {row["criterion"] for row in pruning["results"]}
    assert {"hies", "his", "entropy"} <= criteria


@pytest.mark.parametrize("family", CLI_FAMILIES)
def test_bottleneck_run_pruned_later_from_its_saved_model(family, tmp_path):
    model_dir = save_family_dir(family, tmp_path / "model")
    train_dir = tmp_path / "train"
    trained = _run([*_base(model_dir, tmp_path), "method=adapter", "adapter=bottleneck", "trainer.max_steps=4"], train_dir)
    assert trained["status"] == "completed" and trained["params"]["params_adapter"] > 0
    pruned = _run([*_base(model_dir, tmp_path), "prune=his", *PRUNE, "prune.ratio=0.25", "prune.save_model=primary",
                   f"prune.from_run={train_dir}"], tmp_path / "prune")
    section = pruned["pruning"]
    assert section["unpruned"]["metrics"]["accuracy"] == trained["metrics"]["accuracy"]  # the saved model, rebuilt exactly
    assert section["primary"]["heads_pruned"] == 2
    from runner.prune.persist import load_pruned
    from runner.prune.physical import heads_kept

    saved = load_pruned(next((tmp_path / "prune" / "pruning").glob("model_his_*")))
    assert sum(heads_kept(saved)) == 6 and architecture_of(saved).name == family_arch(family).name


@pytest.mark.parametrize("family", CLI_FAMILIES)
def test_full_fine_tuning_on_a_regression_task(family, stsb_dir, tmp_path):
    model_dir = save_family_dir(family, tmp_path / "model")
    res = _run([*_base(model_dir, tmp_path), "task=glue/stsb", f"task.data_dir={stsb_dir}", "method=full", "adapter=none",
                "trainer.max_steps=3", "trainer.lr=1e-4"], tmp_path / "full")
    assert res["status"] == "completed" and "pearson" in res["metrics"]
    assert res["params"]["params_trainable"] == res["params"]["params_total"]


def test_albert_trains_and_refuses_per_layer_methods_in_one_line(tmp_path, capsys):
    model_dir = save_family_dir("albert", tmp_path / "model")
    lora = _run([*_base(model_dir, tmp_path), "method=adapter", "trainer.max_steps=2"], tmp_path / "lora")
    assert lora["status"] == "completed" and lora["params"]["params_adapter"] > 0
    full = _run([*_base(model_dir, tmp_path), "method=full", "adapter=none", "trainer.max_steps=2"], tmp_path / "full")
    assert full["status"] == "completed"
    for extra, what in ((["method=safe"], "method=safe"), (["method=adapter", "prune=hies"], "prune=hies")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            execute(compose([*_base(model_dir, tmp_path), *extra, "trainer.max_steps=2"], tmp_path / what))
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert exc.value.code == 4 and len(err) == 1, err
        assert f"{what}: ALBERT shares one layer's weights across all its layers" in err[0]
        assert not (tmp_path / what / "results.json").exists()  # refused before anything trained


def test_a_run_says_which_model_it_ran_and_different_models_never_share_a_row(tmp_path):
    from runner.aggregate.collect import collect

    results = []
    for family in ("bert", "electra"):  # two folders both called "model": the same derived name
        model_dir = save_family_dir(family, tmp_path / family / "model")
        overrides = [o for o in _base(model_dir, tmp_path) if o != "model.short_name=tiny"]
        results.append(_run([*overrides, "method=adapter", "trainer.max_steps=1"], tmp_path / "runs" / family))
        source = results[-1]["model_source"]
        assert results[-1]["model"] == "model" and results[-1]["run_name"] == "mrpc-model-adapter-s42"  # not minilm's name
        assert source["path"] == str(model_dir) and source["model_type"] == family and source["revision"] is None
        assert source["family"] == family_arch(family).name and source["weights"].startswith("sha256:")
    assert results[0]["model_source"]["weights"] != results[1]["model_source"]["weights"]
    table, _, _ = collect([tmp_path / "runs"])
    names = sorted(table["model"])
    assert len(set(names)) == 2 and all(n.startswith("model@") for n in names), names


def test_lora_targets_that_name_no_module_of_the_family_fail_in_one_line(tmp_path, capsys):
    model_dir = save_family_dir("mpnet", tmp_path / "model")  # MPNet calls its projections q, k, v, o
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        execute(compose([*_base(model_dir, tmp_path), "method=adapter", "adapter.target_modules=[query,v]"], tmp_path / "run"))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert exc.value.code == 2 and len(err) == 1, err
    assert "adapter.target_modules ['query'] name no module of this mpnet model; use adapter.target_modules=auto" in err[0]


def test_every_adapter_kind_is_tested():
    from runner.adapters import KINDS

    assert set(ADAPTER_KINDS) == set(KINDS)


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_each_adapter_kind_freezes_saves_and_is_pruned_from_its_saved_run(kind, tmp_path):
    """SAFE freezes the kind's adapters per layer (LoRA merges them), the run saves them in the kind's format,
    a pruning job rebuilds the trained model from it exactly, and the pruned model saves and reloads."""
    from runner.adapters import KINDS
    from runner.prune.persist import load_pruned
    from runner.prune.physical import heads_kept

    model_dir = save_family_dir("bert", tmp_path / "model")
    train_dir = tmp_path / "train"
    trained = _run([*_base(model_dir, tmp_path), "method=safe", *ADAPTER_KINDS[kind], "trainer.max_steps=6",
                    "trainer.lr=5e-3", "safe.interval=1", "safe.t_w=0.1", "safe.t_f=0.5", "safe.threshold=1.0",
                    "safe.probe_size=8"], train_dir)
    assert trained["status"] == "completed" and trained["adapter"] == kind
    assert any(a["freeze_step"] is not None for a in trained["method_report"]["adapters"].values())
    assert KINDS[kind].found_in(train_dir / "model")
    pruned = _run([*_base(model_dir, tmp_path), "prune=hies", *PRUNE, "prune.ratio=0.25", "prune.save_model=primary",
                   f"prune.from_run={train_dir}"], tmp_path / "prune")
    assert pruned["pruning"]["unpruned"]["metrics"]["accuracy"] == trained["metrics"]["accuracy"]
    saved = load_pruned(next((tmp_path / "prune" / "pruning").glob("model_hies_*")))
    assert sum(heads_kept(saved)) == 6 and KINDS["bottleneck"].present(saved) == (kind == "bottleneck")


def test_the_length_check_knows_where_each_family_s_positions_start():
    import transformers

    from runner.arch import architecture_of

    bert = transformers.BertConfig(max_position_embeddings=512)
    roberta = transformers.RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    mpnet = transformers.MPNetConfig(max_position_embeddings=514, pad_token_id=0)  # transformers pads MPNet at index 1
    assert [architecture_of(c).max_positions(c) for c in (bert, roberta, mpnet)] == [512, 512, 512]


def test_a_decoder_tokenizer_without_a_pad_token_pads_with_its_end_token(tmp_path):
    """GPT-2's and Llama's tokenizers have no pad token: batches pad with the end-of-sequence token, on
    the right, and the classifier finds each example's last real token by that id."""
    from transformers import AutoConfig, AutoTokenizer

    from runner.models import ensure_pad_token
    from runner.preflight.errors import ModelError

    model_dir = save_family_dir("gpt2", tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.eos_token = "[SEP]"
    tok.pad_token = None
    tok.padding_side = "left"  # as many decoder tokenizers ship, for generation
    tok.save_pretrained(str(model_dir))
    config = AutoConfig.from_pretrained(str(model_dir))
    config.pad_token_id = None
    config.save_pretrained(str(model_dir))
    tok, config = AutoTokenizer.from_pretrained(str(model_dir)), AutoConfig.from_pretrained(str(model_dir))
    assert tok.pad_token is None
    ensure_pad_token(tok, config)
    assert tok.pad_token == "[SEP]" and config.pad_token_id == tok.sep_token_id and tok.padding_side == "right"
    res = _run([*_base(model_dir, tmp_path), "method=adapter", "trainer.max_steps=2"], tmp_path / "run")
    assert res["status"] == "completed" and res["head"]["pooling"] == "last"
    bare = AutoTokenizer.from_pretrained(str(model_dir))
    bare.eos_token = bare.unk_token = None
    with pytest.raises(ModelError, match="has no padding, end-of-sequence or unknown token"):
        ensure_pad_token(bare, AutoConfig.from_pretrained(str(model_dir)))
