"""The task head on top of the encoder: how the sequence is pooled, what
trains beside the adapters, and where a regression output starts.

* ``model.pooling``: ``cls`` reads the model's own pooler (BERT: dense + tanh
  on ``[CLS]``; RoBERTa/ELECTRA: their classification head on ``<s>``),
  ``mean`` the masked mean of the last hidden states, then the same
  classifier. ``auto`` (the default) reads the model folder's
  sentence-transformers pooling config (``modules.json`` /
  ``1_Pooling/config.json``) and falls back to ``cls``. The choice is stored
  in the Hugging Face config (``runner_pooling``), so a saved full or pruned
  model is rebuilt with the same head.
* ``adapter.head_modules``: the modules that train beside the adapters;
  ``auto`` is the classifier, plus the pooler when ``cls`` pooling reads one.
* Regression: the output bias starts at the training-label mean, so the
  encoder is not pushed to close a shared offset (which collapses every
  example's representation to one point). Loss, metrics and predictions stay
  on the task's own scale.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from runner.arch import architecture_of
from runner.preflight.errors import ConfigError, ModelError
from runner.preflight.schema import is_lm_task

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean", "last")  # last: a decoder's own head (its last non-padding token)
CONFIG_KEY = "runner_pooling"  # in the Hugging Face config of models we save
CLASSIFIER_MODULES = ("classifier", "score")


def folder_pooling(model_path: str | Path) -> str | None:
    """``mean`` or ``cls`` from a sentence-transformers folder's pooling config; None if it has none."""
    folder = Path(str(model_path))
    if not folder.is_dir():
        return None
    pooling_dir = folder / "1_Pooling"
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text())
            pooling_dir = next(
                (folder / e["path"] for e in entries if str(e.get("type", "")).endswith("models.Pooling")), pooling_dir
            )
        except (ValueError, KeyError, TypeError):
            log.warning("%s is not a sentence-transformers modules list; ignoring it", modules)
    config = pooling_dir / "config.json"
    if not config.is_file():
        return None
    try:
        settings = json.loads(config.read_text())
    except ValueError:
        log.warning("%s is not JSON; ignoring it", config)
        return None
    if settings.get("pooling_mode_mean_tokens"):
        return "mean"
    if settings.get("pooling_mode_cls_token"):
        return "cls"
    return None  # max / weighted pooling: not offered, use the model's own pooler


def own_pooling_of(model_path: str | Path) -> str:
    """What the model's own head reads (its family's ``own_pooling``: ``cls`` for encoders, ``last`` for
    decoders), from the folder's config.json; ``cls`` where that cannot be read (the model load then
    says what is wrong)."""
    config = Path(str(model_path)) / "config.json"
    try:
        return architecture_of(str(json.loads(config.read_text()).get("model_type"))).own_pooling
    except (OSError, ValueError, AttributeError, ModelError):
        return "cls"


def resolve_pooling(requested: str | None, model_path: str | Path) -> tuple[str, str]:
    """(pooling, where the choice came from: ``config`` or the folder's pooling file or ``default``)."""
    requested = "auto" if requested in (None, "") else str(requested)
    if requested != "auto":
        if requested not in POOLINGS:
            raise ConfigError(f"model.pooling={requested} is not a pooling; use one of auto, {', '.join(POOLINGS)}")
        return requested, "config"
    found = folder_pooling(model_path)
    if found is not None:
        return found, "model folder (sentence-transformers pooling config)"
    return own_pooling_of(model_path), "default"


def settle_pooling(cfg: DictConfig, model_path: str | Path) -> str | None:
    """Replace ``model.pooling=auto`` in ``cfg`` by the pooling a run uses, as the run saves it in config.yaml
    (a later ``prune.from_run``, a resume and the pruning of a trained run compare against it). Returns where
    the choice came from (:func:`resolve_pooling`); None for a causal LM task, which pools nothing."""
    if is_lm_task(cfg.task):
        return None
    pooling, source = resolve_pooling(cfg.model.get("pooling"), model_path)
    with open_dict(cfg):
        cfg.model.pooling = pooling
    return source


class MaskedMeanPooler(nn.Module):
    """Mean of the last hidden states over the tokens the attention mask keeps.

    The mask is not an argument of a pooler's ``forward``; a forward pre-hook
    on the whole model hands it over (:func:`apply_pooling`) and clears it after.
    """

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is None or tuple(mask.shape) != tuple(hidden_states.shape[:2]):
            return hidden_states.mean(dim=1)
        weights = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


# The hooks are module-level functions that reach the pooler through the module
# they run on (a plain attribute, not a closure), so copy.deepcopy(model), as
# pruning does, gives a copy whose hooks feed the copy's own pooler.


def _hand_over_mask(module, args, kwargs):
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
        mask = args[1]
    module._runner_mean_pooler.mask = mask


def _clear_mask(module, _args, _kwargs, output):
    module._runner_mean_pooler.mask = None
    return output


def _mean_into_classifier(module, args):
    return (module._runner_mean_pooler(args[0]).unsqueeze(1), *args[1:])


def is_causal_lm(model: nn.Module) -> bool:
    """A language model with its LM head (``...ForCausalLM``, GPT-2's ``LMHeadModel``), not a classifier."""
    names = {n for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for n in ((v,) if isinstance(v, str) else v)}
    return type(model).__name__ in names


def classifier_of(model: nn.Module) -> nn.Module:
    for name in CLASSIFIER_MODULES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ConfigError(f"{type(model).__name__} has no classifier/score head")


