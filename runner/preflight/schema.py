"""Every config key, declared once: its type, its default, its allowed range and what it does.

Each config group has a dataclass here (the option chosen by ``name:`` picks
it where options differ: ``adapter=lora`` vs ``adapter=bottleneck``). The
defaults are these dataclasses' and nowhere else: :func:`declared_defaults`
hands them to Hydra (``runner.preflight.config.register_config`` stores them as each
group's ``schema`` option), and the yaml files in ``conf/`` start from them
(``defaults: [schema, _self_]``) and set only what an option changes. Changing a
default is one edit here.
:func:`check_config` walks the composed config against them before any heavy
work, so every key is checked, not only those somebody thought of:

* **unknown keys** (``+trainer.lrr=1``) -> one line with the closest real key;
* **types**: integers are integers (not ``2.0``, not ``true``), numbers are
  finite (no ``inf``/``nan``), flags are ``true``/``false``, lists are lists;
* **ranges and choices** from each field's metadata (``positive``,
  ``fraction``, ``one of ...``).

A rule on a list field applies to every element (``prune.ratios``). Every
range lives here and nowhere else; only checks that involve several keys or the
model stay with the code that knows them (``adapter=none`` with an adapter
method and the sequence length: ``runner/preflight/validate.py``; SAFE's t_w < t_f and
``static_k``: ``SafeMethod.check_config``; ``prune.alpha=auto`` with its grid:
``runner/prune/settings.py``). This module imports nothing heavy: bad input
fails before torch loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.preflight.errors import ConfigError

POSITIVE_INT, POSITIVE, NONNEG, NONNEG_INT, FRACTION, FRACTION_OPEN = (
    "positive_int", "positive", "nonneg", "nonneg_int", "fraction", "fraction_open")
RULES = {
    POSITIVE_INT: ("a positive integer", lambda v: v > 0),
    POSITIVE: ("a positive number", lambda v: v > 0),
    NONNEG: ("a finite number >= 0", lambda v: v >= 0),
    NONNEG_INT: ("0 or a positive integer", lambda v: v >= 0),
    FRACTION: ("in [0, 1]", lambda v: 0 <= v <= 1),
    FRACTION_OPEN: ("in [0, 1)", lambda v: 0 <= v < 1),
    "pad_multiple": ("auto, null or a positive integer",
                     lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v > 0)),
    "auto_bool": ("auto, true or false", lambda v: v == "auto" or isinstance(v, bool)),
    # HIES's alpha (the paper: [0, 1)); alpha = 1 would be HIS alone, a criterion of its own (prune.name=his)
    "alpha": ("a number in [0, 1) or auto",
              lambda v: v == "auto" or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1)),
}
RULES["alpha_value"] = RULES[FRACTION_OPEN]  # alpha_grid's elements: [0, 1), with alpha's hint below


def _alpha_one_hint(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1:
        return "; alpha = 1 is plain HIS, a criterion of its own: use prune.name=his or add his to prune.compare"
    return ""


RULE_HINTS = {"alpha": _alpha_one_hint, "alpha_value": _alpha_one_hint}  # rule -> more words for one bad value

CRITERIA = ("hies", "his", "entropy", "random", "magnitude")  # head-pruning criteria (runner.prune.scores)
REPRESENTATIONS = ("adapted", "layer")  # what SAFE's probe compares (runner.safe.importance)
IMPORTANCES = ("drift", "own")  # SAFE's score: 1 - CKA(now, step 0) or 1 - CKA(with adapter, without) (runner.safe.importance)
HIS_PER = ("example", "batch")  # where HIS takes |dL/dm| (runner.prune.scores)
SCHEDULE_UNITS = ("fraction", "epoch")  # what safe.t_w / safe.t_f count (runner.safe.schedule)
TARGET_SETS = ("auto", "all-linear")  # adapter.target_modules by name: the family's attention projections, every linear
LR_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")


def _setting(default=None, rule=None, label: str | None = None):
    """A field with a range rule (a RULES key or a tuple of choices) and an optional label for messages."""
    meta = {"rule": rule, "label": label}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------- groups


@dataclass
class SharpnessSettings:
    """Sharpness of the final solution (runner/sharpness.py): the top Hessian eigenvalue of the training
    loss w.r.t. the tuned parameters, by power iteration on ``batches`` fixed training batches. Off by
    default (it costs ~ iters x batches x 4 forward passes); the SAFE benchmark turns it on for every method."""
    enabled: bool = False
    batches: int = _setting(2, POSITIVE_INT)
    batch_size: Optional[int] = _setting(None, POSITIVE_INT)  # null: trainer.batch_size
    iters: int = _setting(20, POSITIVE_INT)
    tol: float = _setting(1e-3, POSITIVE)


@dataclass
class TrainerSettings:
    """The training loop (``trainer.<key>``; conf/trainer/default.yaml starts from these)."""
    epochs: int = _setting(3, POSITIVE_INT)
    max_steps: Optional[int] = _setting(None, POSITIVE_INT)  # if set, overrides epochs
    batch_size: int = _setting(32, POSITIVE_INT)
    eval_batch_size: int = _setting(64, POSITIVE_INT)
    grad_accum_steps: int = _setting(1, POSITIVE_INT)
    lr: float = _setting(5e-4, POSITIVE)
    weight_decay: float = _setting(0.01, NONNEG)
    lr_schedule: str = _setting("linear", LR_SCHEDULES)
    warmup_ratio: float = _setting(0.06, FRACTION_OPEN)
    max_grad_norm: Optional[float] = _setting(1.0, NONNEG)  # 0 or null: no clipping
    # The seed of the dropout masks (null: the run's `seed`). Another value redraws only the masks:
    # weights, head initialisation and data order stay those of `seed`.
    dropout_seed: Optional[int] = _setting(None, NONNEG_INT)
    # Batches of similar lengths (HF Trainer's group_by_length: shuffled, then sorted within
    # mega-batches of 50 batches): fewer pad tokens under dynamic padding.
    group_by_length: bool = False
    # Pad each batch to a multiple of this; auto: 8 on a GPU, none on a CPU; null: none.
    pad_to_multiple_of: Any = _setting("auto", "pad_multiple")
    max_seq_length: int = _setting(128, POSITIVE_INT)
    mixed_precision: str = _setting("no", ("no", "fp16", "bf16"))  # passed to Accelerate
    # TF32 matmuls and convolutions on a CUDA GPU (Ampere or newer): about 1e-3 relative error per
    # matmul for several times the float32 speed; auto: on when on a GPU.
    tf32: Any = _setting("auto", "auto_bool")
    # torch.compile the training forward/backward (dynamic shapes). Steps that measure (FLOP counts,
    # saved-tensor hooks) run the eager module; evaluation stays eager.
    compile: bool = False
    # Recompute each layer's activations in backward instead of keeping them (transformers' gradient
    # checkpointing, non-reentrant): less activation memory for ~1/3 more compute. The saved-for-backward
    # figures then count what lives between forward and backward: what autograd saves outside the layers
    # plus each layer's kept inputs (docs/measurement.md).
    gradient_checkpointing: bool = False
    eval_every_steps: Optional[int] = _setting(None, POSITIVE_INT)  # null: once per epoch
    checkpoint_every_steps: Optional[int] = _setting(None, POSITIVE_INT)  # a resumable checkpoint; null: at epoch ends
    log_every_steps: int = _setting(10, POSITIVE_INT)
    num_workers: int = _setting(0, NONNEG_INT)
    cpu: bool = False
    progress_bar: bool = True  # when stderr is a terminal (never in a log file or a cluster job's output)
    # FLOPs by PyTorch's FLOP counter on the first lengths of each batch shape and trainable set; other
    # lengths follow exactly (docs/measurement.md).
    count_flops: bool = True
    # Bytes saved for backward, with saved-tensor hooks on the first lengths of each batch shape and
    # trainable set (so after every freeze too) and on every activations_check_every-th micro-batch,
    # which must match the exact prediction the others get (1: hooks on every micro-batch).
    measure_activations: bool = True
    activations_check_every: int = _setting(100, POSITIVE_INT)
    sharpness: SharpnessSettings = field(default_factory=SharpnessSettings)


CAUSAL_LM = "causal_lm"  # the task kind of text in, perplexity out (runner/lm.py)


@dataclass
class TaskSettings:
    name: str = ""
    # classification (GLUE: sequence classification or regression) or causal_lm (runner/lm.py: text or
    # prompt/response files, perplexity and zero-shot multiple choice; decoders only)
    kind: str = _setting("classification", ("classification", CAUSAL_LM))
    train_file: Optional[str] = None  # causal_lm: the training file in data_dir (.txt or .jsonl)
    eval_files: dict[str, str] = _setting({})  # causal_lm: eval split name -> file, primary first
    mc_files: dict[str, str] = _setting({})  # causal_lm: zero-shot multiple-choice set name -> .jsonl
    hub_path: Optional[str] = None
    hub_name: Optional[str] = None
    data_dir: Optional[str] = None
    glue_dir_name: Optional[str] = None
    text_keys: list[str] = _setting([])
    label_names: Optional[list[str]] = None
    is_regression: bool = False
    metrics: list[str] = _setting([])
    main_metric: str = ""
    train_split: str = "train"
    eval_splits: dict[str, str] = _setting({})
    tsv: Optional[dict[str, Any]] = None
    max_train_samples: Optional[int] = _setting(None, POSITIVE_INT)
    max_eval_samples: Optional[int] = _setting(None, POSITIVE_INT)
    holdout_samples: int = _setting(0, NONNEG_INT, "task.holdout_samples (training examples kept out of fine-tuning)")
    holdout_seed: int = 0


@dataclass
class ModelSettings:
    name_or_path: str = ""
    short_name: str = ""
    revision: Optional[str] = None
    trust_remote_code: bool = False
    attn_implementation: str = _setting("sdpa", ("sdpa", "eager", "flash_attention_2"))
    dtype: str = _setting("float32", ("float32", "bfloat16", "float16"))
    pooling: str = _setting("auto", ("auto", "cls", "mean", "last"))
    # attributes of the model's Hugging Face config set before loading, by their HF names
    # (``+model.config_overrides.hidden_dropout_prob=0``)
    config_overrides: dict[str, Any] = _setting({})


@dataclass
class LoraSettings:
    """LoRA through PEFT (``adapter=lora``)."""
    _target_: str = "runner.adapters.add_lora"  # (model, adapter cfg, head modules) -> model
    name: str = "lora"
    r: int = _setting(8, POSITIVE_INT, "adapter.r (LoRA rank)")
    alpha: float = _setting(16, POSITIVE)
    dropout: float = _setting(0.1, FRACTION_OPEN)
    # Module-name suffixes: auto, the family's query and value projections (runner/arch; BERT: query,
    # value; MPNet: q, v; DistilBERT: q_lin, v_lin); all-linear; or a list.
    target_modules: Any = "auto"
    merge_on_freeze: bool = True  # merge a frozen LoRA adapter into its base weight (SAFE): it then costs nothing
    # Modules that train beside the adapters (saved with them): auto = the classifier, plus the model's
    # pooler when model.pooling is cls; or a list of module names (runner.classifier_heads).
    head_modules: Any = "auto"


@dataclass
class BottleneckSettings:
    """Houlsby-style bottleneck adapters (``adapter=bottleneck``): x + up(act(down(x))) after the attention
    output projection and after the feed-forward output projection of every layer, before the residual
    LayerNorm. Bottleneck = hidden / reduction_factor."""
    _target_: str = "runner.adapters.add_bottlenecks_to_train"  # (model, adapter cfg, head modules) -> model
    name: str = "bottleneck"
    reduction_factor: int = _setting(16, POSITIVE_INT)
    activation: str = _setting("gelu", ("gelu", "relu", "tanh", "silu"))
    # Suffixes of the projections an adapter follows: auto, the attention and feed-forward output
    # projections (runner/arch); or a list.
    target_modules: Any = "auto"
    init_scale: float = _setting(1e-3, POSITIVE)
    head_modules: Any = "auto"  # as LoRA's


@dataclass
class NoAdapterSettings:
    _target_: Optional[str] = None
    name: str = "none"


@dataclass
class MethodSettings:
    _target_: str = "runner.methods.TrainingMethod"  # the runner.methods.TrainingMethod subclass that runs it
    name: str = _setting("adapter", ("adapter", "full", "safe"))
    uses_adapters: bool = True
    # A torch-free function (dotted path) that checks the method's settings across keys before anything
    # heavy loads (runner.safe.checks.check_config); null: the class's own check_config, which imports it.
    checks: Optional[str] = None


@dataclass(frozen=True)
class SafeSettings:
    """SAFE's knobs (runner/safe, docs/safe.md), the ``safe`` group that ``method=safe`` loads; set them as
    ``safe.<key>``: ``python -m runner method=safe safe.t_w=0.1``. SAFE's paper publishes none of these
    values: every default here is ours, chosen by measurement (docs/safe.md, "Defaults and why"). How they
    combine (t_w < t_f, static_k): runner.safe.checks.check_config."""
    # Which adapters freeze, on SAFE's schedule and measurements: safe (the least important, the method);
    # the baselines through the same code path: random (as many as SAFE would, chosen at random among the
    # active ones), static (the lowest static_k from step 0), none (nothing: plain adapter tuning).
    policy: str = _setting("safe", ("safe", "random", "static", "none"))
    # Warm-up ends and freezing starts at t_w; the threshold reaches T_final at t_f; after t_f nothing more
    # freezes. In schedule_unit: fraction (of the total optimizer steps, 0 <= t_w < t_f <= 1) or epoch
    # (epochs of optimizer steps, gradient accumulation counted; t_f <= the run's epochs), e.g.
    # `safe.schedule_unit=epoch safe.t_w=0.5 safe.t_f=2`.
    t_w: float = _setting(0.3, NONNEG, "safe.t_w (warm-up end, in safe.schedule_unit)")
    t_f: float = _setting(0.8, NONNEG, "safe.t_f (freezing end, in safe.schedule_unit)")
    schedule_unit: str = _setting("fraction", SCHEDULE_UNITS)
    # T_final: adapters whose importance / max importance is below T(t) freeze. 0.2 (with t_w 0.3, t_f 0.8,
    # interval 20, importance own): the frontier rule's pick on MiniLM/MRPC, checked on ten seeds: 0.27
    # below LoRA, mean memory 0.79 and FLOPs 0.95 of LoRA's (docs/safe.md, sixth check). On 3 seeds 0.3
    # and above lost 1-5 points. 1.0 would freeze every adapter but the top one by t_f, whatever the scores say.
    threshold: float = _setting(0.2, FRACTION, "safe.threshold (T_final)")
    # Measure importance every `interval` optimizer steps (and at t_f) from t_w to t_f, where the threshold
    # is above 0 (a warm-up probe could freeze nothing). 20: at T_final 0.2 it held MRPC as 10 did (80.72
    # vs 80.31 over 3 seeds) with half the probes, the only setting with the compute below LoRA's.
    interval: int = _setting(20, POSITIVE_INT, "safe.interval (steps between importance measurements)")
    probe_size: int = _setting(32, POSITIVE_INT, "safe.probe_size (examples in the probe batch)")  # drawn once with `seed`
    max_tokens: Optional[int] = _setting(1024, POSITIVE_INT)  # cap on probe tokens for CKA (a fixed random subset; null: all)
    kernel: str = _setting("linear", ("linear", "rbf"))  # rbf: a Gaussian kernel, bandwidth 0.8 x median distance
    # adapted: outputs of the modules that carry the layer's adapter (LoRA: query/value projections);
    # layer: the encoder layer's output.
    representation: str = _setting("adapted", REPRESENTATIONS)
    # drift: 1 - CKA(representation now, at step 0): includes the drift that the adapters of lower layers
    #   cause (their changes propagate up).
    # own: 1 - CKA(representation with the layer's adapter, without it), both now, on the same input: the
    #   adapter's own effect (the base module is re-run on the captured input in the same probe forward;
    #   layer: the encoder layer is re-run with its adapters off).
    importance: str = _setting("own", IMPORTANCES)
    # budget_mode (ours, beyond the paper): until t_f, run every micro-batch as `budget_splits` chunks with
    # their gradients summed (the same updates, ~1/k of the activations at once; SAFE cannot lower the
    # peak while warm-up trains every adapter, this can); after t_f, a micro-batch runs whole only where
    # its predicted saved-for-backward bytes stay within the split phase's peak.
    budget_mode: bool = False
    budget_splits: int = _setting(2, POSITIVE_INT, "safe.budget_splits (chunks per micro-batch until t_f, and after it where a whole one would exceed the peak)")
    static_k: Optional[int] = _setting(None, NONNEG_INT)  # policy static: how many of the lowest adapters freeze from step 0
    seed: int = _setting("${seed}")  # the probe batch's draw (the run's seed unless set)


@dataclass
class WandbSettings:
    """Weights & Biases (``logger=wandb``). Without credentials (WANDB_API_KEY or a netrc entry) the run goes
    offline by itself into <output_dir>/wandb."""
    _target_: str = "runner.tracking.start_wandb"  # (cfg, run dir, config, run id) -> a W&B run
    name: str = "wandb"
    project: str = "runner"
    entity: Optional[str] = None
    # A single run's group; the jobs of a multirun share one group instead, named after the sweep dir
    # (python -m runner.sweep passes logger.group=<sweep dir name>).
    group: Optional[str] = "${sweep_group:${task.name}-${model.short_name}-${method.name}}"
    tags: list[str] = _setting([])
    mode: str = _setting("auto", ("auto", "online", "offline", "disabled"))  # auto: online only when credentials exist
    # The W&B key for this run when neither WANDB_API_KEY nor a netrc entry is there (logger.api_key=...).
    # Masked (***) in every file the runner writes; a sweep hands it to its jobs through the environment
    # (RUNNER_SECRET_LOGGER_API_KEY), never on their command lines.
    api_key: Optional[str] = None


@dataclass
class NoLoggerSettings:
    _target_: Optional[str] = None
    name: str = "none"


@dataclass
class NoPruneSettings:
    """No head pruning (``prune=none``)."""
    name: str = "none"
    from_run: Optional[str] = None  # prune.from_run needs a criterion: prune=hies prune.from_run=<run dir>


@dataclass(frozen=True)
class PruneSettings:
    """Head pruning after fine-tuning (``prune=hies|his|entropy|random|magnitude``; docs/hies.md): score every
    attention head on a few training examples, remove the lowest-scoring heads for real, report quality,
    stability, size, FLOPs and latency; no fine-tuning afterwards. Every criterion has these settings
    (read as runner.prune.settings.Pruning, which adds the checks across keys and the derived values)::

        python -m runner task=glue/mrpc prune=hies prune.ratio=0.3
        python -m runner prune=hies prune.from_run=outputs/runs/<run> prune.ratios=[0.1,0.3,0.5,0.7]
    """
    name: str = _setting("hies", CRITERIA)  # the criterion
    # The fraction of all heads removed, in [0, 1): round(ratio * layers * heads), ranked globally over
    # layers. The saved model and the headline numbers use `ratio`.
    ratio: float = _setting(0.3, FRACTION_OPEN, "prune.ratio (the fraction of heads removed)")
    # More ratios evaluated from the same scores (null: just `ratio`, which is always among them).
    ratios: Optional[list[float]] = _setting(None, FRACTION_OPEN)
    # Other criteria evaluated on the same scores and data, e.g. [his,entropy,random,magnitude,none]
    # (none: the unpruned model as a row).
    compare: Optional[list[str]] = _setting(None, (*CRITERIA, "none"))
    # HIES = alpha * minmax(HIS) + (1 - alpha) * (1 - minmax(AE)); a number in [0, 1) as in the paper, or
    # auto (the largest area under the quality-vs-ratio curve over alpha_grid x alpha_ratios). alpha = 1
    # is plain HIS, a criterion of its own: prune.name=his or add his to prune.compare.
    alpha: Any = _setting(0.5, "alpha", "prune.alpha (weight of HIS against entropy)")
    alpha_grid: list[float] = _setting([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "alpha_value")
    alpha_ratios: list[float] = _setting([0.1, 0.3, 0.5, 0.7], FRACTION_OPEN)
    # Where alpha=auto chooses and where every criterion is reported:
    #   train_holdout: choose on `alpha_holdout_samples` held-out training examples (task.holdout_samples
    #     if the run kept some), report on the whole eval split. The default: comparable with every
    #     earlier result.
    #   dev_half: the paper's protocol (its Table 5): the eval split is halved with `seed` (MRPC 408 ->
    #     204/204, RTE 277 -> 138/139), alpha is chosen on the first half, and everything (unpruned, every
    #     criterion, stability) is reported on the other half only. With a fixed alpha the halves are
    #     still made and only the reporting half is reported, so fixed and auto runs of one seed are
    #     measured on the same examples.
    alpha_split: str = _setting("train_holdout", ("train_holdout", "dev_half"))
    alpha_holdout_samples: int = _setting(256, POSITIVE_INT)
    calib_samples: int = _setting(32, POSITIVE_INT)  # calibration: training examples (never the eval split), drawn with `seed`
    calib_batch_size: int = _setting(8, POSITIVE_INT)
    # HIS = E_x |dL(x)/dm|: example takes |.| per example (the paper; still batched: a per-example gate),
    # batch per batch's mean loss (Michel et al.'s code). Both come from the same pass; scoring reports
    # how the rankings agree.
    his_per: str = _setting("example", HIS_PER)
    normalize_layers: bool = True  # divide each layer's HIS by its L2 norm (Michel et al.'s default)
    min_heads_per_layer: int = _setting(0, NONNEG_INT)  # keep at least this many heads in every layer (0: a layer may lose all)
    seed: int = _setting("${seed}")
    from_run: Optional[str] = None  # the output dir of a finished fine-tuning run: prune it instead of training
    # Optional recovery fine-tuning of each pruned model (all weights, AdamW).
    recovery_finetune: bool = False
    recovery_steps: int = _setting(100, POSITIVE_INT)
    recovery_lr: float = _setting(2e-5, POSITIVE)
    # Latency: which pruned models are timed against the unpruned one (primary: every ratio of the primary
    # criterion; all; none), interleaved repetitions, medians; on the first `latency_examples` eval examples.
    latency: str = _setting("primary", ("primary", "all", "none"))
    latency_repeats: int = _setting(7, POSITIVE_INT)
    latency_ratios: Optional[list[float]] = _setting(None, FRACTION_OPEN)  # only these ratios (null: every one evaluated)
    # Intra-op threads while timing (null: torch's default, all cores). On a CPU shared with other jobs, 1
    # gives much steadier ratios.
    latency_threads: Optional[int] = _setting(None, POSITIVE_INT)
    latency_examples: int = _setting(64, POSITIVE_INT)
    latency_batch_sizes: list[int] = _setting([1, 32], POSITIVE_INT)
    flops_batch_size: int = _setting(32, POSITIVE_INT)  # forward FLOPs counted on the first this many eval examples
    save_model: str = _setting("primary", ("primary", "none"))  # the pruned model of the primary criterion and ratio


@dataclass
class RunSettings:
    """The top level of conf/train.yaml (the groups are checked by their own schemas)."""
    seed: int = 42
    resume: Any = _setting(False, (False, True, "auto"))
    # resume although the base weights, the data or the process layout changed since the checkpoint (named in the refusal)
    resume_accept_changes: bool = False
    debug: bool = False
    verbose: bool = False
    output_dir: str = ""
    run_name: str = ""
    data_cache_dir: Optional[str] = None


GROUPS: dict[str, dict[str, type] | type] = {
    "task": TaskSettings, "model": ModelSettings, "trainer": TrainerSettings, "method": MethodSettings,
    "safe": SafeSettings,
    "adapter": {"lora": LoraSettings, "bottleneck": BottleneckSettings, "none": NoAdapterSettings},
    "logger": {"wandb": WandbSettings, "none": NoLoggerSettings},
    "prune": {"none": NoPruneSettings, "hies": PruneSettings, "his": PruneSettings, "entropy": PruneSettings,
              "magnitude": PruneSettings, "random": PruneSettings},
}
OPTIONAL_GROUPS = ("safe",)  # present only with some options (method=safe)
SCHEMA_OPTION = "schema"  # each group's declared defaults, as Hydra sees them (``schema`` or ``schema_<option>``)


def declared_defaults() -> dict[str, dict]:
    """Every group's declared defaults as plain dicts, keyed ``<group>/<option name>`` as Hydra's ConfigStore
    takes them: ``trainer/schema``, and for groups whose options differ ``adapter/schema_lora``,
    ``prune/schema_hies`` (one for every criterion), ``prune/schema_none``, ... The yaml options of
    ``conf/`` list theirs first in their defaults and add only what the option changes."""
    out = {}
    for group, schema in GROUPS.items():
        if isinstance(schema, dict):
            for option, option_schema in schema.items():
                if option_schema is not PruneSettings or option == "hies":
                    out[f"{group}/{SCHEMA_OPTION}_{option}"] = dataclasses.asdict(option_schema())
        elif group not in ("task", "model", "method"):  # an option each, nothing shared to default
            out[f"{group}/{SCHEMA_OPTION}"] = dataclasses.asdict(schema())
    return out


# ---------------------------------------------------------------- the walk


def check_config(cfg: DictConfig) -> None:
    """Every key of the composed config against its declared type and range; one ConfigError line for the first problem."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"the config cannot be resolved: {str(exc).splitlines()[0]}") from exc
    root = {k: v for k, v in data.items() if k not in GROUPS}
    _check_node(root, RunSettings, "")
    for group, schema in GROUPS.items():
        if group not in data:
            if group in OPTIONAL_GROUPS:
                continue
            raise ConfigError(f"the config has no {group} group; compose it from conf/train.yaml")
        node = data[group]
        if not isinstance(node, dict):
            raise ConfigError(f"{group} must be a group of settings, got {node!r}")
        check_group(group, node)


