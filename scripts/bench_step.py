"""Our `method=adapter` training step against a plain hand-written PyTorch+PEFT loop.

Both train the same LoRA model (same seed, same PEFT config), on the same
tokenised batches, with the same optimizer, schedule and gradient clipping.
Ours runs the full runner recipe (Accelerate, saved-tensor hooks, FLOP counter,
per-step records), once with every measurement on and once with FLOP counting
and saved-tensor hooks off; the plain loop does nothing else. Blocks of the
three alternate so machine noise hits all; it prints median and mean step
times after warm-up (the mean carries the measured steps' cost, the median
hides it), their ratios to the plain loop, and what measuring cost side by
side against the runs' own estimate (``time.measure_overhead_s``).

    python scripts/bench_step.py                      # MRPC: variable lengths (dynamic padding)
    python scripts/bench_step.py --task rte --steps 40 --repeats 3   # RTE: nearly every batch pads to 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, get_scheduler

from runner import data as data_lib
from runner.adapters import target_modules
from runner.config import compose_config
from runner.models import load_model_and_tokenizer
from runner.train import run


def overrides(args) -> list[str]:
    return [
        f"task=glue/{args.task}", "method=adapter", "adapter=lora", "logger=none", f"seed={args.seed}",
        f"trainer.batch_size={args.batch_size}", f"trainer.max_seq_length={args.max_seq_length}",
        f"trainer.max_steps={args.steps}", "trainer.progress_bar=false", f"task.max_train_samples={args.steps * args.batch_size}",
        "task.max_eval_samples=32", "trainer.eval_every_steps=100000", "trainer.checkpoint_every_steps=100000",
    ]


def ours(args, workdir: Path, i: int, measure: bool = True) -> tuple[list[float], float | None]:
    """Our step times, and the run's own estimate of what measuring cost (time.measure_overhead_s)."""
    out = workdir / f"ours-{i}-{'measured' if measure else 'unmeasured'}"
    off = [] if measure else ["trainer.count_flops=false", "trainer.measure_activations=false"]
    results = run(compose_config([*overrides(args), *off], output_dir=out))
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return [s["step_time_s"] for s in steps], results["time"]["measure_overhead_s"]


def plain(args) -> list[float]:
    cfg = compose_config(overrides(args))
    torch.manual_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.task)
    a = cfg.adapter
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=a.r, lora_alpha=a.alpha,
                                             lora_dropout=a.dropout, target_modules=target_modules(model, a)))
    raw = data_lib.load_task_splits(cfg.task).train
    train = data_lib.tokenize(raw, tokenizer, cfg.task.text_keys, cfg.trainer.max_seq_length, None)
    loader = DataLoader(train.with_format("torch"), batch_size=args.batch_size, shuffle=True,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay)
    sched = get_scheduler("linear", opt, num_warmup_steps=int(0.06 * args.steps), num_training_steps=args.steps)
    model.train()
    times = []
    t = time.perf_counter()
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.trainer.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        now = time.perf_counter()
        times.append(now - t)
        t = now
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mrpc", choices=["rte", "mrpc"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps dropped from each block")
    p.add_argument("--repeats", type=int, default=3, help="alternating blocks of each loop")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("GLUE_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))

    from runner.app import _quiet_libraries

    _quiet_libraries()
    times: dict[str, list[float]] = {"ours": [], "ours, measuring off": [], "plain": []}
    estimates = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            block, overhead = ours(args, Path(tmp), i)
            estimates.append(overhead)
            blocks = {"ours": block, "ours, measuring off": ours(args, Path(tmp), i, measure=False)[0], "plain": plain(args)}
            for name, b in blocks.items():
                times[name] += b[args.warmup:]
            print(f"block {i}: " + ", ".join(f"{k} median {statistics.median(v[args.warmup:]):.3f} s" for k, v in blocks.items())
                  + f" (after warm-up); measuring cost, the run's estimate: {overhead or 0:.2f} s over {len(block)} steps", flush=True)
    print(f"\n{args.task.upper()}, MiniLM + LoRA r8, batch {args.batch_size} x <= {args.max_seq_length} tokens, "
          f"{len(times['plain'])} steps each after warm-up, torch threads {torch.get_num_threads()}\n")
    print("| loop | median step s | mean step s | median / plain | mean / plain |")
    print("|---|---|---|---|---|")
    for name, t in times.items():
        med, mean = statistics.median(t), statistics.fmean(t)
        print(f"| {name} | {med:.3f} | {mean:.3f} | {med / statistics.median(times['plain']):.3f} | "
              f"{mean / statistics.fmean(times['plain']):.3f} |")
    on, off = times["ours"], times["ours, measuring off"]
    print(f"\nmeasuring cost after warm-up, side by side: {sum(on) - sum(off):+.2f} s over {len(on)} steps "
          f"({statistics.fmean(on) / statistics.fmean(off) - 1:+.1%} of the mean step); the runs' own estimate "
          f"(time.measure_overhead_s, warm-up steps included): {statistics.fmean(e or 0 for e in estimates):.2f} s per block")
    print("target: ours / plain <= 1.05")


if __name__ == "__main__":
    main()
