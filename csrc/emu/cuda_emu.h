// The CUDA execution model on the CPU, for tests: the library's .cu files, compiled by the host
// C++ compiler after this header, run their kernels here on CPU tensors.
//
// What is emulated:
// - A block's threads are fibers (ucontext) on one OS thread, run until they reach a barrier, a
//   warp shuffle or their end. Fibers rather than OS threads because the order in which threads
//   run between two barriers is then a choice of the emulator: forward, reverse or a seeded
//   random order (reshuffled after every barrier), and blocks in forward, reverse or random order
//   too. A kernel whose result depends on that order (a missing __syncthreads, a block reading
//   what another writes) gives different bits under different schedules, reproducibly; OS
//   threads would show a race only when the timing happened to expose it.
// - __syncthreads: a barrier of the block's live threads (threads that returned count as
//   arrived, as on the GPU). __shfl_down_sync: the warp's 32 lanes exchange values (all must be
//   live and take part: the kernels use full masks). atomicAdd is atomic.
// - Dynamic shared memory: one buffer per block, filled with 0xFF bytes (NaN in any float type)
//   so that reading what no thread wrote shows up. Static __shared__ arrays: one per OS thread
//   (static thread_local), so one per block, since a block runs to its end before the next starts.
// - threadIdx/blockIdx/blockDim/gridDim are the running fiber's.
// - The runtime calls the launchers make, answered with an H100's limits: 227 KiB of opt-in
//   shared memory per block (settable, so that smaller tiles get tested), 48 KiB without the
//   opt-in (cudaFuncSetAttribute), 132 multiprocessors (settable), 1024 threads per block and the
//   grid limits (y and z: D2D_GRID_YZ_LIMIT, lowered in the test build). A launch that breaks a
//   limit raises, naming it.
// What it cannot show: the memory model beyond barriers (no reordering or caching between
// threads), timing, occupancy, shared-memory bank conflicts, the speed of the kernels, and the
// device's own math library (the math headers take their host branches here).
#pragma once

#ifndef D2D_CUDA_EMULATION
#error "cuda_emu.h is for the emulated build (-DD2D_CUDA_EMULATION)"
#endif

#include <ucontext.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------
// CUDA's vocabulary
// ---------------------------------------------------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static thread_local

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

typedef struct d2d_emu_stream* cudaStream_t;

// The rounded arithmetic intrinsics: one rounding per operation, and never merged with the
// operation around them into a fused multiply-add. The emulated build lets the host compiler
// contract everything else (as nvcc's default --fmad=true does on a GPU); the empty asm makes each
// result opaque to it, so these stay one rounding each, as on the device.
template <typename T>
inline T d2d_emu_rounded(T r) {
  asm volatile("" : "+m"(r));
  return r;
}
inline float __fmul_rn(float a, float b) { return d2d_emu_rounded(a * b); }
inline double __dmul_rn(double a, double b) { return d2d_emu_rounded(a * b); }
inline float __fadd_rn(float a, float b) { return d2d_emu_rounded(a + b); }
inline double __dadd_rn(double a, double b) { return d2d_emu_rounded(a + b); }
inline float __fsub_rn(float a, float b) { return d2d_emu_rounded(a - b); }
inline double __dsub_rn(double a, double b) { return d2d_emu_rounded(a - b); }
typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};
enum cudaMemcpyKind { cudaMemcpyDeviceToDevice = 3 };

inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "invalid argument (emulated)";
}

// Device functions of CUDA's math API that the kernels call unqualified.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

