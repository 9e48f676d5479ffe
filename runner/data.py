"""GLUE data: the Hub, classic GLUE_DIR tsv files, or parquet/csv/json files.

``load_task_splits`` returns raw ``datasets.Dataset`` objects with the Hub's
column names and integer (or float, for STS-B) labels, whatever the source;
``build_dataloaders`` tokenises them once (cached on disk) and pads each batch
dynamically.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
import huggingface_hub.constants as hub_constants
import numpy as np
import torch
from datasets import config as ds_config
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from runner import lm
from runner.network import unreachable
from runner.preflight.errors import DataError
from runner.preflight.schema import is_lm_task

log = logging.getLogger(__name__)

TABLE_SUFFIXES = (".parquet", ".csv", ".json", ".jsonl")
HUB_HINT = (
    "point the runner at local files: GLUE_DIR=/path/to/glue (holding {dir}/train.tsv) "
    "or task.data_dir=/path/to/{dir}"
)


@dataclass
class TaskData:
    train: datasets.Dataset
    evals: dict[str, datasets.Dataset]  # Hub split name -> dataset, primary first
    source: str  # where the data came from, for provenance
    # Training examples held out of fine-tuning (task.holdout_samples), e.g. for
    # choosing HIES's alpha on data the model never saw; None when none are held out.
    holdout: datasets.Dataset | None = None
    # causal_lm: zero-shot multiple-choice sets by name (runner.lm), evaluated beside perplexity
    choices: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    # what became of each split's input (results.json data.input, the run summary): the file read, rows
    # read, rows skipped as malformed, rows used after the max_*_samples cap; for a causal LM, records
    # dropped or cut at trainer.max_seq_length by tokenisation. Nothing is dropped without a count here.
    input: dict[str, dict] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------
# Locating and reading files
# ---------------------------------------------------------------------------


def resolve_task_dir(task: DictConfig) -> Path | None:
    """The folder holding this task's files, or None to use the Hub.

    ``task.data_dir`` may be the task folder itself or a GLUE root that holds
    ``<glue_dir_name>/`` (the ``GLUE_DIR`` layout).
    """
    if task.data_dir in (None, ""):
        return None
    root = Path(str(task.data_dir)).expanduser()
    if not root.is_dir():
        raise DataError(f"data dir {root} does not exist; set GLUE_DIR or task.data_dir to a folder with the task's files")
    nested = root / task.glue_dir_name
    return nested if nested.is_dir() else root


def find_split_file(task_dir: Path, hub_split: str, glue_stem: str) -> Path | None:
    """A split's file: classic ``<stem>.tsv`` first, then Hub-style tables."""
    candidates = [task_dir / f"{glue_stem}.tsv"]
    for stem in dict.fromkeys((hub_split, glue_stem)):
        candidates += [task_dir / f"{stem}{suffix}" for suffix in TABLE_SUFFIXES]
    return next((p for p in candidates if p.is_file()), None)


def label_to_id(value: str, task: DictConfig):
    """A raw GLUE tsv label as the Hub's label id (float for regression)."""
    if task.is_regression:
        score = float(value)
        if not math.isfinite(score):
            raise ValueError(f"regression label {value!r} is not a finite number")
        return score
    names = list(task.label_names)
    if value in names:
        return names.index(value)
    label = int(value)
    if not 0 <= label < len(names):
        raise ValueError(f"label {label} outside 0..{len(names) - 1}")
    return label


