#!/usr/bin/env bash
# The training modes compared at an equal CPU budget: the small U-Net on SIRST-v1 (train split,
# validation taken from it), bilevel for EPOCHS epochs and every plain mode for PLAIN_EPOCHS
# (default 2.7 x EPOCHS: a bi-level epoch costs about 2.7 plain ones), two runs at a time on one
# thread each; then each best checkpoint tested on the test split. Usage:
#   [SEED=0] [MODES="bilevel full fixed naive"] [LR=5e-3] [EXTRA="--weight-ema 0.99"] [BILEVEL_EXTRA=...] \
#     bash benchmarks/training/train_modes.sh [DATASET] [RUNS_DIR] [EPOCHS] [PLAIN_EPOCHS]
# (LR: the detector's peak learning rate, 5e-3 by default as in the first comparisons; EXTRA: more
# `train` options, the same for every mode; BILEVEL_EXTRA: options for the bilevel run only; PY:
# the Python to run, .venv/bin/python by default.) A cheaper bi-level iteration changes the cost
# ratio: with BILEVEL_EXTRA="--val-batch-size 2 --hypergradient first-order --meta-every 8" a
# bi-level run of 80 epochs costs about as much as 108 plain ones (EPOCHS=80 PLAIN_EPOCHS=108;
# benchmarks/RESULTS.md section 3).
# From the repository root `python -m d2d_ext` imports the source folder: that needs the in-place
# build (`pip install --no-build-isolation -e .`); with a plain install, run it from another folder
# with PY set, e.g. PY="env PYTHONPATH=/path/to/copy /abs/.venv/bin/python" for a frozen copy of
# the package that rebuilding cannot touch mid-run.
# Each run's summed epoch seconds (its CPU budget) is printed with its test result and appended to
# RUNS_DIR/test_results.txt; benchmarks/training/train_summary.py averages those files over seeds.
set -euo pipefail
DATA=${1:-../shared/data/SIRST-v1}
RUNS=${2:-runs}
EPOCHS=${3:-40}
PLAIN=${4:-$((EPOCHS * 27 / 10))}
SEED=${SEED:-0}
LR=${LR:-5e-3}
read -r -a EXTRA <<< "${EXTRA:-}"
read -r -a BILEVEL_EXTRA <<< "${BILEVEL_EXTRA:-}"
read -r -a MODES <<< "${MODES:-bilevel full fixed naive}"
PY=${PY:-.venv/bin/python}
mkdir -p "$RUNS"

train() {  # mode: resumes an interrupted run, skips a finished one
  local mode=$1 epochs=$PLAIN resume="" own=()
  [ "$mode" = bilevel ] && epochs=$EPOCHS && own=(${BILEVEL_EXTRA[@]+"${BILEVEL_EXTRA[@]}"})
  [ -f "$RUNS/$mode/alpha.csv" ] && return 0
  [ -f "$RUNS/$mode/last.pt" ] && resume="--resume"
  $PY -m d2d_ext train --dataset "$DATA" --mode "$mode" --model unet --epochs "$epochs" --lr "$LR" \
    --warmup-epochs $((epochs / 5)) --theta-every $((epochs >= 20 ? epochs / 10 : 1)) --seed "$SEED" --out "$RUNS/$mode" \
    --threads 1 --quiet ${EXTRA[@]+"${EXTRA[@]}"} ${own[@]+"${own[@]}"} $resume > "$RUNS/$mode.out" 2>&1
}

for ((i = 0; i < ${#MODES[@]}; i += 2)); do  # two at a time
  train "${MODES[i]}" &
  if ((i + 1 < ${#MODES[@]})); then train "${MODES[i + 1]}" & fi
  wait
done
for mode in "${MODES[@]}"; do
  seconds=$($PY -c "import json,sys; print(round(sum(json.loads(l)['epoch_seconds'] for l in open(sys.argv[1]))))" "$RUNS/$mode/log.jsonl")
  echo "$mode seed $SEED ${seconds}s $($PY -m d2d_ext test --checkpoint "$RUNS/$mode/best.pt" --dataset "$DATA" --split test --json | tail -1)" \
    | tee -a "$RUNS/test_results.txt"
done
