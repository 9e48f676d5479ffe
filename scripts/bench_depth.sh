#!/usr/bin/env bash
# Evidence at depth (issue "Evidence at depth", docs/safe.md, docs/hies.md): SAFE and HIES on
# all-mpnet-base-v2 (12 x 12 heads), one job at a time, in the order that answers the most
# first. Every step is a runner.sweep dir under $OUT: rerun this script to continue (completed
# jobs are skipped, an interrupted one resumes from its last checkpoint, every 50 steps).
#
#   bash scripts/bench_depth.sh                 # everything, seed by seed (days on 2 CPU cores)
#   SEEDS="1" TASKS="mrpc" bash scripts/bench_depth.sh   # the first slice
#   STEPS="safe" bash scripts/bench_depth.sh    # only the LoRA-vs-SAFE pairs
#
# Per seed and task, in sweep dirs of their own ($OUT/safe_<task>/seed<N>, $OUT/hies_<task>/seed<N>: a
# sweep holds one plan): LoRA (all-linear r8, lr 1e-3, 3 epochs, batch 32, length-grouped) and SAFE
# at today's defaults back to back (bench_safe.py), then every pruning criterion at 10-70% of the
# heads on that LoRA run, alpha chosen on one dev half (bench_hies.py, the paper's protocol).
# SST-2 trains on a fixed sample of SST2_TRAIN examples (the same for every method and seed) so
# that one MPNet run stays near an hour here; its whole dev set (872) is evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-outputs/depth}
SEEDS=${SEEDS:-1 2 3}
TASKS=${TASKS:-mrpc sst2}
STEPS=${STEPS:-safe hies}
SST2_TRAIN=${SST2_TRAIN:-8000}
COMMON=(--override model=mpnet --override trainer.checkpoint_every_steps=50)
# The issue's targets at depth: mean saved-for-backward memory <= 0.6 and whole-run FLOPs <= 0.75 of
# LoRA's, the mean metric within 0.5 points; time is reported as a ratio without a target.
TARGETS=(--target-mean-memory 0.6 --target-flops 0.75 --target-metric-drop 0.5 --target-wall-time none)

task_caps() {  # the training-set cap of a task (SST-2 only)
  if [[ $1 == sst2 ]]; then echo "--max-train-samples $SST2_TRAIN"; fi
}

for seed in $SEEDS; do
  for task in $TASKS; do
    # shellcheck disable=SC2046
    if [[ " $STEPS " == *" safe "* ]]; then
      echo "== $(date -Is) SAFE vs LoRA: mpnet $task seed $seed"
      $PY scripts/bench_safe.py --tasks "$task" --seeds "$seed" --sharpness-batches 0 "${COMMON[@]}" \
        $(task_caps "$task") "${TARGETS[@]}" --out "$OUT/safe_$task/seed$seed"
      # every seed finished so far (whatever SEEDS this call ran), in one table: $OUT/safe_<task>/summary.md
      $PY scripts/bench_safe.py --tasks "$task" --all-seeds --from-sweep "$OUT/safe_$task" "${TARGETS[@]}" \
        --out "$OUT/safe_$task" > /dev/null
    fi
    if [[ " $STEPS " == *" hies "* ]]; then
      lora_run=$($PY - "$OUT/safe_$task/seed$seed/adapter" "$seed" <<'EOF'
import sys
from pathlib import Path
from runner.results import read_completed
from runner.run_files import RESULTS
for cfg in sorted(Path(sys.argv[1]).glob(f"**/{RESULTS}")):
    r = read_completed(cfg.parent)
    if r and str(r.get("seed")) == sys.argv[2]:
        print(cfg.parent); break
EOF
)
      if [[ -z $lora_run ]]; then echo "no completed LoRA run for $task seed $seed yet: HIES waits"; continue; fi
      echo "== $(date -Is) HIES and baselines at 10-70%: mpnet $task seed $seed ($lora_run)"
      $PY scripts/bench_hies.py --tasks "$task" --seeds "$seed" --runs "$task=$lora_run" \
        --prune prune.alpha=auto prune.alpha_split=dev_half --out "$OUT/hies_$task/seed$seed"
    fi
  done
done
echo "== $(date -Is) done"