def read_glue_tsv(path: Path, task: DictConfig, counts: dict | None = None) -> datasets.Dataset:
    """Read a classic GLUE tsv file (tab separated, no quoting, optional BOM); ``counts`` (if given) gets
    ``read`` and ``skipped`` (rows that do not fit the task's columns or labels, or hold more fields than the
    header, a tab inside a text: up to 1%, else an error)."""
    columns = dict(task.tsv.columns)
    rows: dict[str, list] = {name: [] for name in columns}
    skipped = 0
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None) if task.tsv.header else None
        if header is not None:
            width = len(header)
            needed = max(i if i >= 0 else width + i for i in columns.values()) + 1
            if width < needed:
                raise DataError(
                    f"{path} has {width} columns ({', '.join(header)}), but task {task.name} "
                    f"expects at least {needed}; is this the {task.glue_dir_name} file?"
                )
        width = len(header) if header is not None else None
        for line in reader:
            if width is not None and len(line) > width:  # a tab inside a text: reading by position would shift it
                skipped += 1
                continue
            try:
                record = {name: line[i] for name, i in columns.items()}
                record["label"] = label_to_id(record["label"], task)
            except (IndexError, ValueError):
                skipped += 1  # QQP's train file has a few broken lines
                continue
            for name, value in record.items():
                rows[name].append(value)
    total = len(rows["label"]) + skipped
    if total and skipped > max(10, total // 100):
        raise DataError(
            f"{path}: {skipped} of {total} rows do not fit task {task.name}'s columns "
            f"{dict(columns)}; is this the {task.glue_dir_name} file?"
        )
    if skipped:
        log.warning("%s: skipped %d malformed rows (counted in results.json data.input)", path, skipped)
    if counts is not None:
        counts.update(read=total, skipped=skipped)
    return datasets.Dataset.from_dict(rows)


def read_table(path: Path, task: DictConfig) -> datasets.Dataset:
    """Read a parquet/csv/json file that uses the Hub's column names."""
    kind = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}[path.suffix]
    with _hub_offline():  # a local file needs no hub; online, `datasets` would ping its download counter on S3
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    missing = [c for c in [*task.text_keys, "label"] if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(ds.column_names)}); "
            f"task {task.name} needs {', '.join([*task.text_keys, 'label'])}"
        )
    ds = ds.select_columns([*task.text_keys, "label"])
    return _checked_labels(ds, path, task)


def _checked_labels(ds: datasets.Dataset, path: Path, task: DictConfig) -> datasets.Dataset:
    """Labels as the task's ids (names map to their index); anything else fails here, not at step 0."""
    labels = ds["label"]
    ids = []
    for value in labels:
        try:
            ids.append(label_to_id(str(value), task))
        except ValueError:
            valid = "numbers" if task.is_regression else f"0..{len(task.label_names) - 1} or {', '.join(task.label_names)}"
            raise DataError(f"{path}: label {value!r} is not a label of task {task.name} (valid: {valid})") from None
    if ids != list(labels):
        ds = ds.remove_columns("label").add_column("label", ids)
    return ds


def read_split(path: Path, task: DictConfig) -> tuple[datasets.Dataset, dict]:
    """A split's rows and what reading them did (:attr:`TaskData.input`)."""
    counts = {"file": str(path)}
    if path.suffix == ".tsv":
        ds = read_glue_tsv(path, task, counts)
    else:
        ds = read_table(path, task)
        counts.update(read=len(ds), skipped=0)
    return ds, counts


def load_local(task: DictConfig, task_dir: Path) -> TaskData:
    splits = {task.train_split: "train", **dict(task.eval_splits)}
    found = {}
    for hub_split, stem in splits.items():
        path = find_split_file(task_dir, hub_split, stem)
        if path is None:
            raise DataError(
                f"{task_dir} has no {stem}.tsv (or {hub_split}.parquet/.csv/.json) for task "
                f"{task.name}; expected the GLUE layout {task.glue_dir_name}/train.tsv, {stem}.tsv"
            )
        found[hub_split] = read_split(path, task)
    train, train_counts = found.pop(task.train_split)
    return TaskData(train=train, evals={k: ds for k, (ds, _) in found.items()}, source=str(task_dir),
                    input={"train": train_counts, **{k: c for k, (_, c) in found.items()}})


