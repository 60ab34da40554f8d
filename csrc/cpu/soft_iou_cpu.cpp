// CPU kernels of d2d::soft_iou_forward and d2d::soft_iou_backward.
//
// Inputs are viewed as (N, M). The per-sample sums are reduced over blocks of kBlock elements (so
// a batch smaller than the thread pool still uses every thread): kLanes partial sums per block,
// which vectorise, combined in double. The forward only reads (logits, target); the backward is
// one pass over them that recomputes the sigmoid. Keeping p from the forward instead would hold a
// tensor the size of the logits until the backward; writing and reading it back costs about what
// the second exp does, and allocating it can cost more (fresh pages).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../kernels/soft_iou_math.h"

namespace d2d {
namespace {

constexpr int64_t kBlock = 4096;  // elements per reduction block
constexpr int kLanes = 16;        // independent partial sums, so the loop vectorises

struct Sums {
  double inter, sum_p, sum_t;
};

// Sums of p*t, p and t over x[lo, hi), t[lo, hi).
template <bool FromLogits, typename T>
Sums block_sums(const T* __restrict__ x, const T* __restrict__ t, int64_t lo, int64_t hi) {
  T ai[kLanes] = {}, ap[kLanes] = {}, at[kLanes] = {};
  int64_t j = lo;
  for (; j + kLanes <= hi; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T p = prediction<FromLogits>(x[j + l]);
      const T tv = t[j + l];
      ai[l] += p * tv;
      ap[l] += p;
      at[l] += tv;
    }
  }
  Sums s{0, 0, 0};
  for (; j < hi; ++j) {
    const T p = prediction<FromLogits>(x[j]);
    s.inter += double(p) * double(t[j]);
    s.sum_p += p;
    s.sum_t += t[j];
  }
  for (int l = 0; l < kLanes; ++l) {
    s.inter += ai[l];
    s.sum_p += ap[l];
    s.sum_t += at[l];
  }
  return s;
}

int64_t blocks_per_sample(int64_t M) { return std::max<int64_t>(1, (M + kBlock - 1) / kBlock); }

// Per-sample sums for x, t viewed as (N, M), written to sums (N, 3).
template <bool FromLogits, typename T>
void sample_sums(const T* x, const T* t, int64_t N, int64_t M, double* sums) {
  const int64_t per_sample = blocks_per_sample(M);
  std::vector<Sums> partial(N * per_sample, Sums{0, 0, 0});
  at::parallel_for(0, N * per_sample, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t lo = (b / per_sample) * M + (b % per_sample) * kBlock;
      const int64_t hi = std::min((b / per_sample + 1) * M, lo + kBlock);
      partial[b] = block_sums<FromLogits, T>(x, t, lo, hi);
    }
  });
  std::fill(sums, sums + 3 * N, 0.0);
  for (int64_t b = 0; b < N * per_sample; ++b) {
    double* s = sums + 3 * (b / per_sample);
    s[0] += partial[b].inter;
    s[1] += partial[b].sum_p;
    s[2] += partial[b].sum_t;
  }
}

