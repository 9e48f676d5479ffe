"""Causal language modelling tasks (``task.kind=causal_lm``, conf/task/lm/): data, batches, perplexity
and zero-shot multiple choice.

Files, in ``task.data_dir`` (names from ``task.train_file`` / ``task.eval_files`` / ``task.mc_files``):

* ``.txt``: plain text, one document per non-empty line. The lines are tokenised, concatenated and cut
  into blocks of ``trainer.max_seq_length`` tokens (the last block may be shorter): every token is a
  target (Hugging Face's ``run_clm`` recipe, keeping the remainder so an eval file counts every token).
* ``.jsonl`` with ``text``: the same, one document per record.
* ``.jsonl`` with ``prompt`` and ``response``: one example per record, ``prompt + response + EOS``
  truncated to ``trainer.max_seq_length``; the loss is on the response tokens only (the prompt's are
  labelled -100).
* multiple choice (``task.mc_files``, evaluation only): ``.jsonl`` records ``{"context": str,
  "choices": [str, ...], "label": int}``.

Perplexity is ``exp`` of the mean negative log-likelihood over every target token of the file (not
a mean of per-batch means). Multiple choice follows lm-evaluation-harness's rule for
``multiple_choice`` tasks: the continuation's tokens are those of ``context + choice`` after the
context's own tokens; each choice scores the sum of its tokens' log-probabilities; ``acc`` takes the
highest sum, ``acc_norm`` the highest sum divided by the choice's length in UTF-8 bytes.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import datasets
import numpy as np
import torch
from omegaconf import DictConfig

from runner.preflight.errors import ConfigError, DataError

IGNORE = -100  # label of a token that is not a target (prompt, padding)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def _task_dir(task: DictConfig) -> Path:
    if not task.get("data_dir"):
        raise ConfigError(f"task {task.name} reads local files: set task.data_dir=<folder holding {task.train_file}>")
    folder = Path(str(task.data_dir)).expanduser()
    if not folder.is_dir():
        raise DataError(f"data dir {folder} does not exist; set task.data_dir to the folder holding {task.train_file}")
    return folder


def _lines(path: Path) -> list[str]:
    """A file's lines, broken at newlines only (LF or CRLF): str.splitlines would also break a document at a form
    feed, U+2028 or U+0085 inside it."""
    return [line.removesuffix("\r") for line in path.read_text(encoding="utf-8").split("\n")]


def read_records(path: Path, columns: tuple[set, ...] = ({"text"}, {"prompt", "response"})) -> datasets.Dataset:
    """A text or JSONL file as records: ``{"text"}`` per line of a .txt, the JSON objects of a .jsonl,
    which must hold one of the ``columns`` sets."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; check task.data_dir and the task's file names")
    if path.suffix == ".txt":
        rows = [{"text": line} for line in _lines(path) if line.strip()]
    elif path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(_lines(path), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path} line {i} is not JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path} line {i} is not a JSON object")
            rows.append(record)
    else:
        raise DataError(f"{path}: a causal-LM file is .txt (plain text) or .jsonl (text, or prompt and response)")
    if not rows:
        raise DataError(f"{path} holds no text")
    # every record holds the same set of fields (the first record's), texts as strings: a record that
    # does not (a null, a number, a prompt/response record among text ones) is an error, never "None"
    wanted = next((w for w in columns if w <= set(rows[0])), None)
    if wanted is None:
        needs = ", or ".join(" and ".join(sorted(w)) for w in columns)
        raise DataError(f"{path} has columns {sorted(rows[0])}; it needs {needs}")
    for i, row in enumerate(rows, 1):
        bad = sorted(k for k in wanted if row.get(k) is None or (k in TEXT_FIELDS and not isinstance(row[k], str)))
        if bad:
            raise DataError(f"{path} record {i}: {', '.join(bad)} missing or not text (every record needs "
                            f"{', '.join(sorted(wanted))}, like the first)")
    return datasets.Dataset.from_list([{k: row[k] for k in sorted(wanted)} for row in rows])


TEXT_FIELDS = {"text", "prompt", "response", "context"}


def read_choices(path: Path) -> list[dict]:
    if path.suffix != ".jsonl":
        raise DataError(f"{path}: a multiple-choice file is .jsonl with context, choices and label")
    rows = read_records(path, ({"context", "choices", "label"},)).to_list()
    for i, r in enumerate(rows, 1):
        label = r["label"]
        if not (isinstance(r["choices"], list) and len(r["choices"]) >= 2 and all(isinstance(c, str) for c in r["choices"])
                and isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(r["choices"])):
            raise DataError(f"{path} record {i}: needs two or more choices and a label indexing one of them")
    return rows


