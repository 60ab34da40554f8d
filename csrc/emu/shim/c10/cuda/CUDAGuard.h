// Emulated build only (csrc/emu/cuda_emu.h): stands in for c10's header of the same path. There
// is one emulated device, so the guard has nothing to switch.
#pragma once

#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
