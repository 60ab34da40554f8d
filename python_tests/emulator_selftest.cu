// Kernels that test the CUDA emulator itself (csrc/emu/cuda_emu.h), compiled only under it
// (python_tests/cuda_emulator.py adds this file to the emulated build): atomics, a barrier with
// static shared memory, warp shuffles, a race the schedules expose, and a deadlock.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "cuda/launch.h"

namespace d2d_emu_selftest {
namespace {

// Every thread adds 1 to a counter and 0.5 to a sum.
__global__ void count_kernel(int64_t* counter, double* sum) {
  atomicAdd(counter, int64_t(1));
  atomicAdd(sum, 0.5);
}

// out = each block's row reversed, through static shared memory; `racy` drops the barrier, so a
// thread may read a slot before the thread that owns it has written it.
__global__ void reverse_kernel(const float* in, float* out, bool racy) {
  __shared__ float buf[1024];
  const int i = threadIdx.x, n = blockDim.x;
  buf[i] = in[blockIdx.x * n + i];
  if (!racy) __syncthreads();
  out[blockIdx.x * n + i] = buf[n - 1 - i];
}

// out[w] = the sum over warp w's 32 values, by shuffles down, written by its lane 0.
__global__ void warp_sum_kernel(const double* in, double* out) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  double v = in[j];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) out[j / 32] = v;
}

// Half of warp 0 waits at a shuffle for lanes that wait at a barrier: no thread can go on.
__global__ void deadlock_kernel(double* out) {
  double v = 1.0;
  if (threadIdx.x < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[threadIdx.x] = v;
}

at::Tensor count(int64_t blocks, int64_t threads) {
  at::Tensor counter = at::zeros({1}, at::kLong);
  at::Tensor sum = at::zeros({1}, at::kDouble);
  D2D_LAUNCH(count_kernel, dim3(unsigned(blocks)), dim3(unsigned(threads)), 0, nullptr,
             counter.data_ptr<int64_t>(), sum.data_ptr<double>());
  at::Tensor out = at::empty({2}, at::kDouble);
  out.data_ptr<double>()[0] = static_cast<double>(counter.data_ptr<int64_t>()[0]);
  out.data_ptr<double>()[1] = sum.data_ptr<double>()[0];
  return out;
}

at::Tensor reverse(const at::Tensor& x, bool racy) {
  at::Tensor out = at::empty(x.sizes(), x.options());
  D2D_LAUNCH(reverse_kernel, dim3(unsigned(x.size(0))), dim3(unsigned(x.size(1))), 0, nullptr,
             x.data_ptr<float>(), out.data_ptr<float>(), racy);
  return out;
}

at::Tensor warp_sums(const at::Tensor& x) {
  at::Tensor out = at::empty({x.numel() / 32}, x.options());
  D2D_LAUNCH(warp_sum_kernel, dim3(unsigned(x.size(0))), dim3(unsigned(x.size(1))), 0, nullptr,
             x.data_ptr<double>(), out.data_ptr<double>());
  return out;
}

at::Tensor deadlock() {
  at::Tensor out = at::zeros({64}, at::kDouble);
  D2D_LAUNCH(deadlock_kernel, dim3(1), dim3(64), 0, nullptr, out.data_ptr<double>());
  return out;
}

}  // namespace
}  // namespace d2d_emu_selftest

#define D2D_EMU_SELFTEST_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
D2D_EMU_SELFTEST_FRAGMENT(D2D_EMU_NAMESPACE, m) {
  m.def("selftest_count(int blocks, int threads) -> Tensor", &d2d_emu_selftest::count);
  m.def("selftest_reverse(Tensor x, bool racy) -> Tensor", &d2d_emu_selftest::reverse);
  m.def("selftest_warp_sums(Tensor x) -> Tensor", &d2d_emu_selftest::warp_sums);
  m.def("selftest_deadlock() -> Tensor", &d2d_emu_selftest::deadlock);
}
