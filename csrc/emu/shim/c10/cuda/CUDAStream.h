// Emulated build only (csrc/emu/cuda_emu.h): stands in for c10's header of the same path. Kernels
// run when launched, in launch order, so there is one stream and it is always in sync.
#pragma once

namespace c10::cuda {
inline cudaStream_t getCurrentCUDAStream() { return nullptr; }
}  // namespace c10::cuda
