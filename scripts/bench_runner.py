#!/usr/bin/env python
"""The whole runner against what a user would write instead: one epoch of MRPC with LoRA r8.

Three ways to fine-tune the same model on the same data with the same recipe
(LoRA r8 on every linear layer of the encoder, mean pooling, AdamW lr 1e-3,
weight decay 0.01, linear decay with 6% warm-up, batch 32, max 128 tokens,
gradient clipping at 1.0, dynamic padding, the same seed), then evaluate on
the dev set. The recipe is one that learns in one epoch (MRPC ~73 against a
majority class of 68.4): with LoRA on query/value at lr 5e-4 all three tools
stayed at the majority class, and a comparison of models that did not learn
says nothing about "equal accuracy".

* ``runner``: ``runner.train.run`` with every measurement on (FLOPs,
  saved-for-backward bytes, per-step records, checkpoint, learning curve);
* ``plain``: a hand-written PyTorch + PEFT loop that does nothing else;
* ``trainer``: Hugging Face ``transformers.Trainer`` with the PEFT model.

The three see the same batches in the same order: the runner and the Trainer
shuffle with Accelerate's seedable sampler seeded with the run's seed, and the
plain loop draws the same permutation (a ``RandomSampler`` whose generator is
seeded with it). Each tool's padded tokens per training step are recorded and
the benchmark stops if they differ (a difference in data order would pass for
speed). Repeats are interleaved, the order rotating by one tool per repeat (runner,
plain, trainer; plain, trainer, runner; ...) so machine noise and the place in
the order hit all three alike; it prints, per tool, the median wall time (model load to dev
metric), training samples per second (steps x batch over the train phase, the same clock for all three:
``runner.run_clock``, which leaves out a pause with Ctrl-Z until ``fg``) and dev accuracy, and the ratios to the
plain loop and to the Trainer (targets: runner <= 1.05x plain, <= 1.0x
Trainer). ``--max-steps`` shortens every run the same way (a smoke test).

    python scripts/bench_runner.py                         # make bench-runner
    python scripts/bench_runner.py --repeats 1 --max-steps 8 --max-eval 64   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runner import run_clock  # noqa: E402

LR, WEIGHT_DECAY, WARMUP, BATCH, MAX_LEN, CLIP, R = 1e-3, 0.01, 0.06, 32, 128, 1.0, 8
TARGETS = ["query", "key", "value", "output.dense", "intermediate.dense"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each tool (the order rotates)")
    p.add_argument("--max-steps", type=int, default=None, help="stop every run after N optimizer steps")
    p.add_argument("--max-eval", type=int, default=None, help="cap on dev examples")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tools", nargs="+", default=["runner", "plain", "trainer"], choices=["runner", "plain", "trainer"])
    p.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast in every tool (the runner's trainer.mixed_precision=bf16, the Trainer's bf16)")
    p.add_argument("--model", default=None, help="a model folder instead of the packaged MiniLM (model.name_or_path)")
    p.add_argument("--compile", action="store_true", help="torch.compile in every tool (trainer.compile, torch_compile)")
    return p.parse_args(argv)


def runner_overrides(args) -> list[str]:
    o = ["task=glue/mrpc", "method=adapter", "adapter=lora", "adapter.r=8", f"adapter.target_modules=[{','.join(TARGETS)}]",
         f"trainer.lr={LR}", f"trainer.weight_decay={WEIGHT_DECAY}", f"trainer.warmup_ratio={WARMUP}", f"trainer.batch_size={BATCH}",
         f"trainer.max_seq_length={MAX_LEN}", f"trainer.max_grad_norm={CLIP}", "trainer.epochs=1", "trainer.progress_bar=false",
         "logger=none", f"seed={args.seed}", "model.pooling=mean", "adapter.head_modules=[classifier]"]
    if args.max_steps:
        o.append(f"trainer.max_steps={args.max_steps}")
    if args.precision == "bf16":
        o.append("trainer.mixed_precision=bf16")
    if args.compile:
        o.append("trainer.compile=true")
    if args.model:
        o.append(f"model.name_or_path={args.model}")
    if args.max_eval:
        o.append(f"task.max_eval_samples={args.max_eval}")
    return o


def run_runner(args, workdir: Path) -> dict:
    from runner.preflight.config import compose_config
    from runner.train import run

    out = workdir / f"runner-{time.monotonic_ns()}"
    t0 = run_clock.now()
    results = run(compose_config(runner_overrides(args), output_dir=out))
    wall = run_clock.now() - t0
    steps = results["steps"]["total"]
    padded = [json.loads(line)["padded_tokens"] for line in (out / "steps.jsonl").read_text().splitlines()]
    t = results["time"]
    phases = {"setup": t["setup_s"], "train": t["train_s"], "eval": t["eval_s"]}
    # the rest: saving the model and checkpoint, the learning curve and the record
    phases |= {"other": wall - sum(phases.values()), "of train, measuring (estimate)": t["measure_overhead_s"]}
    return {"wall_s": wall, "samples_per_s": steps * BATCH / t["train_s"], "accuracy": results["metrics"]["accuracy"],
            "cuda_peak_bytes": results["memory"].get("cuda_peak_allocated_bytes"), "train_padded_tokens": sum(padded),
            "padded_per_step": padded, "phases": phases}


def _cuda_peak() -> int | None:
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def _autocast(args):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=args.precision == "bf16")


def _prepared(args):
    """Model (PEFT LoRA r8 on query/value, classifier trained), tokenised train and dev sets, collator:
    what the plain loop and the Trainer share, built as a user would with the same libraries."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import DataCollatorWithPadding

    from runner import data as data_lib
    from runner.models import load_model_and_tokenizer
    from runner.preflight.config import compose_config

    cfg = compose_config(runner_overrides(args))
    torch.manual_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.task)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=R, lora_alpha=2 * R, lora_dropout=0.1,
                                             target_modules=TARGETS))
    splits = data_lib.load_task_splits(cfg.task)
    train = data_lib.tokenize(splits.train, tokenizer, cfg.task.text_keys, MAX_LEN, None)
    dev = next(iter(splits.evals.values()))
    if args.max_eval:
        dev = dev.select(range(min(args.max_eval, len(dev))))
    dev = data_lib.tokenize(dev, tokenizer, cfg.task.text_keys, MAX_LEN, None)
    return model, tokenizer, train, dev, DataCollatorWithPadding(tokenizer)


