"""What a finished run prints: one block a person reads at the end of ``python -m runner``."""

from __future__ import annotations

from pathlib import Path

from runner import run_files


def _gib(n) -> str:
    return f"{n / 2**30:.2f} GiB" if n else "-"


def input_notes(splits: dict) -> str:
    """What became of the input, where anything was skipped, capped, cut or dropped ('' when nothing was)."""
    notes = []
    for name, c in splits.items():
        parts = []
        if c.get("skipped"):
            parts.append(f"{c['skipped']} malformed row(s) skipped")
        if c.get("read") is not None and c.get("used") is not None and c["used"] < c["read"] - (c.get("skipped") or 0):
            parts.append(f"{c['used']} of {c['read'] - (c.get('skipped') or 0)} rows used (max_*_samples)")
        if c.get("truncated"):
            parts.append(f"{c['truncated']} example(s) cut at max_seq_length")
        if c.get("responses_cut"):
            parts.append(f"{c['responses_cut']} response(s) cut at max_seq_length")
        if c.get("records_dropped"):
            parts.append(f"{c['records_dropped']} record(s) dropped (prompt fills max_seq_length)")
        if parts:
            notes.append(f"{name}: {', '.join(parts)}")
    return "; ".join(notes)


def run_summary(results: dict, output_dir: Path) -> str:
    """Status, main metric against the constant prediction, time, memory and FLOPs, where it all is."""
    lines = [f"run {results.get('run_name')}: {results.get('status')}"]
    main = results.get("main_metric")
    metrics = results.get("metrics") or {}
    learning = results.get("learning") or {}
    if main in metrics and metrics[main] is not None:
        others = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                           if k not in (main, "loss", "num_examples", "tokens") and isinstance(v, (int, float)) and "/" not in k)
        trivial = learning.get("trivial")
        vs = f" (constant prediction {trivial:.4f})" if trivial is not None else ""
        lines.append(f"  {main} {metrics[main]:.4f}{vs}" + (f"; {others}" if others else ""))
        if learning.get("warning"):
            lines.append(f"  warning: {learning['warning']}")
    schedule_warning = (results.get("method_report") or {}).get("schedule_warning")
    if schedule_warning:
        lines.append(f"  warning: {schedule_warning}")
    dropped = input_notes((results.get("data") or {}).get("input") or {})
    if dropped:
        lines.append(f"  data: {dropped} (results.json data.input)")
    time = results.get("time") or {}
    memory = results.get("memory") or {}
    flops = results.get("flops") or {}
    if time:
        total = flops.get("train_total")
        counted = f"{total:.3g}" if total else "not counted (trainer.count_flops=false)"
        lines.append(f"  train {time.get('train_s', 0):.0f} s, eval {time.get('eval_s', 0):.0f} s; "
                     f"training memory (state + saved for backward, peak) {_gib(memory.get('state_plus_saved_peak_bytes'))}; "
                     f"training FLOPs {counted}")
    if "pruning" in results:
        primary = results["pruning"].get("primary") or {}
        value = primary.get("main_metric")
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        lines.append(f"  pruned {primary.get('heads_pruned')} heads (ratio {primary.get('ratio')}): {main} {shown}")
    lines.append(f"  results: {Path(output_dir) / run_files.RESULTS}  curve: {Path(output_dir) / run_files.LEARNING_CURVE}")
    wandb = results.get("wandb") or {}
    if wandb.get("dir") and "offline" in str(wandb.get("dir")):
        lines.append(f"  W&B ran offline; upload with: wandb sync {Path(wandb['dir']).parent}")
    return "\n".join(lines)
