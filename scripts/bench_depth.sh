#!/usr/bin/env bash
# Evidence at depth (issue "Evidence at depth", docs/safe.md, docs/hies.md): SAFE and HIES on
# all-mpnet-base-v2 (12 x 12 heads), one job at a time, in the order that answers the most
# first. Every step is a runner.sweep dir under $OUT: rerun this script to continue (completed
# jobs are skipped, an interrupted one resumes from its last checkpoint, every 50 steps).
#
#   bash scripts/bench_depth.sh                                   # the whole plan (days on 2 CPU cores)
#   PLAN="seed:1" TASKS="mrpc" bash scripts/bench_depth.sh        # the first slice
#   PLAN="seed:2 seed:3" STEPS="safe" bash scripts/bench_depth.sh # only the LoRA-vs-SAFE pairs
#   DRY_RUN=1 bash scripts/bench_depth.sh                         # print the sweeps' commands, run nothing
#
# PLAN is a list of phases, run in order:
#   seed:<N>  per task of TASKS, in sweep dirs of their own ($OUT/safe_<task>/seed<N>, $OUT/hies_<task>/seed<N>:
#             a sweep holds one plan): LoRA (all-linear r8, lr 1e-3, 3 epochs, batch 32, length-grouped) and
#             SAFE at today's defaults back to back (bench_safe.py), then every pruning criterion at 10-70% of
#             the heads on that LoRA run, alpha chosen on one dev half (bench_hies.py, the paper's protocol).
#   minilm    the same recipe on MiniLM-L6 (6 layers) and SST-2, seeds 1-3 ($OUT/minilm_sst2/): LoRA vs SAFE,
#             HIES on each LoRA run, full fine-tuning: the two depths on one task both models learn.
#   probes    linear probes on the frozen MPNet (MRPC, RTE, SST-2) and MiniLM (SST-2): $OUT/probes/.
#   frontier  SAFE's schedule screened on FRONTIER_TASK (sst2), seeds FRONTIER_SEEDS (1 2: seed 1 froze 11 of 12
#             layers at the defaults, seed 2 three) ($OUT/frontier_<task>/<setting>/seed<N>): freezing more
#             (T_final 0.5) and earlier (t_f 0.5; t_w 0.1), drift importance; FRONTIER_SETTINGS picks some by name
#             (default all); each against the same seeds' LoRA runs, tabled in $OUT/frontier_<task>/summary.md
#             after every run.
#   budget    SAFE with budget_mode (a lower peak) on each task of TASKS, seeds BUDGET_SEEDS (1)
#             ($OUT/budget_<task>/seed<N>), against the same seeds' LoRA runs in $OUT/budget_<task>/summary.md.
#   learn     does MPNet learn: LoRA on RTE, full fine-tuning on MRPC, RTE and SST-2, seeds LEARN_SEEDS (1 2 3),
#             seed by seed (bench_learn.py; LoRA on MRPC and SST-2 are the seed phases' runs): $OUT/learn/.
# After every job, the records of what completed (results, configs, step histories, tables; never checkpoints
# or weights) are copied to ARCHIVE (benchmarks/depth; empty: none) by scripts/archive_runs.py: commit them,
# outputs/ does not outlive the machine.
# SST-2 trains on a fixed sample of SST2_TRAIN examples (the same for every method and seed) so
# that one MPNet run stays near an hour here; its whole dev set (872) is evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-outputs/depth}
PLAN=${PLAN:-minilm probes seed:1 seed:2 frontier seed:3 budget learn}
TASKS=${TASKS:-mrpc sst2}
STEPS=${STEPS:-safe hies}
SST2_TRAIN=${SST2_TRAIN:-8000}
FRONTIER_SEEDS=${FRONTIER_SEEDS:-1 2}
FRONTIER_TASK=${FRONTIER_TASK:-sst2}
FRONTIER_SETTINGS=${FRONTIER_SETTINGS:-}
BUDGET_SEEDS=${BUDGET_SEEDS:-1}
LEARN_SEEDS=${LEARN_SEEDS:-1 2 3}
ARCHIVE=${ARCHIVE-benchmarks/depth}
COMMON=(--override model=mpnet --override trainer.checkpoint_every_steps=50)
MINILM=(--override model=minilm --override trainer.checkpoint_every_steps=50)
# The issue's targets at depth: mean saved-for-backward memory <= 0.6 and whole-run FLOPs <= 0.75 of
# LoRA's, the mean metric within 0.5 points; time is reported as a ratio without a target.
TARGETS=(--target-mean-memory 0.6 --target-flops 0.75 --target-metric-drop 0.5 --target-wall-time none)
# budget_mode's: peak saved-for-backward memory <= 0.6 of LoRA's, the metric within 1 point.
BUDGET_TARGETS=(--target-peak-memory 0.6 --target-metric-drop 1 --target-mean-memory none --target-flops none
  --target-wall-time none)