def settings_of(group: str, node):
    """A group's settings (``cfg.safe``), resolved, as its schema's dataclass: what a component receives
    instead of the raw config node, every key present (no fallbacks), each already checked by
    :func:`check_config`."""
    schema = GROUPS[group]
    if isinstance(schema, dict):  # one schema per option (adapter, logger, prune): the node's name says which
        schema = schema[node.get("name")]
    return as_settings(schema, node)


def as_settings(schema: type, node):
    """A config node (a group, or a part of one such as ``cfg.trainer.sharpness``), resolved, as ``schema``'s dataclass."""
    return _build(schema, OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node))


def _build(schema: type, data: dict):
    hints = typing.get_type_hints(schema)
    values = {}
    for f in dataclasses.fields(schema):
        if f.name in data:
            tp = hints[f.name]
            value = data[f.name]
            values[f.name] = _build(tp, value) if dataclasses.is_dataclass(tp) and isinstance(value, dict) else value
    return schema(**values)


_NO_DEFAULT = object()


def _leaf_field(dotted: str):
    """The first field along a dotted key of a group with one schema that is not a nested settings
    dataclass, with its dotted name and type (``model.config_overrides.x`` -> the ``config_overrides``
    field); None where the key leaves the schema or ends on a dataclass."""
    group, _, rest = dotted.partition(".")
    schema = GROUPS.get(group)
    if not isinstance(schema, type) or not rest:
        return None
    names = rest.split(".")
    for i, name in enumerate(names):
        found = {f.name: f for f in dataclasses.fields(schema)}.get(name)
        if found is None:
            return None
        tp = typing.get_type_hints(schema)[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            schema = tp
            continue
        return ".".join([group, *names[:i + 1]]), found, tp
    return None


def default_of(dotted: str):
    """The schema's default for a dotted key of a group with one schema (``trainer.tf32`` -> "auto"); a
    private sentinel (never equal to a config value) for keys with no single default."""
    leaf = _leaf_field(dotted)
    if leaf is None:
        return _NO_DEFAULT
    found = leaf[1]
    if found.default is not dataclasses.MISSING:
        return found.default
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    return _NO_DEFAULT


def is_lm_task(task) -> bool:
    """A causal language-modelling task (``task.kind=causal_lm``); a saved config older than ``task.kind``
    has the declared default kind."""
    return str(task.get("kind", default_of("task.kind"))) == CAUSAL_LM


def entries_field(dotted: str) -> str | None:
    """The dotted name of the free-entry dict setting (``model.config_overrides``) that ``dotted`` is or
    lies inside; None otherwise. Hydra adds entries to such a dict only with a leading ``+``."""
    leaf = _leaf_field(dotted)
    if leaf is None or typing.get_origin(_optional(leaf[2])[1]) is not dict:
        return None
    return leaf[0]


def list_fields(schema: type) -> list[str]:
    """The fields of a settings dataclass that hold lists (a bare value there means a one-element list)."""
    return [name for name, tp in typing.get_type_hints(schema).items() if typing.get_origin(_optional(tp)[1]) is list]


def check_group(group: str, node: dict) -> None:
    """One group's settings (a plain dict, e.g. ``cfg.prune`` as a container) against its schema."""
    schema = GROUPS[group]
    if isinstance(schema, dict):
        name = node.get("name")
        if name not in schema:
            raise ConfigError(f"{group}.name must be one of {', '.join(schema)}, got {name!r}")
        schema = schema[name]
    _check_node(node, schema, group + ".")


def _check_node(node: dict, schema: type, prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid: {', '.join(fields)}"
            raise ConfigError(f"{prefix}{key} is not a setting{hint}")
    for name, f in fields.items():
        if name not in node:
            continue
        key, value = prefix + name, node[name]
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a group of settings, got {value!r}")
            _check_node(value, tp, key + ".")
            continue
        label = f.metadata.get("label") or key
        rule = f.metadata.get("rule")
        if not _is_type(value, tp):
            # a number with a range rule: say the range (trainer.lr=inf -> "must be a positive number")
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and _optional(tp)[1] in (int, float)
            text = RULES[rule][0] if number and rule in RULES else _describe(tp)
            raise ConfigError(f"{label} must be {text}, got {value!r}")
        if rule is None or value is None:
            continue
        if isinstance(value, list):  # the rule holds for every element
            for item in value:
                _check_rule(item, rule, f"every {label} value")
        else:
            _check_rule(value, rule, label)


def _check_rule(value, rule, label: str) -> None:
    if isinstance(rule, tuple):
        if value not in rule or isinstance(value, bool) != any(isinstance(r, bool) and r == value for r in rule):
            raise ConfigError(f"{label} must be one of {', '.join(_show(r) for r in rule)}, got {value!r}")
        return
    text, ok = RULES[rule]
    if not ok(value):
        hint = RULE_HINTS[rule](value) if rule in RULE_HINTS else ""
        raise ConfigError(f"{label} must be {text}, got {value!r}{hint}")


def _show(choice) -> str:
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def _optional(tp) -> tuple[bool, Any]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return True, args[0]
    return False, tp


def _is_type(value, tp) -> bool:
    if tp is Any:
        return not isinstance(value, float) or math.isfinite(value)
    nullable, tp = _optional(tp)
    if value is None:
        return nullable
    origin = typing.get_origin(tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_is_type(v, item) for v in value)
    if origin is dict or tp is dict:
        args = typing.get_args(tp)
        return isinstance(value, dict) and (not args or all(_is_type(v, args[1]) for v in value.values()))
    return True


def _describe(tp) -> str:
    nullable, tp = _optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        text = "true or false"
    elif tp is int:
        text = "an integer"
    elif tp is float:
        text = "a finite number"
    elif tp is str:
        text = "a string"
    elif origin is list:
        text = f"a list of {_describe(typing.get_args(tp)[0]).split(' ', 1)[-1]}s"
    elif origin is dict or tp is dict:
        text = "a mapping"
    else:
        text = str(tp)
    return f"{text} (or null)" if nullable else text


# ---------------------------------------------------------------- settings that moved


# Config groups that became settings: ``freeze=X`` (SAFE's policy, a group of its own until 2026-12) is
# ``safe.policy=X``.
MOVED_GROUPS = {"freeze": "safe.policy"}


def upgrade_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides of a sweep planned before a setting moved, as they read now (:data:`MOVED_GROUPS`)."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        out.append(f"{MOVED_GROUPS[key]}={value}" if sep and key in MOVED_GROUPS else o)
    return out


def upgrade_saved(config: dict) -> dict:
    """A resolved config saved before a setting moved (a run's config.yaml, a sweep's composed settings), as
    it reads now: ``freeze.name`` becomes ``safe.policy``. A SAFE run saved with ``freeze: none`` had no
    ``safe`` settings; it gets those it ran with (policy none, nothing else used)."""
    if "freeze" not in config:
        return config
    policy = (config.get("freeze") or {}).get("name", "none")
    config = {k: v for k, v in config.items() if k != "freeze"}
    if "safe" in config:
        config["safe"] = {**config["safe"], "policy": policy}
    elif policy == "none" and (config.get("method") or {}).get("name") == "safe":
        config["safe"] = {**dataclasses.asdict(SafeSettings()), "policy": "none", "seed": config.get("seed")}
    return config
