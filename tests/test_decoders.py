"""Decoders on causal-LM tasks (runner/lm.py, task=lm/text): the data the tests write (text,
prompt/response, multiple choice), each number against a hand computation (perplexity, multiple-choice
log-likelihoods, per-example HIS with the LM loss, the constant prediction), and the documented command
``method=safe prune=hies`` end to end on tiny random Llama and GPT-2 folders, then pruning the saved run
and reloading the pruned causal LM. The sequence-classification references of the decoder families are
in test_prune_gate/test_prune_scores/test_heads; their classification pipeline cells in test_families."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import GLUE_DIR, compose, save_family_dir, tiny_batch

from runner import lm
from runner.app import execute

pytestmark = pytest.mark.slow


def _lines(n: int, start: int = 1) -> list[str]:
    rows = (GLUE_DIR / "MRPC" / "train.tsv").read_text(encoding="utf-8").splitlines()[start:start + n]
    return [r.split("\t")[3] for r in rows]


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    """train.txt / valid.txt (MRPC sentences), prompt.jsonl (prompt/response) and mc.jsonl (multiple choice)."""
    folder = tmp_path_factory.mktemp("lm-data")
    (folder / "train.txt").write_text("\n".join(_lines(160)) + "\n\n")
    (folder / "valid.txt").write_text("\n".join(_lines(60, start=400)))
    pairs = [{"prompt": f"Paraphrase: {a}\nAnswer:", "response": f" {b}"} for a, b in zip(_lines(40), _lines(40, start=41))]
    (folder / "prompt.jsonl").write_text("\n".join(json.dumps(p) for p in pairs))
    mc = [{"context": "The sentence was", "choices": [" true", " false", " unknown"], "label": i % 3} for i in range(6)]
    (folder / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in mc))
    return folder


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(save_family_dir("llama", tmp_path_factory.mktemp("tok") / "m")))


# ---------------------------------------------------------------- data


def test_text_is_cut_into_blocks_of_every_token_and_prompts_are_not_targets(lm_data, tokenizer):
    records = lm.read_records(lm_data / "train.txt")
    assert len(records) == 160  # blank lines are not documents
    blocks = lm.tokenize_lm(records, tokenizer, 32)
    stream = [t for text in records["text"] for t in tokenizer(text)["input_ids"]]
    assert [t for b in blocks["input_ids"] for t in b] == stream  # every token once, in order
    assert all(len(b) == 32 for b in blocks["input_ids"][:-1]) and blocks["labels"] == blocks["input_ids"]
    pairs = lm.read_records(lm_data / "prompt.jsonl")
    examples = lm.tokenize_lm(pairs, tokenizer, 64)
    first = pairs[0]
    prompt = tokenizer(first["prompt"])["input_ids"]
    response = tokenizer(first["response"], add_special_tokens=False)["input_ids"]
    assert examples[0]["input_ids"] == (prompt + response)[:64]
    assert examples[0]["labels"] == ([lm.IGNORE] * len(prompt) + response)[:64]  # the loss on the response only
    batch = lm.LMCollator(tokenizer)([examples[0], examples[1]])
    short = int(batch["attention_mask"].sum(1).min())
    assert (batch["labels"][batch["attention_mask"] == 0] == lm.IGNORE).all() and short < batch["input_ids"].shape[1]


def test_bad_files_fail_with_one_clear_error(tmp_path):
    from runner.preflight.errors import DataError

    (tmp_path / "x.csv").write_text("a\n")
    (tmp_path / "cols.jsonl").write_text(json.dumps({"question": "q"}))
    (tmp_path / "mc.jsonl").write_text(json.dumps({"context": "c", "choices": ["a"], "label": 0}))
    with pytest.raises(DataError, match=r"x.csv: a causal-LM file is .txt \(plain text\) or .jsonl"):
        lm.read_records(tmp_path / "x.csv")
    with pytest.raises(DataError, match=r"has columns \['question'\]; it needs text, or prompt and response"):
        lm.read_records(tmp_path / "cols.jsonl")
    with pytest.raises(DataError, match="needs two or more choices"):
        lm.read_choices(tmp_path / "mc.jsonl")


@pytest.mark.parametrize("lines, record, why", [
    ([{"text": "a b c"}, {"text": None}], 2, "text missing or not text"),  # before: trained on the word "None"
    ([{"text": "a b c"}, {"prompt": "p", "response": "r"}], 2, "text missing or not text"),  # a mixed file
    ([{"prompt": "p", "response": 7}], 1, "response missing or not text"),
    ([{"context": "c", "choices": ["a", "b"], "label": 1.9}], 1, "a label indexing one of them"),  # before: int(1.9)
    ([{"context": "c", "choices": ["a", "b"], "label": True}], 1, "a label indexing one of them"),
])
def test_a_record_the_runner_cannot_use_is_an_error_not_replaced(tmp_path, lines, record, why):
    """Nothing silently wrong (issue 38, rule 4): every record of an LM file holds the fields of the first, as text."""
    from runner.preflight.errors import DataError

    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    read = lm.read_choices if "choices" in lines[0] else lm.read_records
    with pytest.raises(DataError, match=f"record {record}.*{why}" if "label" not in why else why):
        read(path)


def test_a_document_is_one_line_whatever_characters_it_holds(tmp_path):
    """Only a newline (LF or CRLF) ends a document of a .txt or a record of a .jsonl; a form feed or U+2028 inside a
    text does not split it (str.splitlines would), and blank lines are not documents."""
    (tmp_path / "t.txt").write_bytes("first\fpage\u2028same doc\r\n\nsecond\n".encode())
    assert lm.read_records(tmp_path / "t.txt")["text"] == ["first\fpage\u2028same doc", "second"]
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\r\n\n")
    assert lm.read_records(tmp_path / "t.jsonl")["text"] == ["a\u2028b"]


def test_what_the_block_length_cuts_or_drops_is_counted(tokenizer):
    import datasets

    pairs = datasets.Dataset.from_list([{"prompt": "short question", "response": " a fairly long answer " * 8},
                                        {"prompt": "word " * 80, "response": " lost"},
                                        {"prompt": "q", "response": " a"}])
    counts = {}
    examples = lm.tokenize_lm(pairs, tokenizer, 32, counts)
    assert len(examples) == 2 and counts == {"responses_cut": 1, "records_dropped": 1}
    text = datasets.Dataset.from_list([{"text": "one two three four five six seven"}])
    n = len(tokenizer("one two three four five six seven")["input_ids"])
    counts = {}
    blocks = lm.tokenize_lm(text, tokenizer, n - 1, counts)  # the last block would hold one token
    assert len(blocks) == 1 and counts == {"blocks": 1, "tokens_dropped": 1}


# ---------------------------------------------------------------- numbers against hand computations


def _lm(family="llama", seed=0, vocab=120):
    from helpers import family_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(family_config(family, layers=2, heads=4, head_size=8, vocab=vocab)).eval()


def test_perplexity_is_the_exponent_of_the_mean_nll_over_all_target_tokens():
    model = _lm()
    batch = tiny_batch(batch=3, length=10, pad_from={1: 6})
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, lm.IGNORE)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ll, n = lm.token_log_likelihoods(logits, labels)
    by_hand, count = 0.0, 0
    for b in range(3):
        for t in range(9):
            if labels[b, t + 1] != lm.IGNORE:
                by_hand += float(torch.log_softmax(logits[b, t], -1)[labels[b, t + 1]])
                count += 1
    assert int(n.sum()) == count == 9 + 5 + 9
    assert float(ll.sum()) == pytest.approx(by_hand, rel=1e-5)
    ppl = lm.perplexity_metrics(-float(ll.sum()), int(n.sum()))["perplexity"]
    assert ppl == pytest.approx(math.exp(-by_hand / count), rel=1e-5)
    # one unpadded example: the model's own loss
    with torch.no_grad():
        own = model(input_ids=batch["input_ids"][:1], labels=batch["input_ids"][:1]).loss
    assert float(lm.example_losses(logits[:1], labels[:1])[0]) == pytest.approx(float(own), rel=1e-5)


def test_multiple_choice_scores_each_continuation_by_its_log_likelihood(tokenizer):
    model = _lm(vocab=len(tokenizer))
    rows = [{"context": "the cat sat on the", "choices": [" mat", " moon and stars"], "label": 1}]
    requests = lm.choice_requests(rows, tokenizer, 64)
    scores = []
    for req in requests:  # by hand: log p(continuation | context), token by token
        ids = torch.tensor([req["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        cont = [i for i, y in enumerate(req["labels"]) if y != lm.IGNORE]
        assert req["input_ids"][:cont[0]] == tokenizer("the cat sat on the")["input_ids"]
        scores.append(sum(float(logp[i - 1, req["input_ids"][i]]) for i in cont))
    got = lm.score_choices(model, rows, tokenizer, 64, 8, torch.device("cpu"))
    best = max(range(2), key=lambda c: scores[c])
    best_norm = max(range(2), key=lambda c: scores[c] / len(rows[0]["choices"][c].encode()))
    assert got == {"acc": float(best == 1), "acc_norm": float(best_norm == 1), "num_examples": 1}


def test_his_per_example_with_the_lm_loss_is_each_examples_own_gradient():
    """Row b of the per-example gate gradient equals the gradient of example b's own mean token NLL,
    computed alone (the model's batch loss would weigh examples by their token counts)."""
    from runner.prune.gate import HeadGate
    from runner.prune.scores import frozen_weights, gate_gradients

    model = _lm().double()
    batch = tiny_batch(batch=3, length=10, pad_from={1: 6})
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, lm.IGNORE)
    with frozen_weights(model), HeadGate(model, requires_grad=True) as gate:
        summed, _ = gate_gradients(model, gate, batch)
        rows = []
        for b in range(3):
            n = int(batch["attention_mask"][b].sum())
            alone = {k: v[b:b + 1, :n] for k, v in batch.items()}
            gate.mask = torch.ones(1, 2, 4, dtype=torch.float64, requires_grad=True)
            model(**alone).loss.backward()  # one unpadded example: the model's loss is its own mean
            rows.append(gate.mask.grad[0].abs())
    torch.testing.assert_close(summed, sum(rows).double(), rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- the command line


def _base(model_dir, data, tmp_path):
    return [f"model.name_or_path={model_dir}", "task=lm/text", f"task.data_dir={data}", "+task.mc_files={toy: mc.jsonl}",
            "trainer.batch_size=4", "trainer.eval_batch_size=8", "trainer.max_seq_length=32", "logger=none",
            "trainer.progress_bar=false", f"data_cache_dir={tmp_path / 'cache'}"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_safe_then_hies_on_a_text_task_then_prune_the_saved_run(family, lm_data, tmp_path):
    from runner.prune.persist import load_pruned
    from runner.prune.physical import heads_kept

    model_dir = save_family_dir(family, tmp_path / "model")
    train_dir = tmp_path / "safe"
    prune = ["prune.latency=none", "prune.calib_samples=8", "prune.ratio=0.5", "prune.ratios=[0.25,0.5]"]
    execute(compose([*_base(model_dir, lm_data, tmp_path), "method=safe", "trainer.max_steps=6", "trainer.lr=5e-3",
                     "safe.interval=1", "safe.t_w=0.1", "safe.t_f=0.5", "safe.threshold=1.0", "safe.probe_size=8",
                     "prune=hies", *prune, "prune.alpha=auto", "prune.alpha_split=dev_half"], train_dir))
    res = json.loads((train_dir / "results.json").read_text())
    assert res["status"] == "completed" and res["main_metric"] == "perplexity"
    assert set(res["metrics"]) >= {"perplexity", "loss", "tokens", "toy/acc", "toy/acc_norm"}
    assert res["learning"]["trivial_prediction"] == "training unigram frequencies" and res["learning"]["trivial"] > 1
    assert res["head"]["pooling"] is None and res["head"]["trains"] == []  # the LM head stays as pretrained
    assert any(a["freeze_step"] is not None for a in res["method_report"]["adapters"].values())
    pruning = res["pruning"]
    assert pruning["primary"]["heads_pruned"] == 4 and pruning["scoring"]["alpha_auto"]["metric"] == "-loss"
    assert pruning["stability_definition"].startswith("agreement of the pruned model's next-token predictions")
    assert 0 < pruning["primary"]["stability"] <= 1 and "toy/acc" in pruning["primary"]["metrics"]
    # a later job prunes the saved run (LoRA merged into a causal LM) and saves the pruned model
    out = tmp_path / "prune"
    execute(compose([*_base(model_dir, lm_data, tmp_path), "prune=his", *prune, "prune.save_model=primary",
                     f"prune.from_run={train_dir}"], out))
    later = json.loads((out / "results.json").read_text())["pruning"]
    assert later["unpruned"]["metrics"]["perplexity"] == pytest.approx(res["metrics"]["perplexity"], rel=1e-4)
    saved = load_pruned(next((out / "pruning").glob("model_his_*")))
    assert type(saved).__name__.endswith(("ForCausalLM", "LMHeadModel")) and sum(heads_kept(saved)) == 4
    # the reloaded model computes what the job measured
    from transformers import AutoTokenizer

    from runner.data import load_task_splits
    from runner.preflight.config import compose_config
    from runner.prune.quality import LanguageModel

    cfg = compose_config(_base(model_dir, lm_data, tmp_path))
    tok = AutoTokenizer.from_pretrained(str(next((out / "pruning").glob("model_his_*"))))
    q = LanguageModel(cfg.task, tok, 32)
    loader = torch.utils.data.DataLoader(q.tokenize(load_task_splits(cfg.task).evals["validation"]), batch_size=8,
                                         collate_fn=q.collator)
    again = q.metrics(q.outputs(saved, loader, torch.device("cpu"), choices=False))
    assert again["perplexity"] == pytest.approx(later["primary"]["metrics"]["perplexity"], rel=1e-4)


def test_full_fine_tuning_on_prompts_learns_below_the_unigram_level(lm_data, tmp_path):
    model_dir = save_family_dir("llama", tmp_path / "model")
    execute(compose([*_base(model_dir, lm_data, tmp_path), "task.train_file=prompt.jsonl", "method=full", "adapter=none",
                     "trainer.max_steps=40", "trainer.lr=3e-3"], tmp_path / "full"))
    res = json.loads((tmp_path / "full" / "results.json").read_text())
    assert res["status"] == "completed" and res["learning"]["above_trivial"] is True, res["learning"]
    assert res["metrics"]["perplexity"] < res["learning"]["trivial"]


def test_an_encoder_on_a_causal_lm_task_is_refused_in_one_line(lm_data, tmp_path, capsys):
    model_dir = save_family_dir("bert", tmp_path / "model")
    with pytest.raises(SystemExit) as exc:
        execute(compose([*_base(model_dir, lm_data, tmp_path), "method=adapter"], tmp_path / "run"))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert exc.value.code == 4 and len(err) == 1, err
    assert "task text is a causal-LM task; bert is an encoder" in err[0]
    assert not (tmp_path / "run" / "results.json").exists()



def test_gradient_checkpointing_trains_the_same_and_the_meter_counts_what_stays_between_passes():
    """trainer.gradient_checkpointing: the same loss and gradients; the saved-for-backward meter counts what
    autograd saves outside the checkpointed layers plus each layer's kept inputs (runner.measure)."""
    from runner.measure import SavedTensorMeter, checkpointed_layers

    batch = tiny_batch(batch=4, length=24, pad_from={1: 20})
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, lm.IGNORE)
    results = []
    for checkpointing in (False, True):
        model = _lm().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert len(checkpointed_layers(model)) == 2
        with SavedTensorMeter(model) as meter:
            loss = model(**batch).loss
        loss.backward()
        results.append((float(loss), [p.grad.clone() for p in model.parameters()], meter.bytes))
    (loss0, grads0, plain), (loss1, grads1, checkpointed) = results
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    for a, b in zip(grads0, grads1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    hidden = 4 * 24 * 32 * 4  # one layer's input hidden states, float32
    assert hidden * 2 <= checkpointed < plain / 3  # both layers' inputs counted; far less than every activation


def test_his_alone_scores_with_the_models_own_attention_kernel():
    """No criterion reads the entropy: scoring keeps SDPA (no [T, T] probabilities) and gives the same HIS
    as the eager pass."""
    from runner.prune.scores import calibration_scores

    model = _lm()
    model.set_attn_implementation("sdpa")
    batch = tiny_batch(batch=4, length=12, pad_from={2: 7})
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, lm.IGNORE)
    seen = []
    hook = model.model.layers[0].self_attn.register_forward_hook(lambda m, a, o: seen.append(m.config._attn_implementation))
    sdpa = calibration_scores(model, [batch], entropy=False)
    eager = calibration_scores(model, [batch], entropy=True)
    hook.remove()
    assert seen == ["sdpa", "eager"] and model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(sdpa.his_raw, eager.his_raw, rtol=1e-4, atol=1e-8)
    assert torch.isnan(sdpa.entropy).all() and not torch.isnan(eager.entropy).any()


def test_an_interrupted_safe_run_on_a_text_task_resumes_to_the_straight_runs_numbers(lm_data, tmp_path, monkeypatch):
    """Kill a SAFE run on the causal-LM task after its checkpoint, resume it: the same per-step losses, frozen
    adapters and perplexity as an uninterrupted run."""
    from helpers import read_steps

    from runner.safe.method import SafeMethod

    model_dir = save_family_dir("llama", tmp_path / "model")
    torch.set_num_threads(1)
    overrides = [*_base(model_dir, lm_data, tmp_path), "method=safe", "trainer.max_steps=12", "trainer.lr=5e-3",
                 "safe.interval=1", "safe.t_w=0.1", "safe.t_f=0.5", "safe.threshold=1.0", "safe.probe_size=8",
                 "trainer.checkpoint_every_steps=5", "trainer.eval_every_steps=100"]
    execute(compose(overrides, tmp_path / "straight"))
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())

    class Killed(Exception):
        pass

    original = SafeMethod.on_step_end

    def crash(self, ctx, step):
        if step == 7:
            raise Killed("killed at step 7")
        return original(self, ctx, step)

    out = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(SafeMethod, "on_step_end", crash)
        with pytest.raises(SystemExit):  # the command line's crash exit, after the run dir recorded the failure
            execute(compose(overrides, out))
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["global_step"] == 5
    execute(compose([*overrides, "resume=true"], out))
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["status"] == "completed"
    assert [s["loss"] for s in read_steps(out)] == pytest.approx([s["loss"] for s in read_steps(tmp_path / "straight")], rel=1e-5)
    assert {k: a["freeze_step"] for k, a in resumed["method_report"]["adapters"].items()} == \
        {k: a["freeze_step"] for k, a in straight["method_report"]["adapters"].items()}
    assert resumed["metrics"]["perplexity"] == pytest.approx(straight["metrics"]["perplexity"], rel=1e-5)


