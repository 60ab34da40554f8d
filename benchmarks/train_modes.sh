#!/usr/bin/env bash
# Issue 4's CPU comparison at an equal CPU budget: the small U-Net on SIRST-v1 (train split,
# validation taken from it), bilevel for EPOCHS epochs and every plain mode for PLAIN_EPOCHS
# (default 2.7 x EPOCHS: a bi-level epoch costs about 2.7 plain ones), two runs at a time on one
# thread each; then each best checkpoint tested on the test split. Usage:
#   bash benchmarks/train_modes.sh [DATASET] [RUNS_DIR] [EPOCHS] [PLAIN_EPOCHS]
# Each run's summed epoch seconds (its CPU budget) is printed with its test result.
set -euo pipefail
DATA=${1:-../shared/data/SIRST-v1}
RUNS=${2:-runs}
EPOCHS=${3:-40}
PLAIN=${4:-$((EPOCHS * 27 / 10))}
PY=${PY:-.venv/bin/python}
mkdir -p "$RUNS"

train() {  # mode epochs: resumes an interrupted run, skips a finished one
  local mode=$1 epochs=$2 resume=""
  [ -f "$RUNS/$mode/alpha.csv" ] && return 0
  [ -f "$RUNS/$mode/last.pt" ] && resume="--resume"
  $PY -m d2d_ext train --dataset "$DATA" --mode "$mode" --model unet --epochs "$epochs" --lr 5e-3 \
    --warmup-epochs $((epochs / 5)) --theta-every $((epochs / 10)) --out "$RUNS/$mode" --threads 1 \
    --quiet $resume > "$RUNS/$mode.out" 2>&1
}

train bilevel "$EPOCHS" & train full "$PLAIN" & wait
train fixed "$PLAIN" & train naive "$PLAIN" & wait
for mode in bilevel full fixed naive; do
  seconds=$($PY -c "import json,sys; print(round(sum(json.loads(l)['epoch_seconds'] for l in open(sys.argv[1]))))" "$RUNS/$mode/log.jsonl")
  echo "$mode ${seconds}s $($PY -m d2d_ext test --checkpoint "$RUNS/$mode/best.pt" --dataset "$DATA" --split test --json | tail -1)" \
    | tee -a "$RUNS/test_results.txt"
done
