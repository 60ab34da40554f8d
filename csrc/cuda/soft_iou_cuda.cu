// CUDA kernels of d2d::soft_iou_forward and d2d::soft_iou_backward.
//
// Inputs are viewed as (N, M). The forward's reduction kernel accumulates the three per-sample
// sums in double, each block writing its partial sums (no atomics: the result does not depend on
// the order blocks finish, so the op is deterministic), and a second kernel adds a sample's
// partials in a fixed order; nothing the size of the input is written. The backward is one
// elementwise pass over the logits that recomputes p (with from_logits false the input is p
// itself). The per-element math comes from kernels/soft_iou_math.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "../checks.h"
#include "../kernels/soft_iou_math.h"
#include "launch.h"

namespace d2d {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridY = D2D_GRID_YZ_LIMIT;

__device__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// out[n][blockIdx.x] = (sum p*t, sum p, sum t) over this block's share of sample
// n = n0 + blockIdx.y; out is (N, gridDim.x, 3).
template <typename T, bool FromLogits>
__global__ void __launch_bounds__(kThreads)
    soft_iou_partial_kernel(const T* __restrict__ x, const T* __restrict__ t, int64_t M, int64_t n0,
                            double* __restrict__ out) {
  const int64_t n = n0 + blockIdx.y;
  const T* xs = x + n * M;
  const T* ts = t + n * M;
  double v[3] = {0, 0, 0};
  for (int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x; j < M;
       j += int64_t(gridDim.x) * kThreads) {
    const double p = prediction<FromLogits>(xs[j]);
    const double tv = ts[j];
    v[0] += p * tv;
    v[1] += p;
    v[2] += tv;
  }
  __shared__ double partial[3][kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int c = 0; c < 3; ++c) {
    const double w = warp_sum(v[c]);
    if (lane == 0) partial[c][warp] = w;
  }
  __syncthreads();
  if (warp == 0) {
    for (int c = 0; c < 3; ++c) {
      double w = lane < kThreads / 32 ? partial[c][lane] : 0.0;
      w = warp_sum(w);
      if (lane == 0) out[(n * gridDim.x + blockIdx.x) * 3 + c] = w;
    }
  }
}

// sums[n] = the sum of sample n's `blocks` partials, in block order; loss[n] from them.
template <typename T>
__global__ void soft_iou_loss_kernel(const double* __restrict__ partial, int blocks, int64_t N,
                                     double smooth, double* __restrict__ sums, T* __restrict__ loss) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  double s[3] = {0, 0, 0};
  for (int b = 0; b < blocks; ++b) {
    for (int c = 0; c < 3; ++c) s[c] += partial[(n * blocks + b) * 3 + c];
  }
  for (int c = 0; c < 3; ++c) sums[3 * n + c] = s[c];
  loss[n] = T(soft_iou_loss(s[0], s[1], s[2], smooth));
}

// d[n] = (dL/dI, dL/dSp) scaled by the upstream gradient go[n].
template <typename T>
__global__ void soft_iou_dsums_kernel(const double* __restrict__ sums, const T* __restrict__ go,
                                      int64_t N, double smooth, T* __restrict__ d) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n < N) {
    double di, ds;
    soft_iou_dsums(sums[3 * n], sums[3 * n + 1], sums[3 * n + 2], smooth, double(go[n]), &di, &ds);
    d[2 * n] = T(di);
    d[2 * n + 1] = T(ds);
  }
}

template <typename T, bool FromLogits>
__global__ void __launch_bounds__(kThreads)
    soft_iou_grad_kernel(const T* __restrict__ x, const T* __restrict__ t,
                         const T* __restrict__ d, int64_t M, int64_t total, T* __restrict__ gx,
                         T* __restrict__ gt) {
  for (int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x; j < total;
       j += int64_t(gridDim.x) * kThreads) {
    const int64_t n = j / M;
    T gl, gtv;
    soft_iou_grad_px<FromLogits>(x[j], t[j], d[2 * n], d[2 * n + 1], &gl, &gtv);
    if (gx != nullptr) gx[j] = gl;
    if (gt != nullptr) gt[j] = gtv;
  }
}

int num_blocks(int64_t work) {
  return static_cast<int>(std::clamp<int64_t>((work + kThreads * 4 - 1) / (kThreads * 4), 1, 4096));
}