def has_own_pooler(model: nn.Module) -> bool:
    """True for BERT-style models whose classifier reads a pooler's output (the family says where)."""
    return architecture_of(model).own_pooler(model) is not None


def _mean_into_token_zero(module, args, kwargs, output):
    """Forward hook on the module that returns the last hidden states (families whose forward reads
    token 0 itself, DistilBERT): the masked mean replaces token 0's state there."""
    hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
    pooled = module._runner_mean_pooler(hidden)
    hidden = torch.cat([pooled.unsqueeze(1), hidden[:, 1:]], dim=1)
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    output.last_hidden_state = hidden
    return output


def apply_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """Make ``model`` pool with ``pooling``; records it in ``model.config``. Idempotent."""
    if pooling not in POOLINGS:
        raise ConfigError(f"model.pooling={pooling} is not a pooling; use one of {', '.join(POOLINGS)}")
    current = getattr(model, "_runner_pooling", None)
    if current == pooling:
        return model
    if current is not None:
        raise ConfigError(f"the model already pools with {current}; build a fresh model for pooling={pooling}")
    arch = architecture_of(model)
    if pooling != arch.own_pooling and (pooling != "mean" or arch.decoder):
        own = "its last non-padding token" if arch.own_pooling == "last" else "its pooler or first token"
        raise ConfigError(f"model.pooling={pooling} does not fit a {model.config.model_type} model, whose head reads {own}; "
                          f"use model.pooling={arch.own_pooling} or auto")
    model.config.update({CONFIG_KEY: pooling})
    model._runner_pooling = pooling
    if pooling == arch.own_pooling:
        return model
    pooler = MaskedMeanPooler()
    sequence = arch.sequence_output(model)
    if has_own_pooler(model):  # BERT: the classifier reads encoder.pooler(hidden_states)
        arch.set_own_pooler(model, pooler)
    elif arch.classifier_reads_token0:  # RoBERTa/ELECTRA/MPNet: the classification head reads features[:, 0]
        reader = classifier_of(model)  # hand it the mean there
        reader._runner_mean_pooler = pooler  # plain attribute: no parameters, no state_dict keys
        reader.register_forward_pre_hook(_mean_into_classifier)
    elif sequence is not None:  # DistilBERT: the model's forward reads token 0 of the last hidden states
        sequence._runner_mean_pooler = pooler
        sequence.register_forward_hook(_mean_into_token_zero, with_kwargs=True)
    else:
        raise ConfigError(f"{type(model).__name__}: model.pooling=mean has no place to hand the mean to; use model.pooling=cls")
    model._runner_mean_pooler = pooler
    model.register_forward_pre_hook(_hand_over_mask, with_kwargs=True)
    model.register_forward_hook(_clear_mask, with_kwargs=True)
    return model


def saved_pooling(model: nn.Module) -> str | None:
    """The pooling a saved model was trained with (models saved before it was recorded: the model's own;
    a causal LM: None)."""
    if is_causal_lm(model):
        return None
    return str(getattr(model.config, CONFIG_KEY, None) or architecture_of(model).own_pooling)


def head_modules(model: nn.Module, pooling: str, requested="auto") -> list[str]:
    """Module names (relative suffixes) that train beside the adapters."""
    if requested not in (None, "", "auto"):
        names = [str(n) for n in requested]
        unknown = [n for n in names if not any(m.endswith(n) for m, _ in model.named_modules())]
        if unknown:
            raise ConfigError(f"adapter.head_modules {unknown} name no module of the model; e.g. [classifier, pooler] or auto")
        return names
    if is_causal_lm(model):  # the LM head (tied to the embeddings in most decoders) stays as pretrained
        return []
    names = [next(n for n in CLASSIFIER_MODULES if isinstance(getattr(model, n, None), nn.Module))]
    names += [n for n in architecture_of(model).extra_head_modules(pooling) if isinstance(getattr(model, n, None), nn.Module)]
    if pooling == "cls" and has_own_pooler(model):
        names.append(architecture_of(model).own_pooler(model)[1])
    return names


def is_in_modules(param_name: str, modules) -> bool:
    """``param_name`` lies inside one of the modules named by ``modules`` (name components)."""
    parts = param_name.split(".")
    for module in modules:
        m = str(module).split(".")
        if any(parts[i:i + len(m)] == m for i in range(len(parts) - len(m))):
            return True
    return False


def head_parameter_count(model: nn.Module, modules) -> int:
    """Trainable parameters inside the head modules (PEFT's trained copies included)."""
    return int(sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and is_in_modules(n, modules)))


def output_layer(model: nn.Module) -> nn.Linear:
    """The classifier's last linear layer (BERT: ``classifier``; RoBERTa: ``classifier.out_proj``)."""
    head = classifier_of(model)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__}'s head has no linear layer")
    return linears[-1]


@torch.no_grad()
def start_regression_bias(model: nn.Module, label_mean: float) -> float | None:
    """Start the regression output at the training-label mean; returns the value set (None: the head has
    no bias, as decoders' ``score``, and starts at 0; a warning says so)."""
    layer = output_layer(model)
    if layer.out_features != 1:
        raise ConfigError("a regression head needs one output")
    if layer.bias is None:
        log.warning("the %s regression head has no bias: it starts at 0, not at the training-label mean %.4g",
                    model.config.model_type, label_mean)
        return None
    layer.bias.fill_(float(label_mean))
    return float(label_mean)