def load_hub(task: DictConfig) -> TaskData:
    """The task from the Hub, or from the local Hub cache when the Hub is out of reach (checked in seconds:
    ``datasets`` would retry for over a minute)."""
    offline = any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    problem = None if offline else unreachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        # offline (asked, or out of reach): the cache may still hold it. The switches are flipped here, not only
        # read from the environment: `datasets` reads them once, at import
        with _hub_offline() if offline or problem is not None else contextlib.nullcontext():
            ds = datasets.load_dataset(task.hub_path, task.hub_name)
    except Exception as exc:  # connection errors come in many types
        why = f"no local data and the Hub is out of reach ({problem})" if problem else type(exc).__name__
        raise DataError(
            f"cannot load {task.hub_path}/{task.hub_name} from the Hugging Face Hub ({why}); "
            + HUB_HINT.format(dir=task.glue_dir_name)
        ) from exc
    evals = {split: ds[split] for split in task.eval_splits}
    return TaskData(train=ds[task.train_split], evals=evals, source=f"hub:{task.hub_path}/{task.hub_name}")


@contextlib.contextmanager
def _hub_offline():
    """``datasets``/``huggingface_hub`` read their offline switches at import; flip them for one call."""
    saved = (hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE, getattr(ds_config, "HF_DATASETS_OFFLINE", None))
    hub_constants.HF_HUB_OFFLINE = ds_config.HF_HUB_OFFLINE = True
    if saved[2] is not None:
        ds_config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE = saved[0], saved[1]
        if saved[2] is not None:
            ds_config.HF_DATASETS_OFFLINE = saved[2]


def fingerprint(data: TaskData) -> str:
    """SHA-256 over every split as read (rows in order, every column): a reshuffled or edited file changes it."""
    h = hashlib.sha256()
    splits = {"train": data.train, **{f"eval:{k}": v for k, v in data.evals.items()},
              **({"holdout": data.holdout} if data.holdout is not None else {})}
    for name, ds in splits.items():
        h.update(name.encode())
        for row in ds.to_list():
            h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return f"sha256:{h.hexdigest()}"


def count_used(data: TaskData) -> None:
    """Each split's rows used after the cap, beside what was read (:attr:`TaskData.input`)."""
    for name, ds in [("train", data.train), *data.evals.items()]:
        data.input.setdefault(name, {"file": data.source, "read": len(ds), "skipped": 0})["used"] = len(ds)


def cap(ds: datasets.Dataset, n: int | None) -> datasets.Dataset:
    return ds if n is None or n >= len(ds) else ds.select(range(n))


def load_task_splits(task: DictConfig) -> TaskData:
    """Raw train and eval splits of a task, capped as configured."""
    if is_lm_task(task):
        data = TaskData(**lm.load_lm_splits(task))
        count_used(data)
        data.train, data.holdout = split_holdout(data.train, task.get("holdout_samples"), task.get("holdout_seed", 0), task.name)
        return data
    task_dir = resolve_task_dir(task)
    data = load_local(task, task_dir) if task_dir is not None else load_hub(task)
    for split, ds in [("train", data.train), *data.evals.items()]:
        if len(ds) == 0:
            raise DataError(f"split {split} of task {task.name} from {data.source} is empty")
    data.train = cap(data.train, task.max_train_samples)
    data.evals = {k: cap(v, task.max_eval_samples) for k, v in data.evals.items()}
    count_used(data)
    data.train, data.holdout = split_holdout(data.train, task.get("holdout_samples"), task.get("holdout_seed", 0), task.name)
    return data


def split_holdout(train: datasets.Dataset, n, seed, task_name: str = "") -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """(train without the hold-out, hold-out): ``n`` examples drawn with ``seed`` (after the
    ``max_train_samples`` cap), the same for every run with the same task settings, so a
    later pruning job (``prune.from_run``) finds exactly the examples fine-tuning never saw."""
    if not n:
        return train, None
    if int(n) >= len(train):
        raise DataError(f"task.holdout_samples={n} leaves no training examples for task {task_name} "
                        f"({len(train)} after the cap); hold out fewer")
    order = np.random.default_rng(int(seed)).permutation(len(train))
    held = sorted(int(i) for i in order[: int(n)])
    kept = sorted(int(i) for i in order[int(n):])
    return train.select(kept), train.select(held)