// Blocks per sample of the forward's reduction: enough for about 16 blocks of 256 threads per
// multiprocessor over the whole batch (a full GPU; the grid-stride loop covers the rest), none
// with fewer than about 1024 elements. So the partial sums take N * blocks * 24 bytes, at most
// about N * 24 + 16 * SMs * 24.
int blocks_per_sample(int64_t N, int64_t M) {
  if (M == 0) return 1;  // one zero partial per sample
  int dev = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int64_t fill = (16 * int64_t(sms) + N - 1) / N;
  return static_cast<int>(std::min<int64_t>(num_blocks(M), fill));
}

std::tuple<at::Tensor, at::Tensor> soft_iou_forward_cuda(const at::Tensor& logits_in,
                                                         const at::Tensor& target_in,
                                                         double smooth, bool from_logits) {
  check_soft_iou_args(logits_in, target_in, smooth);
  TORCH_CHECK(logits_in.is_cuda(), "d2d.soft_iou: the CUDA kernel got a tensor on ",
              logits_in.device());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const int64_t N = logits.size(0), M = sample_numel(logits);
  at::Tensor loss = at::empty({N}, logits.options());
  at::Tensor sums = at::empty({N, 3}, logits.options().dtype(at::kDouble));
  if (N == 0) return {loss, sums};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int bx = blocks_per_sample(N, M);
  at::Tensor partial = M > 0 ? at::empty({N, bx, 3}, sums.options()) : at::zeros({N, bx, 3}, sums.options());
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "d2d_soft_iou_forward_cuda", [&] {
    const auto partial_kernel = from_logits ? soft_iou_partial_kernel<scalar_t, true>
                                            : soft_iou_partial_kernel<scalar_t, false>;
    if (M > 0) {
      for (int64_t n0 = 0; n0 < N; n0 += kMaxGridY) {
        const dim3 grid(bx, static_cast<unsigned>(std::min(kMaxGridY, N - n0)));
        D2D_LAUNCH(partial_kernel, grid, kThreads, 0, stream, logits.data_ptr<scalar_t>(),
                   target.data_ptr<scalar_t>(), M, n0, partial.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    D2D_LAUNCH(soft_iou_loss_kernel<scalar_t>, (N + 255) / 256, 256, 0, stream,
               partial.data_ptr<double>(), bx, N, smooth, sums.data_ptr<double>(),
               loss.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, sums};
}

std::tuple<at::Tensor, at::Tensor> soft_iou_backward_cuda(const at::Tensor& grad_in,
                                                           const at::Tensor& logits_in,
                                                           const at::Tensor& target_in,
                                                           const at::Tensor& sums_in,
                                                           double smooth,
                                                           std::array<bool, 2> output_mask,
                                                           bool from_logits) {
  check_soft_iou_backward_args(grad_in, logits_in, target_in, sums_in, smooth);
  TORCH_CHECK(logits_in.is_cuda(), "d2d.soft_iou_backward: the CUDA kernel got a tensor on ",
              logits_in.device());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor sums = sums_in.contiguous();
  const int64_t N = logits.size(0), M = sample_numel(logits);
  const bool need_x = output_mask[0], need_t = output_mask[1];
  at::Tensor grad_logits = at::empty(need_x ? logits.sizes() : at::IntArrayRef{0}, logits.options());
  at::Tensor grad_target = at::empty(need_t ? target.sizes() : at::IntArrayRef{0}, target.options());
  if ((!need_x && !need_t) || N * M == 0) return {grad_logits, grad_target};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "d2d_soft_iou_backward_cuda", [&] {
    using T = scalar_t;
    at::Tensor d = at::empty({N, 2}, logits.options());
    D2D_LAUNCH(soft_iou_dsums_kernel<T>, (N + 255) / 256, 256, 0, stream,
               sums.data_ptr<double>(), grad.data_ptr<T>(), N, smooth, d.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    T* gx = need_x ? grad_logits.data_ptr<T>() : nullptr;
    T* gt = need_t ? grad_target.data_ptr<T>() : nullptr;
    const auto grad_kernel = from_logits ? soft_iou_grad_kernel<T, true> : soft_iou_grad_kernel<T, false>;
    D2D_LAUNCH(grad_kernel, num_blocks(N * M), kThreads, 0, stream, logits.data_ptr<T>(),
               target.data_ptr<T>(), d.data_ptr<T>(), M, N * M, gx, gt);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_logits, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(d2d, CUDA, m) {
  m.impl("soft_iou_forward", &soft_iou_forward_cuda);
  m.impl("soft_iou_backward", &soft_iou_backward_cuda);
}

}  // namespace d2d