def load_lm_splits(task: DictConfig) -> dict:
    """The task's records, capped: ``train``, ``evals`` (name -> records), ``choices`` (multiple-choice sets by
    name) and ``source`` (the fields of :class:`runner.data.TaskData`)."""
    folder = _task_dir(task)
    train = read_records(folder / str(task.train_file))
    evals = {name: read_records(folder / str(file)) for name, file in dict(task.eval_files).items()}
    if not evals:
        raise ConfigError(f"task {task.name} needs an eval file: task.eval_files={{validation: <file>}}")
    if task.get("max_train_samples"):
        train = train.select(range(min(len(train), int(task.max_train_samples))))
    if task.get("max_eval_samples"):
        evals = {k: v.select(range(min(len(v), int(task.max_eval_samples)))) for k, v in evals.items()}
    choices = {name: read_choices(folder / str(file)) for name, file in dict(task.get("mc_files") or {}).items()}
    return {"train": train, "evals": evals, "choices": choices, "source": str(folder)}


# ---------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------


def _eos(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def tokenize_lm(ds: datasets.Dataset, tokenizer, block: int, counts: dict | None = None) -> datasets.Dataset:
    """``input_ids`` and ``labels`` per example: text cut into blocks of ``block`` tokens, or one
    prompt/response pair per example with the prompt's labels at -100. ``counts`` (if given) gets what
    the block length costs: ``responses_cut`` (a response cut at ``block`` tokens, its EOS lost),
    ``records_dropped`` (a prompt that fills the block: nothing left to learn), ``tokens_dropped`` (a
    last block of one token, which predicts nothing)."""
    counts = {} if counts is None else counts
    if "prompt" in ds.column_names:
        rows, cut, dropped = [], 0, 0
        for r in ds:
            prompt = tokenizer(r["prompt"])["input_ids"]
            response = tokenizer(r["response"], add_special_tokens=False)["input_ids"] + _eos(tokenizer)
            ids = (prompt + response)[:block]
            labels = ([IGNORE] * len(prompt) + response)[:block]
            if not any(t != IGNORE for t in labels):
                dropped += 1
                continue
            cut += len(prompt) + len(response) > block
            rows.append({"input_ids": ids, "labels": labels})
        if not rows:
            raise DataError(f"every prompt fills trainer.max_seq_length={block}: no response token is left to learn")
        counts.update(responses_cut=cut, records_dropped=dropped)
        if cut or dropped:
            log.warning("trainer.max_seq_length=%d cuts %d response(s) and leaves %d record(s) nothing to learn "
                        "(dropped); counted in results.json data.input", block, cut, dropped)
    else:
        stream = [t for text in ds["text"] for t in tokenizer(text)["input_ids"]]
        rows = [{"input_ids": stream[i:i + block], "labels": stream[i:i + block]} for i in range(0, len(stream), block)]
        kept = [r for r in rows if len(r["input_ids"]) > 1]  # one token predicts nothing
        counts.update(blocks=len(kept), tokens_dropped=len(rows) - len(kept))
        rows = kept
    return datasets.Dataset.from_list([{**r, "attention_mask": [1] * len(r["input_ids"])} for r in rows])


class LMCollator:
    """Pads ``input_ids`` (with the pad token), ``attention_mask`` (0) and ``labels`` (-100) on the right."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad_id = int(tokenizer.pad_token_id)
        self.multiple = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            length = -(-length // self.multiple) * self.multiple

        def pad(key, value):
            return torch.tensor([list(map(int, f[key])) + [value] * (length - len(f[key])) for f in features])

        return {"input_ids": pad("input_ids", self.pad_id), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", IGNORE)}


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


def token_log_likelihoods(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: (sum of the target tokens' log-probabilities, their count). Position ``t`` predicts
    label ``t + 1``, as the model's own loss shifts them."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    keep = labels != IGNORE
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (logp * keep).sum(-1), keep.sum(-1)


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each example's own mean negative log-likelihood per target token ([B]); HIS per example sums
    their gradients (the batch loss of the model mixes examples by their token counts)."""
    ll, n = token_log_likelihoods(logits, labels)
    return -ll / n.clamp_min(1)


def perplexity_metrics(nll_sum: float, tokens: int) -> dict:
    loss = nll_sum / max(tokens, 1)
    return {"perplexity": float(math.exp(min(loss, 700.0))), "loss": float(loss), "tokens": int(tokens)}


@torch.no_grad()
def next_token_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The argmax next token at every target position (flattened, in order): what a pruned model's
    predictions are compared with for stability."""
    keep = labels[:, 1:] != IGNORE
    return logits[:, :-1].argmax(-1)[keep]


def choice_requests(rows: list[dict], tokenizer, max_length: int) -> list[dict]:
    """One request per (question, choice): ``input_ids`` of context + choice (cut from the left to
    ``max_length``) and ``labels`` marking the continuation's tokens, lm-evaluation-harness's split:
    the continuation is what ``context + choice`` adds after the context's own tokens."""
    requests = []
    for q, r in enumerate(rows):
        context = str(r["context"])
        context_ids = tokenizer(context)["input_ids"]
        for c, choice in enumerate(r["choices"]):
            whole = tokenizer(context + str(choice))["input_ids"]
            cont = len(whole) - len(context_ids)
            if cont < 1 or whole[:len(context_ids)] != context_ids:  # the tokens merged across the boundary
                cont = len(tokenizer(str(choice), add_special_tokens=False)["input_ids"])
                whole = context_ids + whole[len(whole) - cont:]
            whole = whole[-max_length:]
            labels = [IGNORE] * (len(whole) - cont) + whole[len(whole) - cont:]
            requests.append({"question": q, "choice": c, "input_ids": whole, "labels": labels,
                             "attention_mask": [1] * len(whole), "bytes": len(str(choice).encode("utf-8"))})
    return requests


def choice_accuracy(rows: list[dict], requests: list[dict], loglik: list[float]) -> dict:
    """``acc`` (highest log-likelihood) and ``acc_norm`` (highest log-likelihood per byte of the choice)."""
    n = len(rows)
    best = {}
    for req, ll in zip(requests, loglik):
        q = req["question"]
        score, norm = ll, ll / max(req["bytes"], 1)
        old = best.get(q)
        best[q] = (max(old[0], (score, req["choice"])) if old else (score, req["choice"]),
                   max(old[1], (norm, req["choice"])) if old else (norm, req["choice"]))
    acc = np.mean([best[q][0][1] == int(rows[q]["label"]) for q in range(n)])
    acc_norm = np.mean([best[q][1][1] == int(rows[q]["label"]) for q in range(n)])
    return {"acc": float(acc), "acc_norm": float(acc_norm), "num_examples": n}


def unigram_perplexity(train_labels: list[list[int]], eval_labels: list[list[int]], vocab: int) -> float:
    """The constant prediction's perplexity: every target token predicted by the training targets'
    token frequencies (add-one smoothed over the vocabulary), whatever the context."""
    counts = np.ones(vocab, dtype=np.float64)
    for labels in train_labels:
        for t in labels:
            if t != IGNORE:
                counts[t] += 1
    logp = np.log(counts / counts.sum())
    targets = [t for labels in eval_labels for t in labels[1:] if t != IGNORE]
    return float(math.exp(-float(np.mean(logp[targets])))) if targets else float("nan")


@torch.no_grad()
def score_choices(model, rows: list[dict], tokenizer, max_length: int, batch_size: int, device) -> dict:
    """Zero-shot multiple-choice accuracy of ``model`` on ``rows`` (:func:`choice_requests`,
    :func:`choice_accuracy`)."""
    requests = choice_requests(rows, tokenizer, max_length)
    collate = LMCollator(tokenizer)
    was_training = model.training
    model.eval()
    loglik: list[float] = []
    try:
        for start in range(0, len(requests), batch_size):
            batch = collate(requests[start:start + batch_size])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loglik += token_log_likelihoods(logits, batch["labels"])[0].double().cpu().tolist()
    finally:
        model.train(was_training)
    return choice_accuracy(rows, requests, loglik)


def trivial_levels(train_labels, eval_labels, vocab: int) -> dict:
    """The learning check's reference for a causal-LM task (the shape of runner.curves.trivial_levels)."""
    return {"prediction": "training unigram frequencies",
            "metrics": {"perplexity": unigram_perplexity(list(train_labels), list(eval_labels), vocab)}}
