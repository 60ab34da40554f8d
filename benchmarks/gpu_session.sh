#!/usr/bin/env bash
# Issue 2's GPU figures in one call on a lent GPU machine (the device tool's `run`, from the
# repository root; that machine has its own python3 with torch, nvcc and no network): builds the
# extension in place for its GPU with its torch, runs the GPU tests, then the benchmark report
# (our ops against plain torch, both on the GPU, with the share of the binding bandwidth).
# Results in $OUT (default gpu_out/): build.log, gpu_tests.log, gpu_bench.md, gpu_bench.json, and
# tile_sides.md (the diffusion forward at each D2D_CUDA_TILE_SIDE).
#   bash benchmarks/gpu_session.sh
# STEPS="build tests bench tiles" (the default) picks the steps: a device call lasts at most 10
# minutes, so where all four would not fit, run them over two calls (the in-place build stays on a
# warm machine): STEPS="build tests", then STEPS="bench tiles".
set -uo pipefail
OUT=${OUT:-gpu_out}
PY=${PY:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: report.py runs pytest from benchmarks/
export PYTHONUNBUFFERED=1
if ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_session.sh: $PY's torch sees no CUDA device" >&2
  exit 2
fi
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
echo "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null);" \
     "torch $($PY -c 'import torch; print(torch.__version__)'); building for sm_${arch/./}"
STEPS=" ${STEPS:-build tests bench tiles} "
step() { [[ $STEPS == *" $1 "* ]]; }
tests=0
bench=0
if step build && ! TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} D2D_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
    $PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"
  exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the in-place build
if step tests; then
  $PY -m pytest -q -p no:cacheprovider python_tests/test_cuda.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
  tests=${PIPESTATUS[0]}
fi
if step bench; then
  $PY benchmarks/report.py --out "$OUT/gpu_bench.md" --json "$OUT/gpu_bench.json" -k cuda || bench=1
fi
if step tiles; then  # which tile side suits this GPU best (the default takes the largest that fits)
  : > "$OUT/tile_sides.md"
  for side in 64 48 32 16; do
    echo "## D2D_CUDA_TILE_SIDE=$side" >> "$OUT/tile_sides.md"
    D2D_CUDA_TILE_SIDE=$side $PY benchmarks/report.py -k "test_diffuse_forward and not backward and cuda" \
      | grep "^| diffuse" >> "$OUT/tile_sides.md" || bench=1
  done
  cat "$OUT/tile_sides.md"
fi
echo "gpu_session.sh: GPU tests exit $tests, benchmarks exit $bench"
exit $((tests || bench))