def test_a_pretrained_decoder_folder_is_pruned_as_it_is(lm_data, tmp_path):
    """prune.from_run=<model folder> (no run): the pretrained model, no fine-tuning, calibrated on the task's
    training text, as LLM pruning papers prune LLaMA-2; its unpruned perplexity is the folder's own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.data import load_task_splits
    from runner.preflight.config import compose_config
    from runner.prune.quality import LanguageModel

    model_dir = save_family_dir("llama", tmp_path / "model")
    out = tmp_path / "prune"
    execute(compose([*_base(model_dir, lm_data, tmp_path), "prune=hies", "prune.latency=none", "prune.calib_samples=8",
                     "prune.ratio=0.25", "prune.ratios=[0.25]", f"prune.from_run={model_dir}"], out))
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "completed" and res["source"] == {"pretrained": True}
    cfg = compose_config(_base(model_dir, lm_data, tmp_path))
    q = LanguageModel(cfg.task, AutoTokenizer.from_pretrained(str(model_dir)), 32)
    loader = torch.utils.data.DataLoader(q.tokenize(load_task_splits(cfg.task).evals["validation"]), batch_size=8,
                                         collate_fn=q.collator)
    own = q.metrics(q.outputs(AutoModelForCausalLM.from_pretrained(str(model_dir)), loader, torch.device("cpu"), choices=False))
    assert res["pruning"]["unpruned"]["metrics"]["perplexity"] == pytest.approx(own["perplexity"], rel=1e-5)
    assert res["pruning"]["primary"]["heads_pruned"] == 2 and res["pruning"]["scoring"]["calib_examples"] == 8


def test_bf16_weights_train_and_evaluate_a_decoder(lm_data, tmp_path):
    """model.dtype=bfloat16 (how a 7B model fits one GPU): the weights load in bf16, LoRA trains, perplexity is finite."""
    model_dir = save_family_dir("qwen2", tmp_path / "model")
    execute(compose([*_base(model_dir, lm_data, tmp_path), "model.dtype=bfloat16", "method=adapter", "trainer.max_steps=3"],
                    tmp_path / "bf16"))
    res = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert res["status"] == "completed" and math.isfinite(res["metrics"]["perplexity"])
    assert res["memory"]["param_bytes"] < 0.6 * 4 * res["params"]["params_total"]  # 2 bytes a weight, not 4
