"""Tables and plots from every ``results.json`` under a sweep dir (or all of ``outputs/``).

    python scripts/aggregate.py outputs/multiruns/<stamp>          # or: python -m runner.aggregate
    python scripts/aggregate.py outputs --baseline adapter --out reports/all

Writes into ``--out`` (default ``<path>/report``):

* ``runs.csv``: one row per results.json, every scalar flattened (``memory.param_bytes``);
* ``summary.csv``: mean/std/n over seeds per (model, task, method, adapter, --by keys),
  with ratios of memory, FLOPs and time to the baseline method;
* ``pruning.csv``: mean/std/n over seeds per (model, task, criterion, ratio) when runs prune heads;
* ``problems.csv``: failed, interrupted, unfinished and never-started jobs;
* ``report.md``: the markdown tables below (also printed), and PNG plots.

Tables: the SAFE paper's main-table layout (methods x tasks, average, memory, FLOPs and
time with ratios to the baseline); a per-task efficiency table (every memory measure,
FLOPs, time); with a grid of SAFE settings (``--by safe.threshold --by safe.t_w ...``),
SAFE's frontier (metric against FLOPs ratio per setting, the Pareto front and the default
rule's pick; :mod:`runner.aggregate.frontier`, also drawn per task); the HIES paper's Tables 1 and 2 layout (metric and stability per task and
pruning ratio, one row per criterion); and the list of runs that did not complete.
Only completed runs are averaged; every other run is listed, never dropped silently.

Missing values print as ``-``. Pruning curves and Table 1 show the trivial level (the task
metric of a constant prediction: the majority class, or the training mean for regression) and mark
the cells where pruning collapsed the model to it.

The key names of sections written by other parts of the runner (``pruning``, ``method_report``,
``learning``) are read in :func:`pruning_entries`, :func:`freeze_steps` and :func:`trivial_level` only.
"""

from runner.aggregate.collect import (  # noqa: F401
    EFFICIENCY,
    GLUE_ORDER,
    GROUP_KEYS,
    MISSING,
    PER_RUN_KEYS,
    SKIP_FLATTEN,
    SWEEP_KEY,
    collect,
    differing_settings,
    find_results,
    freeze_steps,
    pruning_entries,
    run_row,
    settings_of,
    trivial_level,
)
from runner.aggregate.frontier import (  # noqa: F401
    TOLERANCE,
    choose,
    frontier_by_task,
    frontier_figure,
    frontier_points,
    frontier_table,
    plot_frontier,
)
from runner.aggregate.plots import (  # noqa: F401
    efficiency_figure,
    plot_efficiency,
    plot_freeze_timelines,
    plot_pruning,
    pruning_figure,
)
from runner.aggregate.report import build_report, main  # noqa: F401
from runner.aggregate.stats import (  # noqa: F401
    collapsed,
    summarize_pruning,
    summarize_runs,
    task_order,
)
from runner.aggregate.tables import (  # noqa: F401
    efficiency_table,
    main_table,
    markdown,
    mixed_groups_note,
    pruning_table,
)
