"""scripts/probe_frozen.py: linear probes on a frozen model, pair and single-sentence tasks, the runner's cap."""

from __future__ import annotations

import numpy as np
import pandas as pd
from helpers import load_script


def _script():
    return load_script("probe_frozen")


def test_probes_pair_and_single_sentence_tasks_on_the_capped_training_set(tiny_model_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "probe.md"
    code = _script().main(["--tasks", "sst2", "mrpc", "--max-train-samples", "60", "--out", str(out),
                           "--override", f"model.name_or_path={tiny_model_dir}", "--override", "task.max_eval_samples=40"])
    assert code == 0
    lines = out.read_text().splitlines()
    assert capsys.readouterr().out.splitlines() == lines  # the file is what was printed
    assert "first 60 training examples" in lines[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("SST2", "sentence-mean", "60"), ("MRPC", "pair-mean", "60"),
                                                  ("MRPC", "bi-encoder", "60")]
    for task, folder, row in (("sst2", "SST-2", rows[0]), ("mrpc", "MRPC", rows[1])):
        # the majority class: the training cap's most frequent label, scored on the capped dev set
        train = pd.read_csv(glue_dir / folder / "train.tsv", sep="\t", quoting=3, encoding="utf-8-sig")
        dev = pd.read_csv(glue_dir / folder / "dev.tsv", sep="\t", quoting=3, encoding="utf-8-sig")
        label = "label" if "label" in train else "Quality"
        top = np.bincount(train[label].to_numpy()[:60]).argmax()
        assert float(row[6]) == round(100 * float(np.mean(dev[label].to_numpy()[:40] == top)), 2)
        assert 0.0 <= float(row[3]) <= 100.0
    assert rows[0][4] == "-" and rows[1][4] != "-"  # F1 for MRPC only
