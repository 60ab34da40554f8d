// CPU kernels of d2d::diffuse and d2d::diffuse_backward.
//
// Each sample runs all its steps on its own padded planes (one ghost ring of zeros), so its data
// stays in cache across steps (see Stepper for the two traversal orders); samples run in parallel
// with at::parallel_for. The inner loops are branch-free and vectorise.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../kernels/diffusion_math.h"
#include "../segments.h"

namespace d2d {
namespace {

constexpr int64_t kPlaneSweepMaxBytes = 48 * 1024;  // per state plane (see Stepper)
constexpr int64_t kWavefrontBytes = 32 * 1024;      // one wavefront: about an L1 data cache
constexpr int64_t kAlignBytes = 64;                 // a cache line, and an AVX-512 vector

constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// A sample's grid padded by a ring of zero ghost pixels. Row y starts at row(y) in a slot of Wp
// elements. Small grids (the plane sweep) have Wp = W + 2 and off = 1. Large grids (the row
// wavefront) round Wp up to a whole number of cache lines and start each row off = one cache line
// into its slot, so that in an aligned workspace every row of every plane starts on a cache line
// and the inner loop's loads, all but two, do not split lines (about 15% faster).
struct Grid {
  int64_t H, W, off, Wp, P;
  Grid(int64_t h, int64_t w, int64_t align)
      : H(h), W(w), off(align), Wp(round_up(w + 2, align)),
        P(round_up((h + 2) * Wp + align, align)) {}
  int64_t row(int64_t y) const { return (y + 1) * Wp + off; }
  bool aligned() const { return off > 1; }
};

template <typename T>
Grid make_grid(int64_t H, int64_t W) {
  const Grid small(H, W, 1);
  if (small.P * int64_t(sizeof(T)) <= kPlaneSweepMaxBytes) return small;
  return Grid(H, W, kAlignBytes / int64_t(sizeof(T)));
}

// n zero elements starting on a cache line.
template <typename T>
struct Workspace {
  std::vector<T> buf;
  T* data;
  explicit Workspace(int64_t n) : buf(n + kAlignBytes / sizeof(T), T(0)) {
    const auto addr = reinterpret_cast<std::uintptr_t>(buf.data());
    data = buf.data() + (kAlignBytes - addr % kAlignBytes) % kAlignBytes / sizeof(T);
  }
};

// One row of coefficients: o_d and a at x in [x0, x1) (all with the same neighbour
// availability), written branch-free so that the inner-column loop vectorises.
template <typename T>
void coef_row(const T* __restrict__ r0, const T* __restrict__ r1, const T* __restrict__ r2,
              const T* __restrict__ r3, T tau, bool has_e, bool has_w, bool has_s, bool has_n,
              int64_t x0, int64_t x1, T* __restrict__ o0, T* __restrict__ o1, T* __restrict__ o2,
              T* __restrict__ o3, T* __restrict__ a) {
  for (int64_t x = x0; x < x1; ++x) {
    T o[4];
    diffuse_out_coefs(r0[x], r1[x], r2[x], r3[x], tau, has_e, has_w, has_s, has_n, o, &a[x]);
    o0[x] = o[0];
    o1[x] = o[1];
    o2[x] = o[2];
    o3[x] = o[3];
  }
}

// Coefficient planes o0, o1, o2, o3, a, ie, iw (each g.P, ghost ring zero) from rates (4, H, W):
// the out-coefficients and a, then the inflow coefficients from the east and west neighbours,
// ie[p] = o1[p + 1] and iw[p] = o0[p - 1], stored at p so the forward's loads of them are aligned
// (0 on the ghost columns too: o1 is 0 in the first column, o0 in the last).
constexpr int64_t kCoefPlanes = 7;

template <typename T>
void build_coefs(const T* r, const Grid& g, T tau, T* coefs) {
  std::fill(coefs, coefs + kCoefPlanes * g.P, T(0));
  const int64_t HW = g.H * g.W;
  for (int64_t y = 0; y < g.H; ++y) {
    const T* r0 = r + y * g.W;
    const int64_t row = g.row(y);
    T* o = coefs + row;
    auto run = [&](bool has_e, bool has_w, int64_t x0, int64_t x1) {
      coef_row(r0, r0 + HW, r0 + 2 * HW, r0 + 3 * HW, tau, has_e, has_w, y + 1 < g.H, y > 0, x0,
               x1, o, o + g.P, o + 2 * g.P, o + 3 * g.P, o + 4 * g.P);
    };
    run(true, true, 1, g.W - 1);  // inner columns
    run(g.W > 1, false, 0, 1);
    if (g.W > 1) run(false, true, g.W - 1, g.W);
  }
  const T* o0 = coefs;
  const T* o1 = coefs + g.P;
  std::copy(o1 + 1, o1 + g.P, coefs + 5 * g.P);
  std::copy(o0, o0 + g.P - 1, coefs + 6 * g.P + 1);
}

// Views of the coefficient planes.
template <typename T>
struct Coefs {
  const T* o0;
  const T* o1;
  const T* o2;
  const T* o3;
  const T* a;
  const T* ie;
  const T* iw;
  int64_t Wp;
  Coefs(const T* base, const Grid& g)
      : o0(base), o1(base + g.P), o2(base + 2 * g.P), o3(base + 3 * g.P), a(base + 4 * g.P),
        ie(base + 5 * g.P), iw(base + 6 * g.P), Wp(g.Wp) {}
};

// out[j] = (A u)[i0 + j] for j in [0, len): up, mid and down hold the rows above, at and below
// (mid[-1] and mid[len] readable). Used for a whole padded plane at once (up = mid - Wp) or for
// one row of a wavefront.
template <typename T>
void forward_run(const Coefs<T>& c, int64_t i0, int64_t len, const T* __restrict__ up,
                 const T* __restrict__ mid, const T* __restrict__ down, T* __restrict__ out) {
  const T* __restrict__ a = c.a + i0;
  const T* __restrict__ in_e = c.ie + i0;          // east neighbour's flow to the west
  const T* __restrict__ in_w = c.iw + i0;          // west neighbour's flow to the east
  const T* __restrict__ in_s = c.o3 + i0 + c.Wp;   // south neighbour's flow to the north
  const T* __restrict__ in_n = c.o2 + i0 - c.Wp;   // north neighbour's flow to the south
  for (int64_t j = 0; j < len; ++j) {
    out[j] = diffuse_forward_px(a[j], mid[j], in_e[j], mid[j + 1], in_w[j], mid[j - 1], in_s[j],
                                down[j], in_n[j], up[j]);
  }
}

// out = (A^T g)[i0 + j] for j in [0, len), with up/mid/down rows of g as in forward_run, and
// acc_d[i0 + j] += u[j] * (g[q_d] - g[p]): the rate gradient of this step before the factor tau
// and the boundary mask, which are applied once at the end.
template <typename T>
void adjoint_run(const Coefs<T>& c, int64_t i0, int64_t len, const T* __restrict__ up,
                 const T* __restrict__ mid, const T* __restrict__ down, const T* __restrict__ u,
                 T* __restrict__ out, T* __restrict__ acc, int64_t P) {
  const T* __restrict__ a = c.a + i0;
  const T* __restrict__ o0 = c.o0 + i0;
  const T* __restrict__ o1 = c.o1 + i0;
  const T* __restrict__ o2 = c.o2 + i0;
  const T* __restrict__ o3 = c.o3 + i0;
  T* __restrict__ acc0 = acc + i0;
  T* __restrict__ acc1 = acc + P + i0;
  T* __restrict__ acc2 = acc + 2 * P + i0;
  T* __restrict__ acc3 = acc + 3 * P + i0;
  for (int64_t j = 0; j < len; ++j) {
    const T gp = mid[j], ge = mid[j + 1], gw = mid[j - 1], gs = down[j], gn = up[j];
    const T up_j = u[j];
    acc0[j] += diffuse_rate_grad_px(up_j, ge, gp);
    acc1[j] += diffuse_rate_grad_px(up_j, gw, gp);
    acc2[j] += diffuse_rate_grad_px(up_j, gs, gp);
    acc3[j] += diffuse_rate_grad_px(up_j, gn, gp);
    out[j] = diffuse_adjoint_px(a[j], gp, o0[j], ge, o1[j], gw, o2[j], gs, o3[j], gn);
  }
}

// Two ways to run steps, chosen by sample size:
// - plane sweep (small samples, which stay in cache): one step at a time over the padded plane
//   as a single 1-D range from the first to the last inner pixel, ghost columns between rows
//   included. There every coefficient is zero; they are reset to zero after each step (see
//   clear_ghosts), and the long branch-free loop vectorises far better than short rows.
// - row wavefront (large samples): S steps in one pass over the rows. At time t, level s
//   (1 <= s <= S) computes its row t - s + 1 from rows t - s .. t - s + 2 of level s - 1, so only
//   a band of about S rows of every plane is in use at a time and it stays in cache.
template <typename T>
struct Stepper {
  const Grid& g;
  Coefs<T> c;
  bool sweep;      // plane sweep, else wavefront
  int64_t depth;   // steps per wavefront pass
  T* ring;         // wavefront: 3 rows for each of (depth - 1) intermediate levels
  const T* zero;   // a zero row of Wp (reads above the first row and below the last)

