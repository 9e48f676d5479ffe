"""How the pruning pipeline judges a model, per kind of task: the batches it reads, what a model
outputs on them, the metrics, the stability against the unpruned model and the trivial level.

* :class:`Classification` (GLUE): predicted labels; the task's metrics; stability = the fraction of
  examples whose predicted label is unchanged (regression: Pearson of the two models' outputs);
  trivial = the majority class (the training mean).
* :class:`LanguageModel` (``task.kind=causal_lm``, :mod:`runner.lm`): per-token log-likelihoods;
  perplexity (and zero-shot multiple-choice accuracy on ``task.mc_files``); stability = the fraction of
  target positions whose argmax next token is unchanged; trivial = the training tokens' unigram
  perplexity. Lower perplexity is better: alpha is chosen by the mean NLL per token (``-loss``), which
  stays finite where a perplexity curve explodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from transformers import DataCollatorWithPadding

from runner import lm
from runner.curves import trivial_levels
from runner.data import tokenize
from runner.preflight.schema import is_lm_task
from runner.tasks import compute_metrics, predictions_from_logits

CLASSIFICATION_STABILITY = (
    "agreement of the pruned model's predictions with the unpruned model's on the reported eval examples (the whole "
    "eval split, or with prune.alpha_split=dev_half its reporting half): classification, the fraction of examples with "
    "the same predicted label, 1 - k/n when k of the n predictions differ; regression, the Pearson correlation of the "
    "two models' outputs"
)
LM_STABILITY = (
    "agreement of the pruned model's next-token predictions (argmax) with the unpruned model's at every target token "
    "of the reported eval blocks: the fraction that are the same"
)


@dataclass
class Outputs:
    """What a model produced on a loader: per-example predictions (classification) or per-token ones (LM)."""

    preds: np.ndarray
    labels: np.ndarray | None = None
    nll: float = 0.0  # LM: summed negative log-likelihood of the target tokens
    tokens: int = 0  # LM: target tokens
    extra: dict = field(default_factory=dict)  # LM: multiple-choice metrics

    @property
    def examples(self) -> int:
        return int(len(self.labels)) if self.labels is not None else int(self.extra.get("blocks", 0))


def agreement(preds: np.ndarray, reference: np.ndarray, is_regression: bool = False) -> float:
    """Stability of predictions: the fraction that are equal (1 - k/n when k of n differ); regression: the
    Pearson correlation of the two models' outputs (NaN when either is constant)."""
    if is_regression:
        if np.std(preds) == 0 or np.std(reference) == 0:
            return float("nan")
        return float(np.corrcoef(preds, reference)[0, 1])
    return float(np.mean(preds == reference)) if len(reference) else float("nan")


def _on(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


class Classification:
    stability_definition = CLASSIFICATION_STABILITY

    def __init__(self, task, tokenizer, max_length: int, cache_dir=None):
        self.task, self.tokenizer, self.max_length, self.cache_dir = task, tokenizer, max_length, cache_dir
        self.collator = DataCollatorWithPadding(tokenizer)
        self.main_metric = str(task.main_metric)

    def tokenize(self, ds):
        return tokenize(ds, self.tokenizer, self.task.text_keys, self.max_length, self.cache_dir)

    @torch.no_grad()
    def outputs(self, model: nn.Module, loader, device, choices: bool = True) -> Outputs:
        was = model.training
        model.eval()
        logits, labels = [], []
        for batch in loader:
            batch = _on(batch, device)
            logits.append(model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float().cpu())
            labels.append(batch["labels"].cpu())
        model.train(was)
        preds = predictions_from_logits(torch.cat(logits).numpy(), self.task.is_regression)
        return Outputs(preds=preds, labels=torch.cat(labels).numpy())

    def metrics(self, out: Outputs, names=None) -> dict:
        return compute_metrics(list(names or self.task.metrics), out.preds, out.labels)

    def selection(self, metrics: dict) -> float:
        """The number alpha's choice maximises (the area under it over the ratios)."""
        return metrics[self.main_metric]

    def stability(self, out: Outputs, ref: Outputs) -> float:
        return agreement(out.preds, ref.preds, bool(self.task.is_regression))

    def trivial(self, train, eval_ds, ref: Outputs) -> tuple[float, str]:
        """(the main metric's trivial level on the reported examples, what predicts it); ``train``: the raw
        training split, ``eval_ds``: the tokenised reported examples."""
        level = trivial_levels([self.main_metric], train["label"], ref.labels, self.task.is_regression)
        return level["metrics"][self.main_metric], "constant prediction" if self.task.is_regression else "majority class"


class LanguageModel(Classification):
    stability_definition = LM_STABILITY

    def __init__(self, task, tokenizer, max_length: int, cache_dir=None, choices: dict | None = None):
        super().__init__(task, tokenizer, max_length, cache_dir)
        self.collator = lm.LMCollator(tokenizer)
        self.choices = choices or {}

    def tokenize(self, ds):
        return lm.tokenize_lm(ds, self.tokenizer, self.max_length)

    @torch.no_grad()
    def outputs(self, model: nn.Module, loader, device, choices: bool = True) -> Outputs:
        was = model.training
        model.eval()
        nll, tokens, preds, blocks = 0.0, 0, [], 0
        for batch in loader:
            batch = _on(batch, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            ll, n = lm.token_log_likelihoods(logits, batch["labels"])
            nll, tokens, blocks = nll - float(ll.double().sum()), tokens + int(n.sum()), blocks + len(n)
            preds.append(lm.next_token_predictions(logits, batch["labels"]).cpu())
        extra = {"blocks": blocks}
        if choices:
            for name, rows in self.choices.items():
                scores = lm.score_choices(model, rows, self.tokenizer, self.max_length, 16, device)
                extra.update({f"{name}/{k}": v for k, v in scores.items()})
        model.train(was)
        return Outputs(preds=torch.cat(preds).numpy(), nll=nll, tokens=tokens, extra=extra)

    def metrics(self, out: Outputs, names=None) -> dict:
        return {**lm.perplexity_metrics(out.nll, out.tokens), **{k: v for k, v in out.extra.items() if k != "blocks"}}

    def selection(self, metrics: dict) -> float:
        return -metrics["loss"]

    def trivial(self, train, eval_ds, ref: Outputs) -> tuple[float, str]:
        train_labels = self.tokenize(train)["labels"]
        return lm.unigram_perplexity(list(train_labels), list(eval_ds["labels"]), len(self.tokenizer)), "unigram"


def for_task(task, tokenizer, max_length: int, cache_dir=None, choices: dict | None = None) -> Classification:
    if is_lm_task(task):
        return LanguageModel(task, tokenizer, max_length, cache_dir, choices)
    return Classification(task, tokenizer, max_length, cache_dir)
