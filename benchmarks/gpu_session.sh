#!/usr/bin/env bash
# The GPU checks and figures in one go on a machine with a GPU, from the repository root (it needs
# a python3 with a CUDA torch, and nvcc; no network): builds the extension in place for that GPU
# with that torch, runs the GPU tests while compute-sanitizer watches every kernel once
# (benchmarks/ops/gpu_sanitize.py under memcheck and racecheck), then the benchmark report (our ops
# against plain torch, both on the GPU, with the share of the binding bandwidth).
# Results in $OUT (default gpu_out/): build.log, gpu_tests.log, sanitize_memcheck.log,
# sanitize_racecheck.log, gpu_bench.md, gpu_bench.json, and tile_sides.md (the diffusion forward
# at each D2D_CUDA_TILE_SIDE).
#   bash benchmarks/gpu_session.sh
# STEPS="build tests sanitize bench tiles" (the default) picks the steps; where all would not fit
# in one sitting, run them over two (the in-place build stays): STEPS="build tests sanitize",
# then STEPS="bench tiles". Each step has a time limit (STEP_TIMEOUT seconds, default 300), so
# one that hangs cannot take the rest with it.
set -uo pipefail
OUT=${OUT:-gpu_out}
PY=${PY:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: report.py runs pytest from benchmarks/ops/
export PYTHONUNBUFFERED=1
if ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_session.sh: $PY's torch sees no CUDA device" >&2
  exit 2
fi
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
echo "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null);" \
     "torch $($PY -c 'import torch; print(torch.__version__)'); building for sm_${arch/./}"
STEPS=" ${STEPS:-build tests sanitize bench tiles} "
LIMIT=${STEP_TIMEOUT:-300}
TOOLS=${SANITIZE_TOOLS:-memcheck racecheck}  # compute-sanitizer tools; synccheck and initcheck also apply
step() { [[ $STEPS == *" $1 "* ]]; }
tests=0
bench=0
sanitize=0
if step build && ! TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} D2D_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
    $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"
  exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the in-place build
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if step sanitize; then  # in the background, beside the tests (neither is timed)
  if [[ -z $sanitizer ]]; then
    echo "gpu_session.sh: no compute-sanitizer on this machine" | tee "$OUT/sanitize_memcheck.log"
    sanitize=1
  else
    ( for tool in $TOOLS; do
        timeout "$LIMIT" "$sanitizer" --tool "$tool" --error-exitcode 3 $PY benchmarks/ops/gpu_sanitize.py \
          > "$OUT/sanitize_$tool.log" 2>&1
        echo "exit $?" >> "$OUT/sanitize_$tool.log"
      done ) &
    sanitize_pid=$!
  fi
fi
if step tests; then
  timeout "$LIMIT" $PY -m pytest -q -p no:cacheprovider python_tests/test_cuda.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
  tests=${PIPESTATUS[0]}
fi
if [[ -n ${sanitize_pid:-} ]]; then
  wait "$sanitize_pid"
  for tool in $TOOLS; do
    echo "== compute-sanitizer --tool $tool"
    tail -6 "$OUT/sanitize_$tool.log"
    grep -q "^exit 0$" "$OUT/sanitize_$tool.log" || sanitize=1
  done
fi
if step bench; then
  timeout "$LIMIT" $PY benchmarks/ops/report.py --out "$OUT/gpu_bench.md" --json "$OUT/gpu_bench.json" -k cuda || bench=1
fi
if step tiles; then  # which tile side suits this GPU best (the default takes the largest that fits)
  : > "$OUT/tile_sides.md"
  for side in 64 48 32 16; do
    echo "## D2D_CUDA_TILE_SIDE=$side" >> "$OUT/tile_sides.md"
    D2D_CUDA_TILE_SIDE=$side $PY benchmarks/ops/report.py -k "test_diffuse_forward and not backward and cuda" \
      | grep "^| diffuse" >> "$OUT/tile_sides.md" || bench=1
  done
  cat "$OUT/tile_sides.md"
fi
echo "gpu_session.sh: GPU tests exit $tests, sanitizer $sanitize, benchmarks exit $bench"
exit $((tests || sanitize || bench))