namespace d2d_emu {
namespace {

// ---------------------------------------------------------------------------------------------
// Limits and settings
// ---------------------------------------------------------------------------------------------

enum Schedule : int64_t { kForward = 0, kReverse = 1, kRandom = 2 };

struct Settings {
  int64_t smem_optin = 232448;  // an H100's cudaDevAttrMaxSharedMemoryPerBlockOptin (227 KiB)
  int64_t sms = 132;
  int64_t schedule = kForward;
  int64_t seed = 0;
};
constexpr int64_t kSmemDefault = 48 * 1024;  // dynamic shared memory without the opt-in
constexpr int64_t kMaxThreads = 1024;
constexpr int64_t kGridXLimit = 2147483647;
constexpr int kWarp = 32;
constexpr size_t kStackBytes = 64 * 1024;

Settings& settings() {
  static Settings s;
  return s;
}

// Counters the tests read: launches, blocks, threads run.
std::atomic<int64_t> g_launches{0}, g_blocks{0}, g_threads{0};

// Largest dynamic shared memory each kernel was allowed (cudaFuncSetAttribute).
std::vector<std::pair<const void*, int64_t>>& smem_attributes() {
  static std::vector<std::pair<const void*, int64_t>> a;
  return a;
}

int64_t smem_allowed(const void* kernel) {
  for (const auto& [k, v] : smem_attributes()) {
    if (k == kernel) return std::max(v, kSmemDefault);
  }
  return kSmemDefault;
}

// ---------------------------------------------------------------------------------------------
// Fibers and the block scheduler
// ---------------------------------------------------------------------------------------------

enum class State { kReady, kAtBarrier, kAtShuffle, kDone };

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  State state = State::kReady;
  uint3 thread_idx{0, 0, 0};
  int linear = 0;
  int64_t shuffles = 0;  // shuffles this thread has taken part in (picks the slot buffer)
};

struct Warp {
  int live = 0, arrived = 0, size = 0;
  alignas(8) unsigned char slot[2][kWarp][8];
};

struct BlockRun {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<int> order;
  ucontext_t scheduler;
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  unsigned char* dynamic_smem = nullptr;
  int live = 0, at_barrier = 0;
  Fiber* current = nullptr;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  const char* kernel_name = "";
  std::string error;
};

thread_local BlockRun* t_block = nullptr;

// The OS thread's block: its fibers and their stacks are made once and reused by every launch.
BlockRun& block_run() {
  thread_local BlockRun b;
  return b;
}

void yield_to_scheduler() {
  BlockRun* b = t_block;
  swapcontext(&b->current->ctx, &b->scheduler);
}

void fiber_entry() {
  BlockRun* b = t_block;
  b->body(b->body_arg);
  b->current->state = State::kDone;
  swapcontext(&b->current->ctx, &b->scheduler);
}

void release_barrier(BlockRun& b) {
  if (b.at_barrier > 0 && b.at_barrier == b.live) {
    for (Fiber& f : b.fibers) {
      if (f.state == State::kAtBarrier) f.state = State::kReady;
    }
    b.at_barrier = 0;
  }
}

void release_warp(BlockRun& b, int w) {
  Warp& warp = b.warps[w];
  if (warp.arrived == 0 || warp.arrived < warp.live) return;
  if (warp.live < warp.size || warp.size < kWarp) {
    b.error = "__shfl_down_sync with a full mask in a warp with " + std::to_string(warp.live) +
              " live lanes of " + std::to_string(kWarp);
  }
  for (int i = 0; i < warp.size; ++i) {
    Fiber& f = b.fibers[w * kWarp + i];
    if (f.state == State::kAtShuffle) f.state = State::kReady;
  }
  warp.arrived = 0;
}

void fill_order(BlockRun& b, std::mt19937_64& rng) {
  const int n = static_cast<int>(b.fibers.size());
  b.order.resize(n);
  std::iota(b.order.begin(), b.order.end(), 0);
  if (settings().schedule == kReverse) std::reverse(b.order.begin(), b.order.end());
  if (settings().schedule == kRandom) std::shuffle(b.order.begin(), b.order.end(), rng);
}

// Runs every thread of block `b` to its end under the configured schedule.
void run_block(BlockRun& b, uint64_t block_seed) {
  std::mt19937_64 rng(block_seed);
  const int n = static_cast<int>(b.fibers.size());
  b.live = n;
  b.at_barrier = 0;
  for (Warp& w : b.warps) w.live = w.arrived = 0;
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.state = State::kReady;
    f.shuffles = 0;
    f.linear = i;
    f.thread_idx = uint3{i % b.block_dim.x, (i / b.block_dim.x) % b.block_dim.y,
                         i / (b.block_dim.x * b.block_dim.y)};
    b.warps[i / kWarp].live++;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  t_block = &b;
  while (b.live > 0) {
    fill_order(b, rng);
    bool progressed = false;
    for (int id : b.order) {
      Fiber& f = b.fibers[id];
      if (f.state != State::kReady) continue;
      progressed = true;
      b.current = &f;
      swapcontext(&b.scheduler, &f.ctx);
      b.current = nullptr;
      const int w = id / kWarp;
      if (f.state == State::kDone) {
        b.live--;
        b.warps[w].live--;
        release_warp(b, w);
        release_barrier(b);
      } else if (f.state == State::kAtBarrier) {
        b.at_barrier++;
        release_barrier(b);
      } else if (f.state == State::kAtShuffle) {
        b.warps[w].arrived++;
        release_warp(b, w);
      }
      if (!b.error.empty()) {
        t_block = nullptr;
        TORCH_CHECK(false, "emulated CUDA kernel ", b.kernel_name, ": ", b.error);
      }
    }
    if (!progressed) {
      t_block = nullptr;
      TORCH_CHECK(false, "emulated CUDA kernel ", b.kernel_name,
                  ": deadlock (threads wait at a __syncthreads that others never reach, or at a "
                  "warp shuffle)");
    }
  }
  t_block = nullptr;
}

// ---------------------------------------------------------------------------------------------
// Launch
// ---------------------------------------------------------------------------------------------

template <typename Tuple, typename... KArgs>
struct Call {
  void (*kernel)(KArgs...);
  Tuple args;
  static void run(void* self) {
    auto* c = static_cast<Call*>(self);
    std::apply(c->kernel, c->args);
  }
};

template <typename... KArgs, typename... Args>
void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, int64_t smem,
            cudaStream_t, Args&&... args) {
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  TORCH_CHECK(threads >= 1 && threads <= kMaxThreads, "emulated CUDA launch of ", name, ": ",
              threads, " threads per block (1 to ", kMaxThreads, ")");
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1, "emulated CUDA launch of ", name,
              ": an empty grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
  TORCH_CHECK(grid.x <= kGridXLimit && grid.y <= D2D_GRID_YZ_LIMIT && grid.z <= D2D_GRID_YZ_LIMIT,
              "emulated CUDA launch of ", name, ": grid (", grid.x, ", ", grid.y, ", ", grid.z,
              ") beyond the limits (", kGridXLimit, ", ", D2D_GRID_YZ_LIMIT, ", ",
              D2D_GRID_YZ_LIMIT, ")");
  const int64_t allowed = smem_allowed(reinterpret_cast<const void*>(kernel));
  TORCH_CHECK(smem >= 0 && smem <= allowed, "emulated CUDA launch of ", name, ": ", smem,
              " bytes of dynamic shared memory, more than the ", allowed,
              " allowed (cudaFuncSetAttribute raises it up to the device's opt-in limit)");
  using Tuple = std::tuple<KArgs...>;
  Call<Tuple, KArgs...> call{kernel, Tuple(static_cast<KArgs>(std::forward<Args>(args))...)};

  BlockRun& b = block_run();
  const int n = static_cast<int>(threads);
  if (static_cast<int>(b.fibers.size()) != n) {
    b.fibers.clear();
    b.fibers.resize(n);
    for (Fiber& f : b.fibers) f.stack.reset(new char[kStackBytes]);
    b.warps.assign((n + kWarp - 1) / kWarp, Warp{});
    for (int w = 0; w < static_cast<int>(b.warps.size()); ++w) {
      b.warps[w].size = std::min(kWarp, n - w * kWarp);
    }
  }
  std::vector<unsigned char> smem_buf(static_cast<size_t>(smem) + 16);
  b.block_dim = block;
  b.grid_dim = grid;
  b.body = &Call<Tuple, KArgs...>::run;
  b.body_arg = &call;
  b.kernel_name = name;
  b.error.clear();

  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  std::vector<int64_t> order(blocks);
  std::iota(order.begin(), order.end(), 0);
  const Settings& s = settings();
  std::mt19937_64 rng(static_cast<uint64_t>(s.seed) * 0x9E3779B97F4A7C15ull + g_launches.load());
  if (s.schedule == kReverse) std::reverse(order.begin(), order.end());
  if (s.schedule == kRandom) std::shuffle(order.begin(), order.end(), rng);
  for (int64_t id : order) {
    b.block_idx = uint3{static_cast<unsigned>(id % grid.x),
                        static_cast<unsigned>((id / grid.x) % grid.y),
                        static_cast<unsigned>(id / (int64_t(grid.x) * grid.y))};
    std::fill(smem_buf.begin(), smem_buf.end(), 0xFF);
    b.dynamic_smem = smem_buf.data() + (16 - reinterpret_cast<uintptr_t>(smem_buf.data()) % 16) % 16;
    run_block(b, rng());
    g_blocks++;
    g_threads += n;
  }
  g_launches++;
}