// Gradients of x, t viewed as (N, M) (gx / gt null where not asked for), from each sample's sum
// derivatives d_inter[n], d_sum[n].
template <bool FromLogits, typename T>
void grad_pass(const T* x, const T* t, const T* d_inter, const T* d_sum, int64_t N, int64_t M,
               T* gx, T* gt) {
  const int64_t per_sample = blocks_per_sample(M);
  at::parallel_for(0, N * per_sample, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = b / per_sample, lo = n * M + (b % per_sample) * kBlock;
      const int64_t hi = std::min(n * M + M, lo + kBlock);
      const T di = d_inter[n], ds = d_sum[n];
      // one loop per output set, so that each vectorises without a branch inside
      if (gx != nullptr && gt != nullptr) {
        for (int64_t j = lo; j < hi; ++j) soft_iou_grad_px<FromLogits>(x[j], t[j], di, ds, gx + j, gt + j);
      } else if (gx != nullptr) {
        for (int64_t j = lo; j < hi; ++j) {
          T p, slope;
          prediction_slope<FromLogits>(x[j], &p, &slope);
          gx[j] = soft_iou_grad_logit(slope, t[j], di, ds);
        }
      } else {
        for (int64_t j = lo; j < hi; ++j) gt[j] = soft_iou_grad_target(prediction<FromLogits>(x[j]), di, ds);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> soft_iou_forward_cpu(const at::Tensor& logits_in,
                                                        const at::Tensor& target_in,
                                                        double smooth, bool from_logits) {
  check_soft_iou_args(logits_in, target_in, smooth);
  TORCH_CHECK(logits_in.device().is_cpu(), "d2d.soft_iou: the CPU kernel got a tensor on ",
              logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const int64_t N = logits.size(0), M = sample_numel(logits);
  at::Tensor loss = at::empty({N}, logits.options());
  at::Tensor sums = at::empty({N, 3}, logits.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "d2d_soft_iou_forward_cpu", [&] {
    double* s = sums.data_ptr<double>();
    if (from_logits) {
      sample_sums<true>(logits.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), N, M, s);
    } else {
      sample_sums<false>(logits.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), N, M, s);
    }
    scalar_t* lp = loss.data_ptr<scalar_t>();
    for (int64_t n = 0; n < N; ++n) {
      lp[n] = scalar_t(soft_iou_loss(s[3 * n], s[3 * n + 1], s[3 * n + 2], smooth));
    }
  });
  return {loss, sums};
}

std::tuple<at::Tensor, at::Tensor> soft_iou_backward_cpu(const at::Tensor& grad_in,
                                                          const at::Tensor& logits_in,
                                                          const at::Tensor& target_in,
                                                          const at::Tensor& sums_in, double smooth,
                                                          std::array<bool, 2> output_mask,
                                                          bool from_logits) {
  check_soft_iou_backward_args(grad_in, logits_in, target_in, sums_in, smooth);
  TORCH_CHECK(logits_in.device().is_cpu(), "d2d.soft_iou_backward: the CPU kernel got a tensor on ",
              logits_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const at::Tensor sums = sums_in.contiguous();
  const int64_t N = logits.size(0), M = sample_numel(logits);
  const bool need_x = output_mask[0], need_t = output_mask[1];
  at::Tensor grad_logits = at::empty(need_x ? logits.sizes() : at::IntArrayRef{0}, logits.options());
  at::Tensor grad_target = at::empty(need_t ? target.sizes() : at::IntArrayRef{0}, target.options());
  if (!need_x && !need_t) return {grad_logits, grad_target};
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "d2d_soft_iou_backward_cpu", [&] {
    using T = scalar_t;
    const T* x = logits.data_ptr<T>();
    const T* t = target.data_ptr<T>();
    const T* go = grad.data_ptr<T>();
    const double* s = sums.data_ptr<double>();
    T* gx = need_x ? grad_logits.data_ptr<T>() : nullptr;
    T* gt = need_t ? grad_target.data_ptr<T>() : nullptr;
    std::vector<T> d_inter(N), d_sum(N);
    for (int64_t n = 0; n < N; ++n) {
      double di, ds;
      soft_iou_dsums(s[3 * n], s[3 * n + 1], s[3 * n + 2], smooth, double(go[n]), &di, &ds);
      d_inter[n] = T(di);
      d_sum[n] = T(ds);
    }
    if (from_logits) {
      grad_pass<true>(x, t, d_inter.data(), d_sum.data(), N, M, gx, gt);
    } else {
      grad_pass<false>(x, t, d_inter.data(), d_sum.data(), N, M, gx, gt);
    }
  });
  return {grad_logits, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(d2d, CPU, m) {
  m.impl("soft_iou_forward", &soft_iou_forward_cpu);
  m.impl("soft_iou_backward", &soft_iou_backward_cpu);
}

}  // namespace d2d