HIES=(--prune prune.alpha=auto prune.alpha_split=dev_half)
DRY=()
if [[ -n ${DRY_RUN:-} ]]; then DRY=(--dry-run); fi

task_caps() {  # the training-set cap of a task (SST-2 only)
  if [[ $1 == sst2 ]]; then echo "--max-train-samples $SST2_TRAIN"; fi
}

keep_records() {  # what completed so far, copied to $ARCHIVE (a failure to copy does not stop the plan)
  if [[ -z ${DRY_RUN:-} && -n $ARCHIVE && -d $OUT ]]; then $PY scripts/archive_runs.py "$OUT" "$ARCHIVE" || true; fi
}

safe_alone() {  # SAFE on task $1, seed $2, into $3, with the overrides $4.. (no LoRA run: it pairs with the seed phase's)
  local task=$1 seed=$2 out=$3
  shift 3
  # shellcheck disable=SC2046
  $PY scripts/bench_safe.py "${DRY[@]}" --tasks "$task" --seeds "$seed" --methods safe --sharpness-batches 0 "${COMMON[@]}" \
    $(task_caps "$task") "$@" --out "$out" < /dev/null
}

beside_lora() {  # every completed run under $2 beside task $1's LoRA runs, ratios over paired seeds, against targets $3..:
  # $2/summary.md (a table that cannot be made yet does not stop the plan)
  local task=$1 dir=$2
  shift 2
  if [[ -z ${DRY_RUN:-} && -d $OUT/safe_$task ]]; then
    $PY scripts/bench_safe.py --tasks "$task" --all-seeds --from-sweep "$OUT/safe_$task" "$dir" "$@" --out "$dir" \
      > /dev/null < /dev/null || true
  fi
}

lora_run() {  # the completed run of seed $2 under sweep dir $1 (nothing when none)
  $PY - "$1" "$2" <<'PYEOF'
import sys
from pathlib import Path
from runner.results import read_completed
from runner.run_files import RESULTS
for cfg in sorted(Path(sys.argv[1]).glob(f"**/{RESULTS}")):
    r = read_completed(cfg.parent)
    if r and str(r.get("seed")) == sys.argv[2]:
        print(cfg.parent); break
PYEOF
}

seed_phase() {  # per task: LoRA vs SAFE back to back, then every pruning criterion on the LoRA run
  local seed=$1 task run
  for task in $TASKS; do
    if [[ " $STEPS " == *" safe "* ]]; then
      echo "== $(date -Is) SAFE vs LoRA: mpnet $task seed $seed"
      # shellcheck disable=SC2046
      $PY scripts/bench_safe.py "${DRY[@]}" --tasks "$task" --seeds "$seed" --sharpness-batches 0 "${COMMON[@]}" \
        $(task_caps "$task") "${TARGETS[@]}" --out "$OUT/safe_$task/seed$seed"
      # every seed finished so far (whatever PLAN this call ran), in one table: $OUT/safe_<task>/summary.md
      $PY scripts/bench_safe.py "${DRY[@]}" --tasks "$task" --all-seeds --from-sweep "$OUT/safe_$task" "${TARGETS[@]}" \
        --out "$OUT/safe_$task" > /dev/null
      keep_records
    fi
    if [[ " $STEPS " == *" hies "* ]]; then
      run=$(lora_run "$OUT/safe_$task/seed$seed/adapter" "$seed")
      if [[ -z $run ]]; then echo "no completed LoRA run for $task seed $seed yet: HIES waits"; continue; fi
      echo "== $(date -Is) HIES and baselines at 10-70%: mpnet $task seed $seed ($run)"
      $PY scripts/bench_hies.py "${DRY[@]}" --tasks "$task" --seeds "$seed" --runs "$task=$run" "${HIES[@]}" \
        --out "$OUT/hies_$task/seed$seed"
      keep_records
    fi
  done
  if [[ " $STEPS " == *" hies "* ]]; then hies_table; keep_records; fi
}

