"""Model families: where each one keeps its layers, attention heads and task head.

Everything that depends on a model's layout asks the :class:`Architecture` of its
``config.model_type`` (:func:`architecture_of`): the head gate and physical head removal
(:mod:`runner.prune`), the attention-entropy score, SAFE's per-layer grouping, probe and freezer,
the classifier head and its pooling, LoRA's default targets and the position limit of the length
check. A family is one module here (``bert.py``, ``distilbert.py``, ``mpnet.py``, ...) that
subclasses :class:`Architecture` and registers itself in :data:`FAMILIES`; a new family is one
module plus one entry in the tests' family table (``tests/families.py``).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from runner.preflight.errors import ModelError


def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(_get(root, parent), child, module)


def unwrapped(module: nn.Module) -> nn.Module:
    """A projection seen through an adapter wrapper (runner.adapters.WithBottleneck keeps it as ``base_layer``)."""
    return getattr(module, "base_layer", module)


def prune_linear(layer: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """``layer`` keeping only the rows (``dim=0``) or columns (``dim=1``) in ``index``."""
    with warnings.catch_warnings():  # nn.Linear warns when initialising a zero-width weight
        warnings.simplefilter("ignore", UserWarning)
        new = prune_linear_layer(layer, index.to(layer.weight.device), dim=dim)
    return new.to(dtype=layer.weight.dtype, device=layer.weight.device)


class NoHeads(nn.Module):
    """Self-attention with no heads left (a layer that lost every head): an empty ``[B, T, 0]``
    context, so a zero-width output projection adds only its bias, exactly what the gated model
    computes with the layer's gates at 0."""

    def __init__(self, head_size: int):
        super().__init__()
        self.num_attention_heads = 0
        self.attention_head_size = head_size
        self.all_head_size = 0

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


class OnlyOutputBias(nn.Module):
    """An attention block that holds its own output projection (DistilBERT's ``out_lin``, MPNet's
    ``o``), with no heads left: the (zero-width) projection, kept under its own name with any adapter
    around it, runs on an empty context, so it adds only its bias, as the gated model does."""

    def __init__(self, projection_name: str, projection: nn.Module, returns: int = 2):
        super().__init__()
        self.num_attention_heads = 0
        self.n_heads = 0
        self.returns = returns
        self.projection_name = projection_name
        self.add_module(projection_name, projection)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        projection = getattr(self, self.projection_name)
        out = projection(hidden_states.new_zeros(*hidden_states.shape[:-1], 0))
        return (out, *([None] * (self.returns - 1)))


def _attend_to_self_where_nothing_is_visible(module, args, kwargs):
    """A query whose every key is masked (a padding query whose sliding window holds only padding, in
    ModernBERT's and Mistral's eager attention) gets NaN, which then reaches the real tokens through the
    values (0 x NaN). Such a (padding) query attends to itself instead: real tokens' outputs are unchanged."""
    mask = kwargs.get("attention_mask")
    if not torch.is_tensor(mask) or mask.dim() != 4 or mask.shape[-1] != mask.shape[-2]:
        return None
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    empty = ~allowed.any(-1, keepdim=True)  # [B, 1, T, 1]
    if not bool(empty.any()):
        return None
    diagonal = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    fix = empty & diagonal
    mask = mask | fix if mask.dtype == torch.bool else mask.masked_fill(fix, 0.0)
    return args, {**kwargs, "attention_mask": mask}


def no_empty_attention_rows(arch: "Architecture", model: nn.Module) -> None:
    """Every layer's attention gets :func:`_attend_to_self_where_nothing_is_visible` (idempotent)."""
    for layer in arch.encoder_layers(model):
        att = arch.attention_module(layer)
        if not getattr(att, "_runner_no_empty_rows", False):
            att.register_forward_pre_hook(_attend_to_self_where_nothing_is_visible, with_kwargs=True)
            att._runner_no_empty_rows = True


@dataclass(frozen=True)
class HeadGeometry:
    num_layers: int
    num_heads: int  # per layer, before pruning
    head_size: int
    hidden_size: int

    @property
    def total_heads(self) -> int:
        return self.num_layers * self.num_heads