  Stepper(const Grid& grid, const T* coefs, T* ring_rows, const T* zero_row)
      : g(grid), c(coefs, grid), ring(ring_rows), zero(zero_row) {
    sweep = !g.aligned();  // make_grid aligns the grids too large for the plane sweep
    depth = std::clamp<int64_t>(kWavefrontBytes / (10 * g.Wp * int64_t(sizeof(T))), 2, 16);
  }
  static int64_t ring_elems(const Grid& g) { return 3 * 15 * g.Wp; }
  static int64_t zero_elems(const Grid& g) { return g.Wp + 2 * g.off; }

  int64_t sweep_begin() const { return g.row(0); }
  int64_t sweep_len() const { return g.row(g.H - 1) + g.W - g.row(0); }

  // A plane sweep also writes the ghost columns between rows: 0 * x there, which is 0 only for
  // finite x. Resetting them after every step keeps a NaN or Inf from jumping to the next row
  // (or, through reused buffers, to the next sample).
  void clear_ghosts(T* plane) const {
    for (int64_t y = 0; y + 1 < g.H; ++y) {
      plane[g.row(y) + g.W] = T(0);
      plane[g.row(y + 1) - 1] = T(0);
    }
  }

  // One wavefront pass of S <= depth levels: level 0 is the plane src, level s the row
  // level_row(s, y); rows outside the image read as zeros.
  template <typename RowFn, typename LevelRow>
  void wavefront(int64_t S, const T* src, LevelRow&& level_row, RowFn&& fn) const {
    auto input_row = [&](int64_t s, int64_t y) -> const T* {
      if (y < 0 || y >= g.H) return zero + g.off;
      return s == 0 ? src + g.row(y) : level_row(s, y);
    };
    for (int64_t t = 0; t < g.H + S - 1; ++t) {
      for (int64_t s = 1; s <= S; ++s) {
        const int64_t y = t - (s - 1);
        if (y < 0 || y >= g.H) continue;
        fn(s, y, input_row(s - 1, y - 1), input_row(s - 1, y), input_row(s - 1, y + 1),
           level_row(s, y));
      }
    }
  }
  T* ring_row(int64_t s, int64_t y) const {
    return ring + ((s - 1) * 3 + y % 3) * g.Wp + g.off;
  }