class CountingCollator:
    """The collator, recording the padded tokens of every batch it builds (the work a tool did)."""

    def __init__(self, collator):
        self.collator, self.padded = collator, []

    def __call__(self, features):
        batch = self.collator(features)
        self.padded.append(int(batch["input_ids"].numel()))
        return batch


def run_plain(args, workdir: Path) -> dict:
    from torch.utils.data import DataLoader, RandomSampler
    from transformers import get_scheduler

    t0 = run_clock.now()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as the runner's tf32=auto
        torch.cuda.reset_peak_memory_stats()
    model, _, train, dev, collator = _prepared(args)
    model.to(device)
    forward = torch.compile(model, dynamic=True) if args.compile else model
    # the runner's and the Trainer's shuffle (Accelerate's seedable sampler, epoch 0): one permutation drawn
    # from a generator seeded with the seed
    sampler = RandomSampler(train, generator=torch.Generator().manual_seed(args.seed))
    loader = DataLoader(train.with_format("torch"), batch_size=BATCH, sampler=sampler, collate_fn=collator)
    total = min(len(loader), args.max_steps or len(loader))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    sched = get_scheduler("linear", opt, num_warmup_steps=int(WARMUP * total), num_training_steps=total)
    model.train()
    t_train = run_clock.now()
    padded = []
    for step, batch in enumerate(loader):
        if step >= total:
            break
        padded.append(int(batch["input_ids"].numel()))
        batch = {k: v.to(device) for k, v in batch.items()}
        with _autocast(args):
            loss = forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    train_s = run_clock.now() - t_train
    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(dev.with_format("torch"), batch_size=64, collate_fn=collator):
            with _autocast(args):
                logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits
            preds.append(logits.argmax(-1).cpu())
            labels.append(batch["labels"])
    accuracy = float((torch.cat(preds) == torch.cat(labels)).float().mean())
    wall = run_clock.now() - t0
    return {"wall_s": wall, "samples_per_s": total * BATCH / train_s, "accuracy": accuracy,
            "cuda_peak_bytes": _cuda_peak(), "train_padded_tokens": sum(padded), "padded_per_step": padded,
            "phases": {"setup": t_train - t0, "train": train_s, "eval": t0 + wall - t_train - train_s}}