# ---------------------------------------------------------------------------
# Tokenisation and loaders
# ---------------------------------------------------------------------------


def _fingerprint(ds: datasets.Dataset, tokenizer, max_length: int) -> str:
    h = hashlib.sha256()
    h.update(ds._fingerprint.encode())
    h.update(json.dumps([tokenizer.name_or_path, type(tokenizer).__name__, len(tokenizer), max_length]).encode())
    return h.hexdigest()[:20]


def count_truncated(raw: datasets.Dataset, lengths: list[int], tokenizer, text_keys, max_length: int) -> int:
    """How many examples ``max_length`` cut (results.json data.input), given their tokenised ``lengths``: only
    those whose tokens fill it can have been cut, and only they are tokenised again, whole."""
    full = [i for i, n in enumerate(lengths) if n >= max_length]
    if not full:
        return 0
    rows = raw.select(full)
    lengths = tokenizer(*[list(rows[k]) for k in text_keys], truncation=False)["input_ids"]
    return sum(len(ids) > max_length for ids in lengths)


def tokenize(ds: datasets.Dataset, tokenizer, text_keys, max_length: int, cache_dir: Path | None) -> datasets.Dataset:
    """Tokenise without padding (the collator pads per batch); cached on disk."""

    def encode(batch):
        texts = [batch[k] for k in text_keys]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    target = None
    if cache_dir is not None:
        target = cache_dir / f"tok-{_fingerprint(ds, tokenizer, max_length)}"
        if (target / "dataset_info.json").is_file():
            try:
                cached = datasets.load_from_disk(str(target))
                if len(cached) != len(ds) or (len(ds) and not cached[len(ds) - 1]["input_ids"]):
                    raise ValueError(f"{len(cached)} rows for {len(ds)} examples")
                return cached
            except Exception as exc:  # a truncated or damaged cache entry: rebuild it
                log.warning("tokenisation cache %s is unreadable (%s: %s); rebuilding it", target, type(exc).__name__, exc)
                shutil.rmtree(target, ignore_errors=True)
    out = ds.map(encode, batched=True, remove_columns=list(text_keys), desc="tokenising", keep_in_memory=True)
    out = out.rename_column("label", "labels")
    if target is not None:
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        try:
            out.save_to_disk(str(tmp))
        except OSError as exc:  # a read-only or full cache only costs the tokenisation next time
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("cannot write the tokenisation cache %s (%s); tokenised in memory this time "
                        "(data_cache_dir=<a writable folder> keeps it)", cache_dir, exc.strerror or exc)
            return out
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        out = datasets.load_from_disk(str(target)) if target.is_dir() else out
    return out


