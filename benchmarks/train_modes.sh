#!/usr/bin/env bash
# Issue 4's CPU comparison: the small U-Net on SIRST-v1 (train split, validation taken from it),
# every mode with the same schedule, then each best checkpoint (lowest validation loss against
# pseudo-labels) tested on the test split. Usage:
#   bash benchmarks/train_modes.sh [DATASET] [RUNS_DIR] [EPOCHS]
set -euo pipefail
DATA=${1:-../shared/data/SIRST-v1}
RUNS=${2:-runs}
EPOCHS=${3:-40}
PY=${PY:-.venv/bin/python}
for mode in bilevel fixed full naive; do
  if [ ! -f "$RUNS/$mode/alpha.csv" ]; then
    resume=""; [ -f "$RUNS/$mode/last.pt" ] && resume="--resume"
    $PY -m d2d_ext train --dataset "$DATA" --mode $mode --model unet --epochs "$EPOCHS" --lr 5e-3 \
      --warmup-epochs $((EPOCHS / 5)) --theta-every $((EPOCHS / 10)) --out "$RUNS/$mode" --threads 2 --quiet $resume | tail -1
  fi
  echo "$mode $($PY -m d2d_ext test --checkpoint "$RUNS/$mode/best.pt" --dataset "$DATA" --split test --json | tail -1)" \
    | tee -a "$RUNS/test_results.txt"
done
