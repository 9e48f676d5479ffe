"""BERT's layout, shared by RoBERTa, XLM-RoBERTa, CamemBERT and ELECTRA:
``encoder.layer.N.attention.self.{query,key,value}``, ``attention.output.dense``; BERT reads
its pooler (dense + tanh on ``[CLS]``), the others a classification head on token 0."""

from __future__ import annotations

from runner.arch import Architecture, register


class Bert(Architecture):
    name = "bert"
    model_types = ("bert", "electra")


class Roberta(Bert):
    """RoBERTa's positions start after the padding index."""

    name = "roberta"
    model_types = ("roberta", "xlm-roberta", "camembert")

    def position_offset(self, config) -> int:
        return int(config.pad_token_id) + 1


BERT = register(Bert())
ROBERTA = register(Roberta())