hies_table() {  # every MPNet pruning run finished so far, all tasks and seeds, in one table: $OUT/hies_mpnet/bench_hies.md
  local task dirs=() found=()
  for task in $TASKS; do
    if [[ -d $OUT/hies_$task ]]; then dirs+=("$OUT/hies_$task"); found+=("$task"); fi
  done
  if [[ -z ${DRY_RUN:-} ]] && (( ${#dirs[@]} )); then
    $PY scripts/bench_hies.py --tasks "${found[@]}" --from-sweep "${dirs[@]}" --out "$OUT/hies_mpnet" > /dev/null || true
  fi
}

minilm_phase() {  # MiniLM-L6, SST-2, the same recipe and cap: LoRA vs SAFE, HIES, full fine-tuning
  local dir=$OUT/minilm_sst2 runs=() seed run
  echo "== $(date -Is) MiniLM on SST-2: LoRA vs SAFE, seeds 1-3"
  $PY scripts/bench_safe.py "${DRY[@]}" --tasks sst2 --seeds 1 2 3 --sharpness-batches 0 "${MINILM[@]}" \
    --max-train-samples "$SST2_TRAIN" "${TARGETS[@]}" --out "$dir/safe"
  for seed in 1 2 3; do
    run=$(lora_run "$dir/safe/adapter" "$seed")
    if [[ -n $run ]]; then runs+=("$run"); fi
  done
  if (( ${#runs[@]} == 3 )); then
    echo "== $(date -Is) MiniLM on SST-2: HIES and baselines at 10-70%, seeds 1-3"
    $PY scripts/bench_hies.py "${DRY[@]}" --tasks sst2 --seeds 1 2 3 --runs "sst2=$(IFS=,; echo "${runs[*]}")" "${HIES[@]}" \
      --out "$dir/hies"
  else
    echo "MiniLM on SST-2: ${#runs[@]} of 3 LoRA runs completed: HIES waits"
  fi
  echo "== $(date -Is) MiniLM on SST-2: full fine-tuning, seeds 1-3"
  $PY scripts/bench_learn.py "${DRY[@]}" --tasks sst2 --recipes full --poolings cls --seeds 1 2 3 --regression-seeds \
    --max-train-samples "$SST2_TRAIN" --override model=minilm --out "$dir/learn"
}

probes_phase() {  # what the frozen models' features already hold (linear probes; minutes)
  local dir=$OUT/probes
  echo "== $(date -Is) linear probes on the frozen models"
  if [[ -n ${DRY_RUN:-} ]]; then echo "(dry run: scripts/probe_frozen.py into $dir)"; return; fi
  mkdir -p "$dir"
  [[ -s $dir/mpnet.md ]] || $PY scripts/probe_frozen.py --model mpnet --tasks mrpc rte --out "$dir/mpnet.md"
  [[ -s $dir/mpnet_sst2.md ]] || $PY scripts/probe_frozen.py --model mpnet --tasks sst2 \
    --max-train-samples "$SST2_TRAIN" --out "$dir/mpnet_sst2.md"
  [[ -s $dir/minilm_sst2.md ]] || $PY scripts/probe_frozen.py --model minilm --tasks sst2 \
    --max-train-samples "$SST2_TRAIN" --out "$dir/minilm_sst2.md"
}

frontier_phase() {  # SAFE's schedule on FRONTIER_TASK, seeds FRONTIER_SEEDS, each setting against the same seeds' LoRA runs
  local name overrides seed task=$FRONTIER_TASK
  while read -r name overrides; do
    if [[ -n $FRONTIER_SETTINGS && " $FRONTIER_SETTINGS " != *" $name "* ]]; then continue; fi
    for seed in $FRONTIER_SEEDS; do
      echo "== $(date -Is) SAFE frontier on $task, seed $seed: $name ($overrides)"
      # shellcheck disable=SC2086
      safe_alone "$task" "$seed" "$OUT/frontier_$task/$name/seed$seed" $overrides
      # every setting and seed finished so far beside LoRA and the defaults, ratios over paired seeds:
      # $OUT/frontier_<task>/summary.md
      beside_lora "$task" "$OUT/frontier_$task" "${TARGETS[@]}"
      keep_records
    done
  done <<'PLANEOF'
tf0.5-T0.5 --safe-override safe.t_f=0.5 --safe-override safe.threshold=0.5
tf0.5 --safe-override safe.t_f=0.5
tw0.1-tf0.5 --safe-override safe.t_w=0.1 --safe-override safe.t_f=0.5
drift-tf0.5 --safe-override safe.t_f=0.5 --safe-override safe.importance=drift
PLANEOF
}

budget_phase() {  # budget_mode's peak memory on each task of TASKS, seeds BUDGET_SEEDS, against the same seeds' LoRA runs
  local task seed
  for task in $TASKS; do
    for seed in $BUDGET_SEEDS; do
      echo "== $(date -Is) SAFE with budget_mode: mpnet $task seed $seed"
      safe_alone "$task" "$seed" "$OUT/budget_$task/seed$seed" --safe-override safe.budget_mode=true
      # every seed finished so far beside LoRA's, ratios over paired seeds, the issue's budget target:
      # $OUT/budget_<task>/summary.md
      beside_lora "$task" "$OUT/budget_$task" "${BUDGET_TARGETS[@]}"
      keep_records
    done
  done
}

learn_sweep() {  # bench_learn's recipe $2 (lora, full) on the tasks $4.. at seed $1, into $OUT/learn/$3, records kept
  local seed=$1 recipe=$2 out=$3
  shift 3
  echo "== $(date -Is) MPNet seed $seed: $recipe on $*"
  # length-grouped batches, as in every other phase: bench_learn's ungrouped ones pad RTE to 128 tokens, and an MPNet
  # LoRA step then took 16-18 s here (about 70 min a run) against 5-7 s on MRPC's grouped batches
  # shellcheck disable=SC2046
  $PY scripts/bench_learn.py "${DRY[@]}" --tasks "$@" --recipes "$recipe" --poolings mean --seeds "$seed" --regression-seeds \
    $(for task in "$@"; do task_caps "$task"; done) "${COMMON[@]}" --override trainer.group_by_length=true \
    --out "$OUT/learn/$out"
  keep_records
}

learn_phase() {  # does MPNet learn: LoRA on RTE, full fine-tuning on the three tasks, seed by seed (LEARN_SEEDS)
  # seed-major, so that a session that ends early has every (task, recipe) on seed 1 before any on seed 2; each
  # (seed, recipe) is one sweep dir of its own, so running seeds in separate sessions keeps their plans.
  local seed
  for seed in $LEARN_SEEDS; do
    learn_sweep "$seed" lora rte_lora rte
    learn_sweep "$seed" full mrpc_rte mrpc rte
    learn_sweep "$seed" full sst2 sst2
  done
}

for phase in $PLAN; do
  case $phase in
    seed:*) seed_phase "${phase#seed:}" ;;
    minilm | probes | frontier | budget | learn) "${phase}_phase"; keep_records ;;
    *) echo "bench_depth: unknown phase '$phase' in PLAN (seed:<N>, minilm, probes, frontier, budget, learn)" >&2; exit 2 ;;
  esac
done
echo "== $(date -Is) done"