// ---------------------------------------------------------------------------------------------
// Device-side intrinsics
// ---------------------------------------------------------------------------------------------

BlockRun& block_of_caller() {
  TORCH_CHECK(t_block != nullptr && t_block->current != nullptr,
              "a CUDA device function was called outside an emulated kernel");
  return *t_block;
}

void syncthreads() {
  BlockRun& b = block_of_caller();
  b.current->state = State::kAtBarrier;
  yield_to_scheduler();
}

template <typename T>
T shfl_down_sync(unsigned mask, T v, unsigned delta) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a word of 8 bytes at most");
  BlockRun& b = block_of_caller();
  // An error raised here would unwind through the fiber's stack: the scheduler raises it instead.
  if (mask != 0xffffffffu) b.error = "__shfl_down_sync with a partial mask is not emulated";
  Fiber& f = *b.current;
  const int w = f.linear / kWarp, lane = f.linear % kWarp;
  Warp& warp = b.warps[w];
  const int buf = static_cast<int>(f.shuffles++ & 1);
  std::memcpy(warp.slot[buf][lane], &v, sizeof(T));
  f.state = State::kAtShuffle;
  yield_to_scheduler();
  const unsigned src = lane + delta;
  if (src >= static_cast<unsigned>(warp.size)) return v;  // out of the warp: the lane's own value
  T out;
  std::memcpy(&out, warp.slot[buf][src], sizeof(T));
  return out;
}