  // S forward steps from the plane src into the plane dst. keep(s) names a plane that must
  // receive the state after step s (1 <= s < S), or nullptr; other intermediate states go to the
  // scratch planes tmp[0], tmp[1] (plane sweep, wavefront pass ends) or ring rows.
  template <typename Keep>
  void forward(int64_t S, const T* src, T* dst, Keep&& keep, T* const tmp[2]) const {
    auto plane_for = [&](int64_t s, int64_t parity) -> T* {
      if (s == S) return dst;
      T* k = keep(s);
      return k != nullptr ? k : tmp[parity % 2];
    };
    if (sweep) {
      const int64_t b = sweep_begin(), len = sweep_len();
      const T* cur = src;
      for (int64_t s = 1; s <= S; ++s) {
        T* out = plane_for(s, s);
        forward_run(c, b, len, cur + b - g.Wp, cur + b, cur + b + g.Wp, out + b);
        clear_ghosts(out);
        cur = out;
      }
      return;
    }
    const T* from = src;
    for (int64_t s0 = 0, pass = 0; s0 < S; ++pass) {
      const int64_t n = std::min(depth, S - s0);
      T* to = plane_for(s0 + n, pass);
      auto level_row = [&](int64_t s, int64_t y) -> T* {
        if (s == n) return to + g.row(y);
        T* k = keep(s0 + s);
        return k != nullptr ? k + g.row(y) : ring_row(s, y);
      };
      wavefront(n, from, level_row,
                [&](int64_t, int64_t y, const T* up, const T* mid, const T* down, T* out) {
                  forward_run(c, g.row(y), g.W, up, mid, down, out);
                });
      from = to;
      s0 += n;
    }
  }

