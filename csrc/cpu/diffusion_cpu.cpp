// CPU kernels of d2d::diffuse and d2d::diffuse_backward.
//
// Each sample runs all its steps on its own padded buffers (one ghost ring of zeros), so a small
// crop stays in cache for the whole call; samples run in parallel with at::parallel_for. The inner
// loops are branch-free over a row and vectorise.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../kernels/diffusion_math.h"
#include "../segments.h"

namespace d2d {
namespace {

// A sample's grid padded by one ghost pixel on every side.
struct Grid {
  int64_t H, W, Wp, P;
  Grid(int64_t h, int64_t w) : H(h), W(w), Wp(w + 2), P((h + 2) * (w + 2)) {}
  int64_t row(int64_t y) const { return (y + 1) * Wp + 1; }
};

// Coefficient planes o0, o1, o2, o3, a (each g.P, ghost ring zero) from rates (4, H, W).
template <typename T>
void build_coefs(const T* r, const Grid& g, T tau, T* coefs) {
  T* __restrict__ o0 = coefs;
  T* __restrict__ o1 = coefs + g.P;
  T* __restrict__ o2 = coefs + 2 * g.P;
  T* __restrict__ o3 = coefs + 3 * g.P;
  T* __restrict__ a = coefs + 4 * g.P;
  std::fill(coefs, coefs + 5 * g.P, T(0));
  const int64_t HW = g.H * g.W;
  for (int64_t y = 0; y < g.H; ++y) {
    const T* __restrict__ r0 = r + y * g.W;
    const T* __restrict__ r1 = r0 + HW;
    const T* __restrict__ r2 = r0 + 2 * HW;
    const T* __restrict__ r3 = r0 + 3 * HW;
    const bool has_s = y + 1 < g.H, has_n = y > 0;
    const int64_t row = g.row(y);
    for (int64_t x = 0; x < g.W; ++x) {
      T o[4];
      diffuse_out_coefs(r0[x], r1[x], r2[x], r3[x], tau, x + 1 < g.W, x > 0, has_s, has_n, o,
                        &a[row + x]);
      o0[row + x] = o[0];
      o1[row + x] = o[1];
      o2[row + x] = o[2];
      o3[row + x] = o[3];
    }
  }
}

// The steps sweep the padded plane as one 1-D range from the first to the last inner pixel, ghost
// columns between rows included: there every coefficient is zero, so they stay exactly zero (for
// finite data), and the long branch-free loop vectorises far better than short rows.
struct Sweep {
  int64_t begin, end;
  explicit Sweep(const Grid& g) : begin(g.row(0)), end(g.row(g.H - 1) + g.W) {}
};

// out = A u on padded planes.
template <typename T>
void forward_step(const T* coefs, const Grid& g, const T* __restrict__ u, T* __restrict__ out) {
  const T* __restrict__ o0 = coefs;
  const T* __restrict__ o1 = coefs + g.P;
  const T* __restrict__ o2 = coefs + 2 * g.P;
  const T* __restrict__ o3 = coefs + 3 * g.P;
  const T* __restrict__ a = coefs + 4 * g.P;
  const int64_t Wp = g.Wp;
  const Sweep sw(g);
  for (int64_t i = sw.begin; i < sw.end; ++i) {
    out[i] = diffuse_forward_px(a[i], u[i], o1[i + 1], u[i + 1], o0[i - 1], u[i - 1], o3[i + Wp],
                                u[i + Wp], o2[i - Wp], u[i - Wp]);
  }
}

// gout = A^T gin, and acc_d += u * (gin[q_d] - gin[p]) (the rate gradient of this step, before
// the factor tau and the boundary mask, which are applied once at the end).
template <typename T>
void adjoint_step(const T* coefs, const Grid& g, const T* __restrict__ u, const T* __restrict__ gin,
                  T* __restrict__ gout, T* __restrict__ acc) {
  const T* __restrict__ o0 = coefs;
  const T* __restrict__ o1 = coefs + g.P;
  const T* __restrict__ o2 = coefs + 2 * g.P;
  const T* __restrict__ o3 = coefs + 3 * g.P;
  const T* __restrict__ a = coefs + 4 * g.P;
  T* __restrict__ acc0 = acc;
  T* __restrict__ acc1 = acc + g.P;
  T* __restrict__ acc2 = acc + 2 * g.P;
  T* __restrict__ acc3 = acc + 3 * g.P;
  const int64_t Wp = g.Wp;
  const Sweep sw(g);
  for (int64_t i = sw.begin; i < sw.end; ++i) {
    const T gp = gin[i], ge = gin[i + 1], gw = gin[i - 1], gs = gin[i + Wp], gn = gin[i - Wp];
    const T up = u[i];
    acc0[i] += diffuse_rate_grad_px(up, ge, gp);
    acc1[i] += diffuse_rate_grad_px(up, gw, gp);
    acc2[i] += diffuse_rate_grad_px(up, gs, gp);
    acc3[i] += diffuse_rate_grad_px(up, gn, gp);
    gout[i] = diffuse_adjoint_px(a[i], gp, o0[i], ge, o1[i], gw, o2[i], gs, o3[i], gn);
  }
}

template <typename T>
void to_padded(const T* src, const Grid& g, T* dst) {
  for (int64_t y = 0; y < g.H; ++y) std::memcpy(dst + g.row(y), src + y * g.W, g.W * sizeof(T));
}

template <typename T>
void from_padded(const T* src, const Grid& g, T* dst) {
  for (int64_t y = 0; y < g.H; ++y) std::memcpy(dst + y * g.W, src + g.row(y), g.W * sizeof(T));
}

// Runs `steps` forward steps from the padded state in buf[0]; returns the buffer holding the
// result (buf[0] or buf[1]). If ckpt is given, the state after every `every` steps (before the
// last) is copied to ckpt[k / every - 1].
template <typename T>
T* run_forward(const T* coefs, const Grid& g, int64_t steps, T* buf0, T* buf1, T* ckpt = nullptr,
               int64_t every = 0) {
  T* cur = buf0;
  T* nxt = buf1;
  for (int64_t k = 1; k <= steps; ++k) {
    forward_step(coefs, g, cur, nxt);
    std::swap(cur, nxt);
    if (ckpt != nullptr && k % every == 0 && k < steps) {
      std::memcpy(ckpt + (k / every - 1) * g.P, cur, g.P * sizeof(T));
    }
  }
  return cur;
}

at::Tensor diffuse_cpu(const at::Tensor& u0_in, const at::Tensor& rates_in, double tau,
                       int64_t steps) {
  check_diffuse_args(u0_in, rates_in, tau, steps);
  TORCH_CHECK(u0_in.device().is_cpu(), "d2d.diffuse: the CPU kernel got a tensor on ",
              u0_in.device());
  const at::Tensor u0 = u0_in.contiguous();
  const at::Tensor rates = rates_in.contiguous();
  at::Tensor out = at::empty(u0.sizes(), u0.options());
  const int64_t N = u0.size(0), H = u0.size(1), W = u0.size(2);
  if (out.numel() == 0) return out;
  if (steps == 0) return out.copy_(u0);

  AT_DISPATCH_FLOATING_TYPES(u0.scalar_type(), "d2d_diffuse_cpu", [&] {
    const scalar_t* u0p = u0.data_ptr<scalar_t>();
    const scalar_t* rp = rates.data_ptr<scalar_t>();
    scalar_t* outp = out.data_ptr<scalar_t>();
    const Grid g(H, W);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> work(7 * g.P, scalar_t(0));
      scalar_t* coefs = work.data();
      scalar_t* buf0 = coefs + 5 * g.P;
      scalar_t* buf1 = buf0 + g.P;
      for (int64_t n = begin; n < end; ++n) {
        build_coefs(rp + n * 4 * H * W, g, scalar_t(tau), coefs);
        to_padded(u0p + n * H * W, g, buf0);
        const scalar_t* res = run_forward(coefs, g, steps, buf0, buf1);
        from_padded(res, g, outp + n * H * W);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> diffuse_backward_cpu(const at::Tensor& grad_in,
                                                         const at::Tensor& u0_in,
                                                         const at::Tensor& rates_in, double tau,
                                                         int64_t steps) {
  check_diffuse_backward_args(grad_in, u0_in, rates_in, tau, steps);
  TORCH_CHECK(u0_in.device().is_cpu(), "d2d.diffuse_backward: the CPU kernel got a tensor on ",
              u0_in.device());
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor u0 = u0_in.contiguous();
  const at::Tensor rates = rates_in.contiguous();
  at::Tensor grad_u0 = at::empty(u0.sizes(), u0.options());
  at::Tensor grad_rates = at::empty(rates.sizes(), rates.options());
  const int64_t N = u0.size(0), H = u0.size(1), W = u0.size(2);
  if (grad_u0.numel() == 0) return {grad_u0, grad_rates};
  if (steps == 0) {
    grad_u0.copy_(grad);
    grad_rates.zero_();
    return {grad_u0, grad_rates};
  }

  AT_DISPATCH_FLOATING_TYPES(u0.scalar_type(), "d2d_diffuse_backward_cpu", [&] {
    using T = scalar_t;
    const T* gp = grad.data_ptr<T>();
    const T* u0p = u0.data_ptr<T>();
    const T* rp = rates.data_ptr<T>();
    T* gu0p = grad_u0.data_ptr<T>();
    T* grp = grad_rates.data_ptr<T>();
    const Grid g(H, W);
    const SegmentPlan plan =
        plan_segments(steps, g.P * static_cast<int64_t>(sizeof(T)), kCpuStateBudgetBytes);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      // coefs (5), adjoint pair (2), rate accumulators (4), checkpoints, segment states.
      const int64_t planes = 11 + plan.num_segments + plan.segment_len;
      std::vector<T> work(planes * g.P, T(0));
      T* coefs = work.data();
      T* ga = coefs + 5 * g.P;
      T* gb = ga + g.P;
      T* acc = gb + g.P;
      T* ckpt = acc + 4 * g.P;                     // num_segments planes: u^{j*len}
      T* seg = ckpt + plan.num_segments * g.P;     // segment_len planes: u^{j*len + m}
      const int64_t HW = H * W;
      for (int64_t n = begin; n < end; ++n) {
        build_coefs(rp + n * 4 * HW, g, T(tau), coefs);
        std::fill(acc, acc + 4 * g.P, T(0));
        to_padded(u0p + n * HW, g, ckpt);
        if (plan.num_segments > 1) {
          // Checkpoint pass: seg[0], seg[1] serve as the ping-pong pair here.
          std::memcpy(seg, ckpt, g.P * sizeof(T));
          run_forward(coefs, g, steps, seg, seg + g.P, ckpt + g.P, plan.segment_len);
        }
        to_padded(gp + n * HW, g, ga);
        T* gcur = ga;
        T* gnxt = gb;
        for (int64_t j = plan.num_segments - 1; j >= 0; --j) {
          const int64_t k0 = j * plan.segment_len;
          const int64_t len = std::min(plan.segment_len, steps - k0);
          std::memcpy(seg, ckpt + j * g.P, g.P * sizeof(T));
          for (int64_t m = 1; m < len; ++m) {
            forward_step(coefs, g, seg + (m - 1) * g.P, seg + m * g.P);
          }
          for (int64_t m = len - 1; m >= 0; --m) {
            adjoint_step(coefs, g, seg + m * g.P, gcur, gnxt, acc);
            std::swap(gcur, gnxt);
          }
        }
        from_padded(gcur, g, gu0p + n * HW);
        T* out_r = grp + n * 4 * HW;
        for (int64_t y = 0; y < H; ++y) {
          for (int64_t x = 0; x < W; ++x) {
            const int64_t i = g.row(y) + x, s = y * W + x;
            out_r[s] = x + 1 < W ? T(tau) * acc[i] : T(0);
            out_r[HW + s] = x > 0 ? T(tau) * acc[g.P + i] : T(0);
            out_r[2 * HW + s] = y + 1 < H ? T(tau) * acc[2 * g.P + i] : T(0);
            out_r[3 * HW + s] = y > 0 ? T(tau) * acc[3 * g.P + i] : T(0);
          }
        }
      }
    });
  });
  return {grad_u0, grad_rates};
}

}  // namespace

TORCH_LIBRARY_IMPL(d2d, CPU, m) {
  m.impl("diffuse", &diffuse_cpu);
  m.impl("diffuse_backward", &diffuse_backward_cpu);
}

}  // namespace d2d