class LengthGroupedSampler(torch.utils.data.Sampler):
    """``trainer.group_by_length``: HF Trainer's grouping. Shuffle (seeded by seed and epoch, so a resumed
    run sees the same batches), cut into mega-batches of ``50 x batch_size``, sort each by length, longest
    first: a batch holds examples of similar length, so dynamic padding adds fewer pad tokens, while the
    order of mega-batches stays random. The loop calls :meth:`set_epoch` before each epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, mega_batches: int = 50):
        self.lengths, self.size, self.seed, self.epoch = list(lengths), batch_size * mega_batches, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        for start in range(0, len(order), self.size):
            yield from sorted(order[start:start + self.size], key=lambda i: -self.lengths[i])


def split_batch(batch: dict, splits: int, multiple: int | None = None) -> list[tuple[dict, float]]:
    """A collated batch as ``splits`` chunks of (nearly) equal size along the examples, each with its
    share of the examples (the weights add up to 1), and each cut to its own longest sequence (rounded
    up to ``multiple``, as the collator pads) when the padding is on the right (the columns past it are
    padding in every row of the chunk). One split: the batch itself, weight 1."""
    n = len(batch["input_ids"])
    if splits <= 1 or n <= 1:
        return [(batch, 1.0)]
    length = batch["input_ids"].shape[1]
    parts = []
    for index in torch.arange(n).tensor_split(min(splits, n)):
        chunk = {k: v[index] if torch.is_tensor(v) and v.dim() and len(v) == n else v for k, v in batch.items()}
        mask = chunk.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            used = int(mask.bool().any(0).nonzero().max()) + 1 if mask.any() else length
            used = min(length, -(-used // multiple) * multiple) if multiple else used
            chunk = {k: v[:, :used] if torch.is_tensor(v) and v.dim() >= 2 and v.shape[1] == length else v
                     for k, v in chunk.items()}
        parts.append((chunk, len(index) / n))
    return parts


def pad_multiple(tcfg, device_type: str) -> int | None:
    """``trainer.pad_to_multiple_of``: auto pads to a multiple of 8 on a GPU (tensor cores, fewer distinct
    shapes), not on a CPU; a number; or null (pad to the longest example only)."""
    value = tcfg.get("pad_to_multiple_of", "auto")
    if value == "auto":
        return 8 if device_type == "cuda" else None
    return int(value) if value else None


def build_dataloaders(cfg: DictConfig, data: TaskData, tokenizer, accelerator) -> tuple[DataLoader, dict[str, DataLoader]]:
    tcfg = cfg.trainer
    cache_dir = Path(cfg.data_cache_dir).expanduser() if cfg.get("data_cache_dir") else None
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # read-only or full: the cache only saves time
            log.warning("cannot create the tokenisation cache %s (%s); tokenising in memory "
                        "(data_cache_dir=<a writable folder> keeps it)", cache_dir, exc.strerror or exc)
            cache_dir = None

    lengths: dict[str, list[int]] = {}  # tokens per example, per split (classification), read once
    if is_lm_task(cfg.task):  # blocks of text or prompt/response pairs, labels -100 where nothing is learned
        block = int(tcfg.max_seq_length)  # what tokenisation cuts or drops is counted in data.input
        train = lm.tokenize_lm(data.train, tokenizer, block, data.input.setdefault("train", {}))
        evals = {k: lm.tokenize_lm(v, tokenizer, block, data.input.setdefault(k, {})) for k, v in data.evals.items()}
        collator = lm.LMCollator(tokenizer, pad_to_multiple_of=pad_multiple(tcfg, accelerator.device.type))
    else:
        with accelerator.main_process_first():
            train = tokenize(data.train, tokenizer, cfg.task.text_keys, tcfg.max_seq_length, cache_dir)
            evals = {k: tokenize(v, tokenizer, cfg.task.text_keys, tcfg.max_seq_length, cache_dir) for k, v in data.evals.items()}
        for name, raw, tokens in [("train", data.train, train), *((k, data.evals[k], evals[k]) for k in evals)]:
            lengths[name] = [len(ids) for ids in tokens["input_ids"]]
            data.input.setdefault(name, {})["truncated"] = count_truncated(raw, lengths[name], tokenizer,
                                                                           cfg.task.text_keys, int(tcfg.max_seq_length))
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(tcfg, accelerator.device.type))
    sampler = None
    if tcfg.get("group_by_length"):
        sampler = LengthGroupedSampler(lengths.get("train") or [len(ids) for ids in train["input_ids"]],
                                       int(tcfg.batch_size), int(cfg.seed))
    train_loader = DataLoader(
        train.with_format("torch"), batch_size=tcfg.batch_size, shuffle=sampler is None, sampler=sampler,
        collate_fn=collator, num_workers=tcfg.num_workers, drop_last=False,
    )
    eval_loaders = {
        k: DataLoader(v.with_format("torch"), batch_size=tcfg.eval_batch_size, shuffle=False, collate_fn=collator,
                      num_workers=tcfg.num_workers)
        for k, v in evals.items()
    }
    return train_loader, eval_loaders
