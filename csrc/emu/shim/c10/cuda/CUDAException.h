// Emulated build only (csrc/emu/cuda_emu.h): stands in for c10's header of the same path.
#pragma once

#include <c10/util/Exception.h>

#define C10_CUDA_CHECK(expr)                                                                  \
  do {                                                                                        \
    const cudaError_t d2d_emu_err = (expr);                                                   \
    TORCH_CHECK(d2d_emu_err == cudaSuccess, "emulated CUDA error: ", cudaGetErrorString(d2d_emu_err), \
                " in ", #expr);                                                               \
  } while (0)
// Launch errors raise inside the emulated launch itself.
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