template <typename T>
T atomic_add(T* address, T v) {
  return std::atomic_ref<T>(*address).fetch_add(v);
}

}  // namespace
}  // namespace d2d_emu

#define threadIdx (::d2d_emu::t_block->current->thread_idx)
#define blockIdx (::d2d_emu::t_block->block_idx)
#define blockDim (::d2d_emu::t_block->block_dim)
#define gridDim (::d2d_emu::t_block->grid_dim)
#define __syncthreads() ::d2d_emu::syncthreads()
#define __shfl_down_sync(mask, v, delta) ::d2d_emu::shfl_down_sync(mask, v, delta)
#define atomicAdd(address, v) ::d2d_emu::atomic_add(address, v)

#define D2D_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::d2d_emu::launch(#kernel, kernel, dim3(grid), dim3(block), int64_t(smem), stream, __VA_ARGS__)
#define D2D_DYNAMIC_SMEM(name) unsigned char* name = ::d2d_emu::t_block->dynamic_smem

// ---------------------------------------------------------------------------------------------
// Runtime calls
// ---------------------------------------------------------------------------------------------

inline cudaError_t cudaGetDevice(int* dev) {
  *dev = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int dev) {
  if (dev != 0) return cudaErrorInvalidValue;
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = int(d2d_emu::settings().smem_optin); break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = int(d2d_emu::kSmemDefault); break;
    case cudaDevAttrMultiProcessorCount: *value = int(d2d_emu::settings().sms); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

template <typename... KArgs>
cudaError_t cudaFuncSetAttribute(void (*kernel)(KArgs...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      value > d2d_emu::settings().smem_optin) {
    return cudaErrorInvalidValue;
  }
  auto& attrs = d2d_emu::smem_attributes();
  const void* key = reinterpret_cast<const void*>(kernel);
  for (auto& [k, v] : attrs) {
    if (k == key) {
      v = value;
      return cudaSuccess;
    }
  }
  attrs.emplace_back(key, value);
  return cudaSuccess;
}

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                                   cudaStream_t) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

// The kernels register on the emulator's own namespace and on CPU tensors: the .cu files' check
// that a tensor is on a CUDA device asks whether it is on the CPU instead. (Every header that
// mentions is_cuda was included above, before this rename.)
#define is_cuda is_cpu
#ifndef D2D_EMU_NAMESPACE
#define D2D_EMU_NAMESPACE d2d_emu
#endif
#undef TORCH_LIBRARY_IMPL
#define D2D_EMU_LIBRARY_IMPL(ns, m) _TORCH_LIBRARY_IMPL(ns, CPU, m, C10_UID)
#define TORCH_LIBRARY_IMPL(ns, key, m) D2D_EMU_LIBRARY_IMPL(D2D_EMU_NAMESPACE, m)
