"""``build_report`` (every file of a report) and the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

import runner.aggregate  # the package's docstring is the command line's help
from runner.aggregate.collect import collect
from runner.aggregate.frontier import TOLERANCE, frontier_by_task, frontier_table, plot_frontier
from runner.aggregate.plots import plot_efficiency, plot_freeze_timelines, plot_pruning
from runner.aggregate.stats import _order, summarize_pruning, summarize_runs, task_order
from runner.aggregate.tables import (
    efficiency_table,
    main_table,
    markdown,
    mixed_groups_note,
    pruning_table,
)

# ------------------------------------------------------------------------ report


def build_report(paths: list[Path], out: Path, baseline: str = "adapter", by: list[str] | None = None,
                 plots: bool = True) -> dict:
    """Collect, write the CSVs, markdown and PNGs; returns what was written and the tables."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, problems, raw = collect(paths, by)
    stats = summarize_runs(runs, baseline, by)
    pstats = summarize_pruning(raw)
    runs.drop(columns=[c for c in runs.columns if c.startswith("_")]).to_csv(out / "runs.csv", index=False)
    stats.to_csv(out / "summary.csv", index=False)
    problems.to_csv(out / "problems.csv", index=False)
    if not pstats.empty:
        pstats.to_csv(out / "pruning.csv", index=False)

    n_done = int((runs["status"] == "completed").sum()) if not runs.empty else 0
    sections = [f"# Results\n\nFrom {', '.join(str(p) for p in paths)}: {len(runs)} results.json, {n_done} completed; "
                f"{len(problems)} listed under *Not completed* (never averaged). Metric: the task's main metric x100, "
                f"mean ± std over seeds (sample std). Ratios (×) are to method `{baseline}` on the same model and task.\n"]
    note = mixed_groups_note(stats)
    if note:
        sections.append(note)
    tables: dict[str, pd.DataFrame] = {}
    figures: list[Path] = []
    models = _order(stats["model"]) if not stats.empty else []
    for model in models:
        t = main_table(stats, model, baseline)
        tables[f"main/{model}"] = t
        sections.append(f"## {model}: main table (SAFE layout)\n\n" + markdown(t))
        e = efficiency_table(stats, model, baseline)
        tables[f"efficiency/{model}"] = e
        sections.append(f"## {model}: cost per task and method\n\nMemory in bytes as measured (saved for backward: "
                        "activations autograd keeps; state + saved: that plus weights, gradients and optimizer state); "
                        "[ratio to the baseline].\n\n" + markdown(e))
        frontiers = frontier_by_task(stats, model, baseline)
        sections += _frontier_sections(frontiers, model, baseline, tables)
        if plots:
            figures += _training_figures(stats, raw, frontiers, model, baseline, out)
    if not pstats.empty:
        for model in _order(pstats["model"]):
            for value, title in (("metric", "Table 1 layout: task metric after pruning (x100; 0% = unpruned)"),
                                 ("f1", "Table 1 layout, F1 (the paper's metric for MRPC; x100; 0% = unpruned)"),
                                 ("stability", "Table 2 layout: stability after pruning")):
                t = pruning_table(pstats, model, value)
                if t.empty and value == "f1":
                    continue  # no task with F1
                tables[f"pruning_{value}/{model}"] = t
                sections.append(f"## {model}: {title}\n\n" + markdown(t))
            if plots:
                for task in task_order(pstats[pstats["model"] == model]["task"]):
                    fig = plot_pruning(pstats, model, task, out / f"pruning_{model}_{task}.png")
                    figures += [fig] if fig else []
    sections.append("## Not completed\n\n" + markdown(problems))
    if figures:
        sections.append("## Figures\n\n" + "".join(f"![{f.stem}]({f.name})\n" for f in figures))
    text = "\n".join(sections)
    (out / "report.md").write_text(text)
    return {"runs": runs, "stats": stats, "pruning": pstats, "problems": problems, "tables": tables,
            "figures": figures, "markdown": text, "out": out}


def _training_figures(stats: pd.DataFrame, raw: list[dict], frontiers: dict, model: str, baseline: str,
                      out: Path) -> list[Path]:
    """One model's efficiency bars, then per task SAFE's frontier (a grid only) and freezing timeline."""
    figures = [plot_efficiency(stats, model, baseline, out / f"efficiency_{model}.png")]
    for task in task_order(stats[stats["model"] == model]["task"]):
        if task in frontiers:
            figures.append(plot_frontier(frontiers[task], model, task, out / f"frontier_{model}_{task}.png", baseline))
        figures.append(plot_freeze_timelines(raw, model, task, out / f"freeze_timeline_{model}_{task}.png"))
    return [f for f in figures if f]


def _frontier_sections(frontiers: dict, model: str, baseline: str, tables: dict) -> list[str]:
    """SAFE's frontier table, when some task has at least two settings besides the baseline (a grid)."""
    if not any(len(p) >= 2 for p in frontiers.values()):
        return []
    t = frontier_table(frontiers)
    tables[f"frontier/{model}"] = t
    return [f"## {model}: accuracy against savings (SAFE's frontier)\n\nOne row per setting (mean over its seeds, n); "
            f"FLOPs and memory (mean saved for backward) as ratios to `{baseline}`; *front*: on the Pareto front of "
            f"metric against FLOPs ratio; *chosen*: the rule's pick, the lowest FLOPs ratio among the settings whose "
            f"mean metric is at least {baseline}'s - {TOLERANCE} (docs/safe.md; SAFE's baselines `safe:random`, "
            f"`safe:static` are never picked); when none is, *closest (holds nothing)* marks, among the settings run on the "
            f"most seeds, the one with the highest mean metric.\n\n" + markdown(t)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/aggregate.py", description=runner.aggregate.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", type=Path, default=[Path("outputs")], help="sweep dirs, run dirs or outputs/ (default)")
    p.add_argument("--out", type=Path, default=None, help="where to write (default <first path>/report)")
    p.add_argument("--baseline", default="adapter", help="method the ratios are taken to (default adapter)")
    p.add_argument("--by", action="append", default=[], metavar="KEY",
                   help="also group by this config key (e.g. trainer.lr), or by `sweep` (the folder holding each run); repeatable")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    args = p.parse_args(argv)
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent) / "report"
    report = build_report(args.paths, out, args.baseline, args.by, plots=not args.no_plots)
    if not args.quiet:
        print(report["markdown"])
    print(f"aggregate: {len(report['runs'])} runs, {len(report['problems'])} not completed; wrote {out}/report.md, "
          f"runs.csv, summary.csv, problems.csv" + (", pruning.csv" if not report["pruning"].empty else "")
          + (f" and {len(report['figures'])} PNGs" if report["figures"] else ""), file=sys.stderr)
    return 0