def run_trainer(args, workdir: Path) -> dict:
    from transformers import Trainer, TrainingArguments

    t0 = run_clock.now()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model, _, train, dev, collator = _prepared(args)
    targs = TrainingArguments(
        output_dir=str(workdir / f"trainer-{time.monotonic_ns()}"), per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=64, learning_rate=LR, weight_decay=WEIGHT_DECAY, warmup_steps=WARMUP,  # a float: a ratio
        lr_scheduler_type="linear", max_grad_norm=CLIP, num_train_epochs=1, max_steps=args.max_steps or -1,
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[], seed=args.seed,
        dataloader_num_workers=0, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        bf16=args.precision == "bf16", tf32=True if torch.cuda.is_available() else None, torch_compile=args.compile,
    )

    def accuracy(pred) -> dict:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    counting = CountingCollator(collator)
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=dev, data_collator=counting,
                      compute_metrics=accuracy)
    t_train = run_clock.now()
    out = trainer.train()
    train_s = run_clock.now() - t_train
    # before evaluate() pads the dev set with the same collator; with --max-steps it may include a batch
    # the Trainer fetched ahead but did not train on (a whole epoch has none)
    padded = counting.padded[:out.global_step]
    metrics = trainer.evaluate()
    wall = run_clock.now() - t0
    return {"wall_s": wall, "samples_per_s": out.global_step * BATCH / train_s,  # as the others: not the Trainer's own clock
            "accuracy": metrics["eval_accuracy"], "cuda_peak_bytes": _cuda_peak(), "train_padded_tokens": sum(padded),
            "padded_per_step": padded, "phases": {"setup": t_train - t0, "train": train_s, "eval": t0 + wall - t_train - train_s}}


TOOLS = {"runner": run_runner, "plain": run_plain, "trainer": run_trainer}


def main(argv=None) -> int:
    args = parse_args(argv)
    from runner.app import _quiet_libraries
    from runner.preflight.config import default_glue_dir

    os.environ.setdefault("GLUE_DIR", default_glue_dir() or "")
    _quiet_libraries()
    measured: dict[str, list[dict]] = {t: [] for t in args.tools}
    t0 = run_clock.now()
    with run_clock.counting_pauses(), tempfile.TemporaryDirectory() as tmp:  # Ctrl-Z: left out of every time
        for i in range(args.repeats):
            for tool in args.tools[i % len(args.tools):] + args.tools[:i % len(args.tools)]:
                m = TOOLS[tool](args, Path(tmp))
                others = [ms[0]["padded_per_step"] for ms in measured.values() if ms]
                if others and m["padded_per_step"] != others[0]:
                    raise SystemExit(f"{tool}'s training batches differ from another tool's (padded tokens per step "
                                     f"{m['padded_per_step'][:6]}... against {others[0][:6]}...): the comparison would "
                                     "measure data order, not the tools")
                measured[tool].append(m)
                print(f"repeat {i} {tool:8s}: wall {m['wall_s']:.1f} s, {m['samples_per_s']:.1f} samples/s, "
                      f"accuracy {m['accuracy']:.4f}, {m['train_padded_tokens']:,} padded train tokens; "
                      + ", ".join(f"{k} {v:.1f} s" for k, v in m["phases"].items() if v is not None), flush=True)
    median = {t: {k: statistics.median(m[k] for m in ms) for k in ("wall_s", "samples_per_s", "accuracy", "train_padded_tokens")}
              | {"cuda_peak_bytes": max((m["cuda_peak_bytes"] or 0) for m in ms) or None}
              for t, ms in measured.items()}
    print(f"\nMRPC, MiniLM (mean pooling) + LoRA r8 (every linear layer), lr {LR:g}, batch {BATCH}, {'1 epoch' if not args.max_steps else f'{args.max_steps} steps'}, "
          f"{args.repeats} interleaved repeats, torch threads {torch.get_num_threads()}, {run_clock.now() - t0:.0f} s in all\n")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, torch threads {torch.get_num_threads()}"
    print(f"device: {device}; precision {args.precision}{', torch.compile' if args.compile else ''}\n")
    print("| tool | wall s (median) | train samples/s | dev accuracy | padded train tokens | wall / plain | wall / Trainer | CUDA peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for t, m in median.items():
        vs_plain = m["wall_s"] / median["plain"]["wall_s"] if "plain" in median else float("nan")
        vs_trainer = m["wall_s"] / median["trainer"]["wall_s"] if "trainer" in median else float("nan")
        peak = f"{m['cuda_peak_bytes'] / 2**20:.0f}" if m["cuda_peak_bytes"] else "-"
        print(f"| {t} | {m['wall_s']:.1f} | {m['samples_per_s']:.1f} | {m['accuracy']:.4f} | {m['train_padded_tokens']:,.0f} | "
              f"{vs_plain:.3f} | {vs_trainer:.3f} | {peak} |")
    print("\nTargets: runner <= 1.05x plain and <= 1.0x Trainer in wall time, at equal accuracy.")
    if args.json:
        args.json.write_text(json.dumps({"runs": measured, "median": median, "args": vars(args) | {"json": str(args.json)}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