  // S adjoint steps from gin (= g^{k+S}) into gout (= g^k), where state(s) is the plane of the
  // forward state u^{k+S-s} that step s uses; accumulates the rate gradient into acc. gin, gout
  // and gtmp are distinct planes; intermediate results alternate so the last lands in gout.
  template <typename State>
  void adjoint(int64_t S, const T* gin, T* gout, State&& state, T* acc, T* gtmp) const {
    if (sweep) {
      const int64_t b = sweep_begin(), len = sweep_len();
      const T* cur = gin;
      for (int64_t s = 1; s <= S; ++s) {
        T* out = (S - s) % 2 == 0 ? gout : gtmp;
        adjoint_run(c, b, len, cur + b - g.Wp, cur + b, cur + b + g.Wp, state(s) + b, out + b, acc,
                    g.P);
        clear_ghosts(out);
        cur = out;
      }
      return;
    }
    const int64_t passes = (S + depth - 1) / depth;
    const T* from = gin;
    for (int64_t s0 = 0, pass = 0; s0 < S; ++pass) {
      const int64_t n = std::min(depth, S - s0);
      T* to = (passes - 1 - pass) % 2 == 0 ? gout : gtmp;
      auto level_row = [&](int64_t s, int64_t y) -> T* {
        return s == n ? to + g.row(y) : ring_row(s, y);
      };
      wavefront(n, from, level_row,
                [&](int64_t s, int64_t y, const T* up, const T* mid, const T* down, T* out) {
                  adjoint_run(c, g.row(y), g.W, up, mid, down, state(s0 + s) + g.row(y), out, acc,
                              g.P);
                });
      from = to;
      s0 += n;
    }
  }
};

template <typename T>
void to_padded(const T* src, const Grid& g, T* dst) {
  for (int64_t y = 0; y < g.H; ++y) std::memcpy(dst + g.row(y), src + y * g.W, g.W * sizeof(T));
}

template <typename T>
void from_padded(const T* src, const Grid& g, T* dst) {
  for (int64_t y = 0; y < g.H; ++y) std::memcpy(dst + y * g.W, src + g.row(y), g.W * sizeof(T));
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
    using T = scalar_t;
    const T* u0p = u0.data_ptr<T>();
    const T* rp = rates.data_ptr<T>();
    T* outp = out.data_ptr<T>();
    const Grid g = make_grid<T>(H, W);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      // coefs, input, output, two scratch planes, ring rows, a zero row.
      Workspace<T> work((kCoefPlanes + 4) * g.P + Stepper<T>::ring_elems(g) +
                        Stepper<T>::zero_elems(g));
      T* coefs = work.data;
      T* in = coefs + kCoefPlanes * g.P;
      T* res = in + g.P;
      T* const tmp[2] = {res + g.P, res + 2 * g.P};
      const Stepper<T> st(g, coefs, res + 3 * g.P, res + 3 * g.P + Stepper<T>::ring_elems(g));
      for (int64_t n = begin; n < end; ++n) {
        build_coefs(rp + n * 4 * H * W, g, T(tau), coefs);
        to_padded(u0p + n * H * W, g, in);
        st.forward(steps, in, res, [](int64_t) -> T* { return nullptr; }, tmp);
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
    const Grid g = make_grid<T>(H, W);
    const SegmentPlan plan =
        plan_segments(steps, g.P * static_cast<int64_t>(sizeof(T)), kCpuStateBudgetBytes);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      // coefs, rate accumulators (4), adjoint planes (3), scratch (2), checkpoints
      // u^{j * len}, segment states u^{j * len + m} (m >= 1), ring rows, a zero row.
      const int64_t planes = kCoefPlanes + 9 + plan.num_segments + plan.segment_len;
      Workspace<T> work(planes * g.P + Stepper<T>::ring_elems(g) + Stepper<T>::zero_elems(g));
      T* coefs = work.data;
      T* acc = coefs + kCoefPlanes * g.P;
      T* gplanes = acc + 4 * g.P;
      T* const tmp[2] = {gplanes + 3 * g.P, gplanes + 4 * g.P};
      T* ckpt = gplanes + 5 * g.P;
      T* seg = ckpt + plan.num_segments * g.P;
      T* ring = seg + plan.segment_len * g.P;
      const Stepper<T> st(g, coefs, ring, ring + Stepper<T>::ring_elems(g));
      auto no_keep = [](int64_t) -> T* { return nullptr; };
      const int64_t HW = H * W;
      for (int64_t n = begin; n < end; ++n) {
        build_coefs(rp + n * 4 * HW, g, T(tau), coefs);
        std::fill(acc, acc + 4 * g.P, T(0));
        to_padded(u0p + n * HW, g, ckpt);
        for (int64_t j = 0; j + 1 < plan.num_segments; ++j) {
          st.forward(plan.segment_len, ckpt + j * g.P, ckpt + (j + 1) * g.P, no_keep, tmp);
        }
        T* gcur = gplanes;
        T* gnext = gplanes + g.P;
        to_padded(gp + n * HW, g, gcur);
        for (int64_t j = plan.num_segments - 1; j >= 0; --j) {
          const int64_t len = std::min(plan.segment_len, steps - j * plan.segment_len);
          const T* start = ckpt + j * g.P;
          auto state = [&](int64_t m) -> T* { return m == 0 ? const_cast<T*>(start) : seg + m * g.P; };
          if (len > 1) {
            st.forward(len - 1, start, state(len - 1), [&](int64_t m) { return state(m); }, tmp);
          }
          st.adjoint(len, gcur, gnext, [&](int64_t s) -> const T* { return state(len - s); }, acc,
                     gplanes + 2 * g.P);
          std::swap(gcur, gnext);
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
