"""Our `method=adapter` training step against a plain hand-written PyTorch+PEFT loop.

Both train the same LoRA model (same seed, same PEFT config), on the same
tokenised batches in the same order (the plain loop draws the runner's shuffle:
a ``RandomSampler`` whose generator is seeded with the run's seed; the padded
tokens of every step are compared and the benchmark stops if any differ), with
the same optimizer, schedule and gradient clipping. Ours runs the full runner
recipe (Accelerate, saved-tensor hooks, FLOP counter, per-step records,
logging), once with every measurement on and once with FLOP counting and
saved-tensor hooks off; the plain loop does nothing else. Blocks of the three
alternate, the order rotating by one loop per repeat, so machine noise and the
place in the order hit all three alike.

Two figures per loop: the mean step, the train phase's wall time over its
steps (everything between steps included: the runner's per-step records,
logging and checks, and its measured steps, which come first), and the median
step after warm-up (what a steady step costs). Measuring's cost side by side
(on minus off, whole train phases) is printed next to the runs' own estimate
(``time.measure_overhead_s``). Every time is read from ``runner.run_clock``: a pause with Ctrl-Z (SIGTSTP)
until ``fg`` is left out of the loop it paused, as it is of a run's own times.

    python scripts/bench_step.py                      # MRPC: variable lengths (dynamic padding)
    python scripts/bench_step.py --task rte --steps 40 --repeats 3   # RTE: nearly every batch pads to 128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model
from torch.utils.data import DataLoader, RandomSampler
from transformers import DataCollatorWithPadding, get_scheduler

from runner import data as data_lib
from runner import run_clock
from runner.adapters import target_modules
from runner.models import load_model_and_tokenizer
from runner.preflight.config import compose_config
from runner.train import run


def overrides(args) -> list[str]:
    return [
        f"task=glue/{args.task}", "method=adapter", "adapter=lora", "logger=none", f"seed={args.seed}",
        f"trainer.batch_size={args.batch_size}", f"trainer.max_seq_length={args.max_seq_length}",
        f"trainer.max_steps={args.steps}", "trainer.progress_bar=false", f"task.max_train_samples={args.steps * args.batch_size}",
        "task.max_eval_samples=32", "trainer.eval_every_steps=100000", "trainer.checkpoint_every_steps=100000",
    ]


def ours(args, workdir: Path, i: int, measure: bool = True) -> dict:
    """Our block: step times, padded tokens per step, the train phase's wall time and the run's own
    estimate of what measuring cost (``time.measure_overhead_s``)."""
    out = workdir / f"ours-{i}-{'measured' if measure else 'unmeasured'}"
    off = [] if measure else ["trainer.count_flops=false", "trainer.measure_activations=false"]
    results = run(compose_config([*overrides(args), *off], output_dir=out))
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return {"times": [s["step_time_s"] for s in steps], "padded": [s["padded_tokens"] for s in steps],
            "measured": [bool(s["measured"]) for s in steps],
            "train_s": results["time"]["train_s"], "estimate": results["time"]["measure_overhead_s"] or 0.0,
            "measured_steps": results["time"]["measured_steps"]}


def plain(args) -> dict:
    cfg = compose_config(overrides(args))
    torch.manual_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.task)
    a = cfg.adapter
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=a.r, lora_alpha=a.alpha,
                                             lora_dropout=a.dropout, target_modules=target_modules(model, a)))
    raw = data_lib.load_task_splits(cfg.task).train
    train = data_lib.tokenize(raw, tokenizer, cfg.task.text_keys, cfg.trainer.max_seq_length, None)
    # the runner's shuffle (Accelerate's seedable sampler, epoch 0): a permutation drawn from a generator
    # seeded with the run's seed
    sampler = RandomSampler(train, generator=torch.Generator().manual_seed(args.seed))
    loader = DataLoader(train.with_format("torch"), batch_size=args.batch_size, sampler=sampler,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay)
    sched = get_scheduler("linear", opt, num_warmup_steps=int(0.06 * args.steps), num_training_steps=args.steps)
    model.train()
    times, padded = [], []
    t = start = run_clock.now()
    for batch in loader:
        padded.append(int(batch["input_ids"].numel()))
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.trainer.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        now = run_clock.now()
        times.append(now - t)
        t = now
    return {"times": times, "padded": padded, "train_s": run_clock.now() - start}


LOOPS = {"ours": lambda args, tmp, i: ours(args, tmp, i), "ours, measuring off": lambda args, tmp, i: ours(args, tmp, i, False),
         "plain": lambda args, tmp, i: plain(args)}


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
    blocks: dict[str, list[dict]] = {name: [] for name in LOOPS}
    names = list(LOOPS)
    with run_clock.counting_pauses(), tempfile.TemporaryDirectory() as tmp:  # Ctrl-Z: left out of every time
        for i in range(args.repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:
                block = LOOPS[name](args, Path(tmp), i)
                first = next((bs[0]["padded"] for bs in blocks.values() if bs), block["padded"])
                if block["padded"] != first:
                    raise SystemExit(f"{name}'s batches differ from another loop's (padded tokens per step: {block['padded']}): "
                                     "the comparison would measure data order, not overhead")
                blocks[name].append(block)
                print(f"block {i} {name}: train phase {block['train_s']:.2f} s over {len(block['times'])} steps, median step "
                      f"after warm-up {statistics.median(block['times'][args.warmup:]):.3f} s"
                      + (f"; measured steps {block['measured_steps']}, the run's estimate of their cost {block['estimate']:.2f} s"
                         if name == "ours" else ""), flush=True)
    padded = blocks["plain"][0]["padded"]
    print(f"\n{args.task.upper()}, MiniLM + LoRA r8, batch {args.batch_size} x <= {args.max_seq_length} tokens, "
          f"{len(padded)} steps per block, {args.repeats} blocks per loop (order rotating), torch threads {torch.get_num_threads()}; "
          f"the same batches in every loop: padded tokens per step {padded[:8]}... ({sum(padded):,} per block)\n")
    mean = {n: statistics.fmean(b["train_s"] / len(b["times"]) for b in bs) for n, bs in blocks.items()}
    median = {n: statistics.median(t for b in bs for t in b["times"][args.warmup:]) for n, bs in blocks.items()}
    print("| loop | mean step s (train phase / steps) | median step s after warm-up | mean / plain | median / plain |")
    print("|---|---|---|---|---|")
    for n in blocks:
        print(f"| {n} | {mean[n]:.3f} | {median[n]:.3f} | {mean[n] / mean['plain']:.3f} | {median[n] / median['plain']:.3f} |")
    pairs = list(zip(blocks["ours"], blocks["ours, measuring off"]))
    side = statistics.fmean(a["train_s"] - b["train_s"] for a, b in pairs)
    # the steps that measured, against the same steps (same batches) unmeasured: the cost itself, without
    # the other steps' noise, and with the first step's warm-up (slow in every loop) cancelled
    on_steps = statistics.fmean(sum(t - u for t, u, m in zip(a["times"], b["times"], a["measured"]) if m) for a, b in pairs)
    estimate = statistics.fmean(b["estimate"] for b in blocks["ours"])
    phase = statistics.fmean(b["train_s"] for b in blocks["ours, measuring off"])
    print(f"\nmeasuring's cost per block, side by side (train phase on minus off): {side:+.2f} s ({side / phase:+.1%}); "
          f"the runs' own estimate (time.measure_overhead_s): {estimate:.2f} s ({estimate / phase:+.1%}); "
          f"measured steps per block: {statistics.fmean(b['measured_steps'] for b in blocks['ours']):.1f}, which took "
          f"{on_steps:+.2f} s ({on_steps / phase:+.1%}) longer than the same steps unmeasured")
    print("targets: ours / plain <= 1.03 (mean), measuring off within 1% of plain, the estimate within 1 point of side by side")


if __name__ == "__main__":
    main()
