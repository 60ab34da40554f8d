// Checkpointing plan of the diffusion backward (host code, shared by the CPU and CUDA paths).
//
// The backward needs every intermediate state u^k in reverse order. Keeping all of them costs
// steps * state bytes; instead the forward is re-run once storing a checkpoint every
// `segment_len` steps, and each segment is recomputed from its checkpoint just before its adjoint
// steps. Memory: (num_segments + segment_len) states, about 2 sqrt(steps); time: at most one extra
// forward. When all states fit in `budget_bytes`, a single segment skips the checkpoint pass.
#pragma once

#include <cmath>
#include <cstdint>

namespace d2d {

struct SegmentPlan {
  int64_t segment_len;
  int64_t num_segments;
};

// Per-thread budget of the CPU path for keeping every state of a sample. States the backward
// writes and then reads back should stay in the thread's share of the last-level cache: beyond
// that they stream from memory, and one extra forward (the checkpoint pass, compute-bound) costs
// less than that traffic (a 256x256 sample's 64 states, 17 MB, run slower kept than recomputed
// in segments of 8).
constexpr int64_t kCpuStateBudgetBytes = int64_t(8) << 20;
// Budget of the CUDA path for keeping every state of the whole batch (the CUDA emulator lowers it,
// so that small problems take the checkpointed path).
#ifndef D2D_CUDA_STATE_BUDGET_BYTES
#define D2D_CUDA_STATE_BUDGET_BYTES (int64_t(256) << 20)
#endif
constexpr int64_t kCudaStateBudgetBytes = D2D_CUDA_STATE_BUDGET_BYTES;

inline SegmentPlan plan_segments(int64_t steps, int64_t bytes_per_state, int64_t budget_bytes) {
  if (steps <= 1 || steps <= budget_bytes / (bytes_per_state > 0 ? bytes_per_state : 1)) {
    return {steps > 1 ? steps : 1, 1};
  }
  int64_t len = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(steps))));
  if (len < 2) len = 2;
  return {len, (steps + len - 1) / len};
}

}  // namespace d2d