class Architecture:
    """One model family's layout. Paths are dotted module names: ``layers`` from the base model
    (``model.base_model``), the others from one layer. The defaults describe BERT."""

    name = "bert"
    model_types: tuple[str, ...] = ()
    layers = "encoder.layer"  # the list of transformer layers, under the base model
    attention = "attention.self"  # the module that holds q/k/v and the head count
    qkv: tuple[str, ...] = ("query", "key", "value")  # under ``attention``
    qkv_blocks = 1  # blocks of heads along each q/k/v projection's rows (3: q, k and v fused in one)
    output = "attention.output.dense"  # the projection the heads' concatenated outputs enter
    head_count_attrs: tuple[str, ...] = ("num_attention_heads",)  # on ``attention``, updated on removal
    width_attrs: tuple[str, ...] = ("all_head_size",)  # on ``attention``: heads x head size
    heads_config = "num_attention_heads"
    hidden_config = "hidden_size"
    lora_targets: tuple[str, ...] = ("query", "value")  # adapter.target_modules=auto for LoRA
    bottleneck_targets: tuple[str, ...] = ("attention.output.dense", "output.dense")  # ... for bottleneck adapters
    all_linear_targets: tuple[str, ...] = ("query", "key", "value", "output.dense", "intermediate.dense")
    # Per-layer methods (SAFE's freezing, head pruning) need a layer's own weights: None, or why not
    per_layer_refusal: str | None = None
    supports_sdpa = True  # the family's own attention code has an SDPA path (else eager only)
    # Without a pooler of its own, the classifier reads token 0 out of [B, T, hidden] (RoBERTa's head), so
    # mean pooling hands it the mean there; False: the model's forward reads it (see sequence_output)
    classifier_reads_token0 = True
    # Decoders (causal attention, no pooler): their sequence classifier reads the last non-padding token
    # (``own_pooling = "last"``), and a causal-LM task can train them (runner.tasks)
    decoder = False
    own_pooling = "cls"  # what model.pooling calls the model's own head: cls (a pooler or token 0) or last

    # ---- layers and heads

    def encoder_layers(self, model: nn.Module) -> list[nn.Module]:
        base = getattr(model, "base_model", model)
        try:
            layers = _get(base, self.layers)
        except AttributeError:
            layers = None
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise ModelError(f"{type(model).__name__} has no {self.layers} list; cannot locate its attention heads")
        return list(layers)

    def num_heads(self, config) -> int:
        return int(getattr(config, self.heads_config))

    def head_size(self, config) -> int:
        """Width of one head: ``head_dim`` where the config sets it (decoders may), else hidden / heads."""
        explicit = getattr(config, "head_dim", None) if self.decoder else None
        return int(explicit or int(getattr(config, self.hidden_config)) // self.num_heads(config))

    def geometry(self, model: nn.Module) -> HeadGeometry:
        config = model.config
        return HeadGeometry(num_layers=len(self.encoder_layers(model)), num_heads=self.num_heads(config),
                            head_size=self.head_size(config), hidden_size=int(getattr(config, self.hidden_config)))

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return _get(layer, self.attention)

    def heads_in_layer(self, layer: nn.Module) -> int:
        """Heads a layer has now (after any physical pruning)."""
        return int(getattr(self.attention_module(layer), self.head_count_attrs[0], 0))

    def output_projection(self, layer: nn.Module) -> nn.Linear:
        """The attention output projection, seen through our bottleneck adapter wrapper."""
        dense = _get(layer, self.output)
        base = unwrapped(dense)
        if not isinstance(base, nn.Linear) or hasattr(base, "lora_A"):
            raise ModelError(f"{self.output} is a {type(dense).__name__}; merge LoRA adapters before pruning "
                             f"(runner.prune.gate.unwrap_peft)")
        return base

    def head_weights(self, layer: nn.Module) -> list[tuple[torch.Tensor, int, tuple[int, ...]]]:
        """The weights whose slices belong to heads (magnitude scores): (weight, the dimension heads lie
        along, where each block of heads starts on it): q/k/v rows, the output projection's columns.
        Head ``h``'s slice of a block starting at ``o`` is ``o + h * d .. o + (h + 1) * d``."""
        att = self.attention_module(layer)
        weights = [_get(att, n).weight for n in self.qkv]
        blocks = [tuple(b * w.shape[0] // self.qkv_blocks for b in range(self.qkv_blocks)) for w in weights]
        return [(w, 0, starts) for w, starts in zip(weights, blocks)] + [(self.output_projection(layer).weight, 1, (0,))]

    def check_layer(self, index: int, layer: nn.Module) -> None:
        """Raises :class:`ModelError` when the layer does not look like this family's."""
        try:
            att = self.attention_module(layer)
            if self.heads_in_layer(layer) > 0:  # a layer that lost every head has no q/k/v left
                for name in self.qkv:
                    _get(att, name)
        except AttributeError as exc:
            raise ModelError(f"layer {index} has no {self.attention} with {'/'.join(self.qkv)}: {exc}") from exc
        self.output_projection(layer)

    # ---- physical head removal

    def remove_heads(self, layer: nn.Module, keep: list[int], head_size: int, num_heads: int) -> None:
        """Keep only heads ``keep`` (original indices, sorted) of one layer, in place."""
        index = torch.tensor([h * head_size + j for h in keep for j in range(head_size)], dtype=torch.long)
        self._set_output(layer, self.prune_projection(self.output_projection(layer), index, dim=1))
        if not keep:
            self.remove_all_heads(layer, head_size)
            return
        att = self.attention_module(layer)
        rows = torch.cat([index + b * num_heads * head_size for b in range(self.qkv_blocks)])
        for name in self.qkv:
            _set(att, name, self.prune_projection(_get(att, name), rows, dim=0))
        for attr in self.head_count_attrs:
            setattr(att, attr, len(keep))
        for attr in self.width_attrs:
            setattr(att, attr, len(keep) * head_size)
        self.after_removal(layer, keep, index)

    def prune_projection(self, projection: nn.Module, index: torch.Tensor, dim: int) -> nn.Module:
        """``projection`` keeping only its outputs (``dim=0``, nn.Linear's weight rows) or inputs (``dim=1``) in
        ``index``: nn.Linear here; a family with other projection layers (GPT-2's Conv1D) says how."""
        return prune_linear(projection, index, dim=dim)

    def after_removal(self, layer: nn.Module, keep: list[int], index: torch.Tensor) -> None:
        """What else depends on the heads of a layer (relative position terms), given the kept heads and
        their rows of a projection (``index``): nothing for BERT."""

    def remove_all_heads(self, layer: nn.Module, head_size: int) -> None:
        """A layer that lost every head: no attention (:class:`NoHeads`), or, where the output projection
        lives inside the attention module (DistilBERT, MPNet, ModernBERT), that projection alone."""
        if self.output.startswith(self.attention + "."):
            inner = self.output[len(self.attention) + 1:]
            _set(layer, self.attention, OnlyOutputBias(inner, _get(layer, self.output)))
        else:
            _set(layer, self.attention, NoHeads(head_size))

    def _set_output(self, layer: nn.Module, new: nn.Linear) -> None:
        dense = _get(layer, self.output)
        if hasattr(dense, "base_layer"):  # bottleneck adapter wrapper
            dense.base_layer = new
        else:
            _set(layer, self.output, new)

    def prepare(self, model: nn.Module) -> None:
        """Fixes a family needs in transformers' own code before the runner uses the model (idempotent)."""

    # ---- positions, heads, pooling

    def max_positions(self, config) -> int:
        """Positions the model can read (0: no limit known): its position embeddings less the ones before
        the first token's (:meth:`position_offset`)."""
        positions = int(getattr(config, "max_position_embeddings", 0) or 0)
        return positions - self.position_offset(config) if positions else 0

    def position_offset(self, config) -> int:
        """Position ids of the first token (RoBERTa's start after the padding index): 0 for BERT."""
        return 0

    def own_pooler(self, model: nn.Module) -> tuple[nn.Module, str] | None:
        """(module, its name relative to the model) of the pooler the classifier reads under ``cls``
        pooling, which mean pooling replaces; None when the classifier reads token 0 itself."""
        base = getattr(model, "base_model", model)
        pooler = getattr(base, "pooler", None)
        return (pooler, "pooler") if isinstance(pooler, nn.Module) else None

    def set_own_pooler(self, model: nn.Module, pooler: nn.Module) -> None:
        getattr(model, "base_model", model).pooler = pooler

    def sequence_output(self, model: nn.Module) -> nn.Module | None:
        """The module whose output holds the last hidden states when no module reads token 0 out of
        them (DistilBERT indexes token 0 in its forward): mean pooling writes the mean into token 0."""
        return None

    def extra_head_modules(self, pooling: str) -> tuple[str, ...]:
        """Modules beside the classifier that belong to the task head and train with it."""
        return ()


FAMILIES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    for model_type in arch.model_types:
        FAMILIES[model_type] = arch
    return arch


def supported_model_types() -> list[str]:
    return list(FAMILIES)


def architecture_of(thing) -> Architecture:
    """The family of a model, a Hugging Face config or a ``model_type``; one line naming the supported
    ones otherwise."""
    config = getattr(thing, "config", thing)
    model_type = thing if isinstance(thing, str) else getattr(config, "model_type", None)
    arch = FAMILIES.get(model_type)
    if arch is None:
        raise ModelError(f"model type {model_type} is not supported; supported: {', '.join(FAMILIES)} "
                         f"(README, 'Model families')")
    return arch


def layer_list_names() -> list[str]:
    return sorted({arch.layers.rpartition(".")[2] for arch in FAMILIES.values()})


def layer_pattern(end: str = r"\.") -> re.Pattern:
    """``.<layer list>.<index>.`` inside a parameter or module name, for every registered family
    (``end="$"``: a name that ends at the layer itself)."""
    names = "|".join(re.escape(n) for n in layer_list_names())
    return re.compile(rf"\.(?:{names})\.(\d+){end}")


from runner.arch import albert, bert, deberta, distilbert, gpt2, llama, modernbert, mpnet  # noqa: E402,F401  (each registers its family)
