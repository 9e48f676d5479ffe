#!/usr/bin/env python
"""What the frozen model's features already hold: linear probes on GLUE tasks.

No fine-tuning: the model (``--model``, a runner model config: the packaged
MiniLM by default, ``mpnet`` for all-mpnet-base-v2; eval mode) embeds every
training and dev example once, and a logistic regression (scikit-learn, C
chosen by 5-fold cross-validation on the training set only) is fitted on

* ``pair-mean``: the masked mean of the last hidden states of the sentence
  pair fed as one sequence (what fine-tuning with ``model.pooling=mean`` sees);
* ``bi-encoder``: each sentence embedded alone (mean pooling, as the model was
  trained), features ``[u, v, |u - v|, u * v]`` (sentence-transformers'
  classification head);
* ``sentence-mean``: for single-sentence tasks (SST-2), the masked mean of the
  sentence's last hidden states.

The training set is capped as the runner caps it (``--max-train-samples``:
the same first N examples a run with ``task.max_train_samples=N`` trains on).
It prints dev accuracy (and MRPC F1) against the majority class, and writes the
table to ``--out`` when given: a reference for what fine-tuning should beat, and
a hint at the model's ceiling.

    python scripts/probe_frozen.py                  # MiniLM, MRPC and RTE, ~5 min on 2 CPU cores
    python scripts/probe_frozen.py --model mpnet --tasks sst2 --max-train-samples 8000 --out outputs/probe.md
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402


def embed(model, tokenizer, first, second=None, batch_size=64, max_length=128) -> np.ndarray:
    """Masked mean of the last hidden states, per example (pairs as one sequence when ``second``)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(first), batch_size):
            args = (first[i:i + batch_size],) + ((second[i:i + batch_size],) if second is not None else ())
            enc = tokenizer(*args, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)


def probe(train_x, train_y, dev_x, dev_y) -> dict:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0], cv=5, max_iter=2000,
                                                               scoring="accuracy"))
    with warnings.catch_warnings():  # scikit-learn's notices of future defaults; the settings above are explicit
        warnings.simplefilter("ignore", FutureWarning)
        pred = clf.fit(train_x, train_y).predict(dev_x)
    return {"accuracy": 100 * accuracy_score(dev_y, pred), "f1": 100 * f1_score(dev_y, pred),
            "C": float(clf[-1].C_[0])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["mrpc", "rte"])
    p.add_argument("--model", default=None, help="runner model config (conf/model/<name>.yaml; default: the runner's)")
    p.add_argument("--max-train-samples", type=int, default=None, help="the first N training examples (the runner's cap)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="runner override for the model and tasks (repeatable), e.g. model.name_or_path=DIR")
    p.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    args = p.parse_args(argv)
    from transformers import AutoModel, AutoTokenizer

    from runner import data as data_lib
    from runner.models import resolve_model_path
    from runner.preflight.config import compose_config, default_glue_dir

    os.environ.setdefault("GLUE_DIR", default_glue_dir() or "")
    model_override = ([f"model={args.model}"] if args.model else []) + list(args.override)
    model_cfg = compose_config(model_override).model
    path = resolve_model_path(model_cfg.name_or_path)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    cap = f", first {args.max_train_samples} training examples" if args.max_train_samples else ""
    # the run dirs' model name (the packaged MiniLM's folder is just "model")
    lines = [f"Linear probes on the frozen {model_cfg.short_name}{cap} (scripts/probe_frozen.py)", "",
             "| task | features | train examples | dev accuracy | F1 | C | majority class |", "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for task in args.tasks:
        caps = [f"task.max_train_samples={args.max_train_samples}"] if args.max_train_samples else []
        cfg = compose_config([f"task=glue/{task}", *model_override, *caps])
        splits = data_lib.load_task_splits(cfg.task)
        train, dev = splits.train, next(iter(splits.evals.values()))
        ty, dy = np.array(train["label"]), np.array(dev["label"])
        majority = 100 * float(np.mean(dy == np.bincount(ty).argmax()))
        for name, (tx, dx) in features(model, tokenizer, list(cfg.task.text_keys), train, dev).items():
            r = probe(tx, ty, dx, dy)
            f1 = f"{r['f1']:.2f}" if task == "mrpc" else "-"
            lines.append(f"| {task.upper()} | {name} | {len(train)} | {r['accuracy']:.2f} | {f1} | {r['C']:g} | {majority:.2f} |")
            print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


def features(model, tokenizer, text_keys: list[str], train, dev) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(train, dev) features per probe: a pair's joint and bi-encoder features, or one sentence's mean."""
    if len(text_keys) == 1:
        (a,) = text_keys
        return {"sentence-mean": (embed(model, tokenizer, train[a]), embed(model, tokenizer, dev[a]))}
    a, b = text_keys
    feats = {"pair-mean": (embed(model, tokenizer, train[a], train[b]), embed(model, tokenizer, dev[a], dev[b]))}
    u, v, du, dv = (embed(model, tokenizer, s) for s in (train[a], train[b], dev[a], dev[b]))
    feats["bi-encoder"] = (np.hstack([u, v, abs(u - v), u * v]), np.hstack([du, dv, abs(du - dv), du * dv]))
    return feats


if __name__ == "__main__":
    sys.exit(main())
