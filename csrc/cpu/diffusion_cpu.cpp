// CPU kernels of d2d::diffuse and d2d::diffuse_backward.
//
// Each sample runs all its steps on its own padded planes (ghost rows and columns of zeros; the
// plane sweep's ghost rows only, see Grid), several steps per pass over data held in cache (see
// Stepper for the two traversal orders). Samples run in parallel with at::parallel_for; when
// there are fewer samples than threads, a large sample's rows are split into bands that run in
// parallel (see Tiling). The inner loops are branch-free
// and run on whole vectors, the east and west neighbours' values shifted out of the vectors
// already loaded (see lanes.h).
// Every multiply and add rounds on its own (no fused multiply-add contraction) in this file: the
// arithmetic is then the source's order of operations whatever the compiler vectorises and
// however a run splits into vectors and a scalar rest, so results are the same bits on any x86
// vector width and any tiling, and equal to the per-pixel formula evaluated in that order
// (python_tests/test_diffusion.py checks it against numpy). Set before any include, so that
// every function of the file has the same options.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../checks.h"
#include "../kernels/diffusion_math.h"
#include "../segments.h"
#include "lanes.h"

namespace d2d {
namespace {

constexpr int64_t kPlaneSweepMaxBytes = 48 * 1024;  // per state plane (see Stepper)
constexpr int64_t kResidentBytes = 8 << 20;        // a sample's planes that stay in the LLC
constexpr int64_t kShallowBytes = 32 * 1024;       // shallow wavefront: about an L1 cache
constexpr int64_t kDeepBytes = 768 * 1024;         // deep wavefront tile: 3/4 of a 1 MiB L2
constexpr int64_t kAlignBytes = 64;                 // a cache line, and an AVX-512 vector

constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// A sample's grid padded by a ring of zero ghost pixels. Row y starts at row(y) in a slot of Wp
// elements. Large grids (the row wavefront) round Wp up to a whole number of cache lines and
// start each row off = one cache line into its slot, so that in an aligned workspace every row of
// every plane starts on a cache line and the inner loop's loads do not split lines (a load that
// splits a line costs two), but for the inflow coefficients at p +- 1 with 5 coefficient planes
// (see coef_planes).
// Small grids (the plane sweep, see Stepper) have no ghost columns at all (`columns` false): Wp =
// W, the rows one after another between the ghost rows above and below, so that a step is one
// run over H * W elements, a whole number of vectors and on cache lines wherever W is a multiple
// of a line (16x16 and 32x32 crops). A pixel at a row's end then has the first pixel of the next
// row as its east neighbour (and the last of the previous row as its west one), whose inflow
// coefficient towards it is 0 (o1 is 0 in the first column, o0 in the last): 0 times a finite
// state, which adds nothing, so the values are those of the padded formula. (Its sign too, but
// where a row-end pixel's own term is -0 and every other term 0: there 0 times a negative
// neighbour is -0 where the padded formula adds +0 times +0.) A NaN or Inf would jump to the next
// row that way: a sample whose results are not all finite runs again in the padded layout
// (`columns` true, Wp = W + 2, the same planes: P is that layout's; see redo_sweep). The sweep
// is shifted by off so that it starts on a cache line.
//
// `resident`: the sample's coefficient and state planes (about 11) stay in the last-level cache
// between passes of the wavefront (see Stepper); always true for the plane sweep.
struct Grid {
  int64_t H, W, line, off, Wp, P;
  bool resident = true;
  bool sweep;
  bool columns = true;  // ghost columns between the rows (all but the plane sweep's first run)
  Grid(int64_t h, int64_t w, int64_t line_, bool sweep_, bool columns_ = true)
      : H(h), W(w), line(line_), off(sweep_ ? line - (w + (columns_ ? 2 : 0)) % line : line),
        Wp(sweep_ ? w + (columns_ ? 2 : 0) : round_up(w + 2, line)),
        P(round_up((h + 2) * Wp + off, line)), sweep(sweep_), columns(columns_) {}
  int64_t row(int64_t y) const { return (y + 1) * Wp + off; }
  // The plane sweep's padded layout in the same planes (see redo_sweep).
  Grid padded() const {
    Grid g(H, W, line, true, true);
    g.P = P;
    return g;
  }
};

template <typename T>
Grid make_grid(int64_t H, int64_t W) {
  constexpr int64_t line = kAlignBytes / int64_t(sizeof(T));
  const Grid padded(H, W, line, true);
  if (padded.P * int64_t(sizeof(T)) <= kPlaneSweepMaxBytes) {
    Grid sweep(H, W, line, true, false);
    sweep.P = padded.P;  // room for the padded layout, should the sample need it
    return sweep;
  }
  Grid g(H, W, line, false);
  g.resident = 11 * g.P * int64_t(sizeof(T)) <= kResidentBytes;
  return g;
}

// n zero elements starting on a cache line. calloc hands out large blocks as fresh zero pages
// without writing them again. The pages of a large block are asked to be huge ones: the kernel
// clears every fresh page on its first touch, and with 4 KiB pages that costs a fault per page,
// which for a large sample outweighs its first pass of steps.
template <typename T>
struct Workspace {
  void* raw;
  T* data;
  explicit Workspace(int64_t n) {
    const std::size_t bytes = std::size_t(n) * sizeof(T) + kAlignBytes;
    raw = std::calloc(bytes, 1);
    TORCH_CHECK(raw != nullptr, "d2d: could not allocate a workspace of ", bytes, " bytes");
    const auto addr = reinterpret_cast<std::uintptr_t>(raw);
    data = reinterpret_cast<T*>(round_up(int64_t(addr), kAlignBytes));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr std::uintptr_t kPage = 4096, kHuge = std::uintptr_t(2) << 20;
    if (bytes >= 2 * kHuge) {
      const std::uintptr_t begin = (addr + kPage - 1) / kPage * kPage;
      const std::uintptr_t end = (addr + bytes) / kPage * kPage;
      madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint only
    }
#endif
  }
  ~Workspace() { std::free(raw); }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
};

// One row of coefficients: o_d and a at x in [0, W), the east and west neighbours' availability
// as selects, so that the row is one vectorised loop.
template <typename T>
void coef_row(const T* __restrict__ r0, const T* __restrict__ r1, const T* __restrict__ r2,
              const T* __restrict__ r3, T tau, bool has_s, bool has_n, int64_t W,
              T* __restrict__ o0, T* __restrict__ o1, T* __restrict__ o2, T* __restrict__ o3,
              T* __restrict__ a) {
  for (int64_t x = 0; x < W; ++x) {
    T o[4];
    diffuse_out_coefs(r0[x], r1[x], r2[x], r3[x], tau, x + 1 < W, x > 0, has_s, has_n, o, &a[x]);
    o0[x] = o[0];
    o1[x] = o[1];
    o2[x] = o[2];
    o3[x] = o[3];
  }
}

// Coefficient planes o0, o1, o2, o3, a (each g.P, ghost ring zero) from rates (4, H, W): the
// out-coefficients and a. The forward also needs the inflow coefficients from the east and west
// neighbours, o1[p + 1] and o0[p - 1]. For a sample that stays in cache they get planes of their
// own, ie[p] = o1[p + 1] and iw[p] = o0[p - 1], stored at p so that the forward's loads of them
// are aligned (0 on the ghost columns too: o1 is 0 in the first column, o0 in the last, so each
// row's ie and iw come from that row's o1 and o0 alone; in the plane sweep's layout without ghost
// columns, a row's last ie reads o1 at the next row's start and its first iw the previous row's
// last o0, both 0 in every sample, built yet or not); for a larger one, whose planes come from
// memory on every pass, two planes fewer to build and stream save more than the aligned loads
// do. The plane sweep, whose rows need not be whole cache lines, also gets the inflow coefficients
// from the south and north neighbours at p: is[p] = o3[p + Wp], in[p] = o2[p - Wp]. The values
// are the same either way. build_coefs writes rows [y0, y1) of the planes, so that bands of rows
// can build them in parallel, and never their ghost elements: those keep the workspace's zeros
// (it is allocated zeroed) for every sample a thread runs, and clearing them again for each
// sample cost a sixth of a 16x16 crop's call.
inline int64_t coef_planes(const Grid& g) { return g.sweep ? 9 : g.resident ? 7 : 5; }

// Elements of a padded plane that rows [y0, y1) own: from the start of row y0 to the start of
// row y1 (the rows and the ghost columns after them), with the ghost rows and padding above row
// 0 and below row H - 1 going to the first and last rows.
inline std::pair<int64_t, int64_t> plane_span(const Grid& g, int64_t y0, int64_t y1) {
  return {y0 == 0 ? 0 : g.row(y0), y1 == g.H ? g.P : g.row(y1)};
}

// A small sample's next input planes (elems elements from p), asked of the cache while the
// current sample steps: a crop's steps take a few microseconds, and without the hint each crop's
// first loads of its rates wait on memory. Large samples are not hinted: their planes stream from
// memory on every pass anyway.
template <typename T>
void prefetch(const T* p, int64_t elems) {
#if defined(__GNUC__)
  const char* b = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < elems * int64_t(sizeof(T)); i += kAlignBytes) {
    __builtin_prefetch(b + i, 0, 2);
  }
#endif
}

// Sample n + 1's rates (N, 4, H, W) and per-pixel inputs (N, H, W), if there is one, hinted as
// above while sample n steps.
template <typename T>
void prefetch_next(int64_t n, int64_t N, int64_t HW, const T* rates,
                   std::initializer_list<const T*> inputs) {
  if (n + 1 >= N) return;
  prefetch(rates + (n + 1) * 4 * HW, 4 * HW);
  for (const T* p : inputs) prefetch(p + (n + 1) * HW, HW);
}

// Whether all n elements are finite. Their bits without the sign are compared as integers, which
// order as the magnitudes do, Inf and NaN above every finite value: an integer maximum, which
// vectorises where a float test would not.
template <typename T>
bool all_finite(const T* __restrict__ p, int64_t n) {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  constexpr U kMagnitude = ~U(0) >> 1;
  U m = 0;
  for (int64_t i = 0; i < n; ++i) {
    U b;
    std::memcpy(&b, p + i, sizeof(U));
    b &= kMagnitude;
    m = b > m ? b : m;
  }
  T v;
  std::memcpy(&v, &m, sizeof(T));
  return std::isfinite(v);
}

// `inflow`: also the inflow planes (ie, iw, and the sweep's is, in), which only the forward steps
// read; the adjoint steps alone (the gradient of u0 by itself) read a and o0..o3, and on small
// crops building planes that no step reads is a visible part of that backward's set-up.
template <typename T>
void build_coefs(const T* r, const Grid& g, T tau, T* coefs, int64_t y0, int64_t y1,
                 bool inflow = true) {
  const int64_t HW = g.H * g.W;
  for (int64_t y = y0; y < y1; ++y) {
    const T* r0 = r + y * g.W;
    const int64_t row = g.row(y);
    T* o = coefs + row;
    coef_row(r0, r0 + HW, r0 + 2 * HW, r0 + 3 * HW, tau, y + 1 < g.H, y > 0, g.W, o, o + g.P,
             o + 2 * g.P, o + 3 * g.P, o + 4 * g.P);
    if (!inflow) continue;
    if (coef_planes(g) >= 7) {
      // ie[x] = o1[x + 1] and iw[x] = o0[x - 1], the ghost columns' zeros at x = W - 1 and 0
      const T* o1 = o + g.P;
      T* ie = o + 5 * g.P;
      T* iw = o + 6 * g.P;
      for (int64_t x = 0; x < g.W; ++x) {
        ie[x] = o1[x + 1];
        iw[x] = o[x - 1];
      }
    }
    if (coef_planes(g) == 9) {
      // o3 of the row below and o2 of the row above, as coef_row computes them there (rows of
      // other bands, so from the rates); 0 past the last and first rows
      T* is = o + 7 * g.P;
      T* in = o + 8 * g.P;
      for (int64_t x = 0; x < g.W; ++x) {
        is[x] = y + 1 < g.H ? diffuse_out_coef(r0[3 * HW + g.W + x], tau, true) : T(0);
        in[x] = y > 0 ? diffuse_out_coef(r0[2 * HW - g.W + x], tau, true) : T(0);
      }
    }
  }
}

// Views of the coefficient planes: the inflow coefficients at p are ie[p + ie_at], iw[p + iw_at].
template <typename T>
struct Coefs {
  const T* o0;
  const T* o1;
  const T* o2;
  const T* o3;
  const T* a;
  const T* ie;
  const T* iw;
  const T* is;
  const T* in;
  int64_t ie_at, iw_at, is_at, in_at;
  int64_t Wp;
  Coefs(const T* base, const Grid& g) : Coefs(base, g, coef_planes(g) >= 7, coef_planes(g) == 9) {}
  Coefs(const T* base, const Grid& g, bool east_west, bool south_north)
      : o0(base), o1(base + g.P), o2(base + 2 * g.P), o3(base + 3 * g.P), a(base + 4 * g.P),
        ie(east_west ? base + 5 * g.P : o1), iw(east_west ? base + 6 * g.P : o0),
        is(south_north ? base + 7 * g.P : o3), in(south_north ? base + 8 * g.P : o2),
        ie_at(east_west ? 0 : 1), iw_at(east_west ? 0 : -1), is_at(south_north ? 0 : g.Wp),
        in_at(south_north ? 0 : -g.Wp), Wp(g.Wp) {}
};

// out[j] = px(a[j], mid[j], ce[j], mid[j + 1], cw[j], mid[j - 1], cs[j], down[j], cn[j], up[j])
// for j in [0, len): the five-point step both ways (px is diffuse_forward_px or
// diffuse_adjoint_px, which take whole vectors too). up, mid and down hold the rows above, at and
// below (mid[-1] and mid[len] readable).
template <typename T, typename Px>
void stencil_run(const T* __restrict__ a, const T* __restrict__ ce, const T* __restrict__ cw,
                 const T* __restrict__ cs, const T* __restrict__ cn, int64_t len,
                 const T* __restrict__ up, const T* __restrict__ mid, const T* __restrict__ down,
                 T* __restrict__ out, Px&& px) {
  int64_t j0 = 0;
  if constexpr (kLanes<T> > 0) {
    j0 = lane_runs(mid, len, [&](int64_t j, Vec<T> w, Vec<T> p, Vec<T> e) {
      auto ld = [&](const T* q) { return Lanes<T>::load(q + j); };
      Lanes<T>::store(out + j, px(ld(a), p, ld(ce), e, ld(cw), w, ld(cs), ld(down), ld(cn), ld(up)));
    });
  }
  for (int64_t j = j0; j < len; ++j) {
    out[j] = px(a[j], mid[j], ce[j], mid[j + 1], cw[j], mid[j - 1], cs[j], down[j], cn[j], up[j]);
  }
}

// out[j] = (A u)[i0 + j] for j in [0, len), up/mid/down as in stencil_run. Used for a whole
// padded plane at once (up = mid - Wp) or for one row of a wavefront.
template <typename T>
void forward_run(const Coefs<T>& c, int64_t i0, int64_t len, const T* __restrict__ up,
                 const T* __restrict__ mid, const T* __restrict__ down, T* __restrict__ out) {
  // the inflow coefficients of the east, west, south and north neighbours towards p
  stencil_run(c.a + i0, c.ie + (i0 + c.ie_at), c.iw + (i0 + c.iw_at), c.is + (i0 + c.is_at),
              c.in + (i0 + c.in_at), len, up, mid, down, out,
              [](auto... v) { return diffuse_forward_px(v...); });
}

// out = (A^T g)[i0 + j] for j in [0, len), with up/mid/down rows of g as in forward_run, and
// (kRates) acc[d * stride + j] += u[j] * (g[q_d] - g[p]): the rate gradient of this step before
// the factor tau and the boundary mask, which are applied once at the end. Without kRates, u and
// acc are not read.
template <bool kRates, typename T>
void adjoint_run(const Coefs<T>& c, int64_t i0, int64_t len, const T* __restrict__ up,
                 const T* __restrict__ mid, const T* __restrict__ down, const T* __restrict__ u,
                 T* __restrict__ out, T* __restrict__ acc, int64_t stride) {
  const T* __restrict__ a = c.a + i0;
  const T* __restrict__ o0 = c.o0 + i0;
  const T* __restrict__ o1 = c.o1 + i0;
  const T* __restrict__ o2 = c.o2 + i0;
  const T* __restrict__ o3 = c.o3 + i0;
  if constexpr (!kRates) {
    stencil_run(a, o0, o1, o2, o3, len, up, mid, down, out,
                [](auto... v) { return diffuse_adjoint_px(v...); });
    return;
  }
  T* __restrict__ acc0 = acc;
  T* __restrict__ acc1 = acc + stride;
  T* __restrict__ acc2 = acc + 2 * stride;
  T* __restrict__ acc3 = acc + 3 * stride;
  int64_t j0 = 0;
  if constexpr (kLanes<T> > 0) {
    j0 = lane_runs(mid, len, [&](int64_t j, Vec<T> gw, Vec<T> gp, Vec<T> ge) {
      using L = Lanes<T>;
      auto ld = [&](const T* q) { return L::load(q + j); };
      const Vec<T> gs = ld(down), gn = ld(up), u_j = ld(u);
      L::store(acc0 + j, diffuse_rate_grad_accumulate(ld(acc0), u_j, ge, gp));
      L::store(acc1 + j, diffuse_rate_grad_accumulate(ld(acc1), u_j, gw, gp));
      L::store(acc2 + j, diffuse_rate_grad_accumulate(ld(acc2), u_j, gs, gp));
      L::store(acc3 + j, diffuse_rate_grad_accumulate(ld(acc3), u_j, gn, gp));
      L::store(out + j,
               diffuse_adjoint_px(ld(a), gp, ld(o0), ge, ld(o1), gw, ld(o2), gs, ld(o3), gn));
    });
  }
  for (int64_t j = j0; j < len; ++j) {
    const T gp = mid[j], ge = mid[j + 1], gw = mid[j - 1], gs = down[j], gn = up[j];
    const T up_j = u[j];
    acc0[j] = diffuse_rate_grad_accumulate(acc0[j], up_j, ge, gp);
    acc1[j] = diffuse_rate_grad_accumulate(acc1[j], up_j, gw, gp);
    acc2[j] = diffuse_rate_grad_accumulate(acc2[j], up_j, gs, gp);
    acc3[j] = diffuse_rate_grad_accumulate(acc3[j], up_j, gn, gp);
    out[j] = diffuse_adjoint_px(a[j], gp, o0[j], ge, o1[j], gw, o2[j], gs, o3[j], gn);
  }
}

// A tile of the row wavefront: rows [y0, y1) and columns [x0, x1) of the image. Its pixels are the
// only ones it writes to shared planes and, in the backward, to the rate-gradient accumulators.
struct Tile {
  int64_t y0, y1, x0, x1;
};

constexpr int64_t kMaxDepth = 16;  // steps per wavefront pass, at most

// Columns per strip of a wavefront pass of n steps (see Stepper): whole rows for the shallow
// passes of a sample that stays in cache, else about as many as fit the rows the pass has in use
// (about 10 per step, and a few of the input and output planes) in kDeepBytes; a multiple of a
// cache line.
template <typename T>
int64_t strip_cols(const Grid& g, int64_t n) {
  constexpr int64_t line = kAlignBytes / int64_t(sizeof(T));
  if (g.resident) return std::max(line, g.W);
  const int64_t fit = kDeepBytes / ((10 * n + 18) * int64_t(sizeof(T)));
  const int64_t strips = (g.W + fit - 1) / fit;
  return std::max(line, g.W / strips / line * line);
}

// How the row wavefront covers a sample: `bands` horizontal bands of rows, each cut into strips of
// strip[n] columns for a pass of n steps (the last strip also takes the remainder, so it is never
// narrow). The tiles of a band run in order, using that band's ring rows; bands run in parallel
// when `parallel`. A wavefront pass (see Stepper) has every tile compute a halo around itself, so
// tiles of one pass never read each other's results; the end of a parallel_for separates the
// passes.
template <typename T>
struct Tiling {
  int64_t H, W, bands;
  bool parallel;
  T* const* rings;  // one set of ring rows per band
  std::array<int64_t, kMaxDepth + 1> strip;

  Tiling(const Grid& g, int64_t bands_, bool parallel_, T* const* rings_)
      : H(g.H), W(g.W), bands(bands_), parallel(parallel_), rings(rings_) {
    for (int64_t n = 1; n <= kMaxDepth; ++n) strip[n] = strip_cols<T>(g, n);
  }
  int64_t strips(int64_t n) const { return std::max<int64_t>(1, W / strip[n]); }
  int64_t band_row(int64_t b) const { return H * b / bands; }
  Tile tile(int64_t b, int64_t k, int64_t n) const {
    return {band_row(b), band_row(b + 1), k * strip[n],
            k + 1 == strips(n) ? W : (k + 1) * strip[n]};
  }
  template <typename Fn>
  void for_bands(Fn&& fn) const {
    if (!parallel) {
      for (int64_t b = 0; b < bands; ++b) fn(b);
      return;
    }
    at::parallel_for(0, bands, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) fn(b);
    });
  }
  // fn(tile, ring) for every tile of a pass of n steps.
  template <typename Fn>
  void each_tile(int64_t n, Fn&& fn) const {
    for_bands([&](int64_t b) {
      for (int64_t k = 0; k < strips(n); ++k) fn(tile(b, k, n), rings[b]);
    });
  }
  // fn(y0, y1) for the rows [y0, y1) of every band (per-row set-up and output work).
  template <typename Fn>
  void each_band(Fn&& fn) const {
    for_bands([&](int64_t b) { fn(band_row(b), band_row(b + 1)); });
  }
};

// Two ways to run steps, chosen by sample size:
// - plane sweep (small samples, which stay in cache): one step at a time over the plane as a
//   single 1-D range from the first to the last inner pixel, the rows one after another (see
//   Grid; in the padded layout of a rerun, the ghost columns between rows included, whose
//   coefficients are zero and which are reset to zero after each step, see clear_ghosts). The
//   long branch-free loop vectorises far better than short rows.
// - row wavefront (large samples): up to `depth` steps in one pass, tile by tile (see Tiling).
//   Within a tile, at time t level s (1 <= s <= S) computes its row t - s + 1 from rows
//   t - s .. t - s + 2 of level s - 1, so only about 10 S rows of the tile's width (S rows of the
//   coefficient planes, 3 S ring rows) are in use at a time. A sample whose planes stay in the
//   last-level cache takes shallow passes over whole rows that fit the L1 cache; a larger one
//   takes deep passes (kMaxDepth steps, so that it is read from memory less often) over tiles
//   that fit the L2 cache. Level s covers the tile widened by S - s rows and columns on each side
//   (clipped to the image): what the levels above it read, so level S yields the tile's own
//   pixels from the pass's input plane alone. Every pixel is computed by the same arithmetic
//   whichever tile computes it (see wavefront on the columns), so the results depend neither on
//   the tiling nor on the number of threads.
template <typename T>
struct Stepper {
  const Grid& g;
  Coefs<T> c;
  int64_t depth;   // steps per wavefront pass
  const T* zero;   // a zero row of Wp (reads above the first row and below the last)

  static constexpr int64_t kLine = kAlignBytes / int64_t(sizeof(T));  // elements per cache line

  // Steps per pass. A pass has about 10 rows per level in use (above) plus a few rows of the
  // input and output planes.
  static int64_t depth_of(const Grid& g) {
    if (!g.resident) return kMaxDepth;
    return std::clamp<int64_t>(kShallowBytes / (10 * g.Wp * int64_t(sizeof(T))), 2, kMaxDepth);
  }
  // Bands for `threads` threads: at most one each, and at least 2 * depth rows high, so that the
  // halo a band recomputes (depth - 1 rows per step on average) stays under half its work.
  static int64_t bands_for(const Grid& g, int64_t threads) {
    return std::clamp<int64_t>(g.H / (2 * depth_of(g)), 1, std::max<int64_t>(threads, 1));
  }
  // Ring rows of one band: 3 rows for each of (kMaxDepth - 1) intermediate levels, then 4 scratch
  // rate-gradient rows (see adjoint), each a slot of Wp read from g.off on (one more slot, as
  // g.off + W may exceed Wp).
  static int64_t scratch_offset_of(const Grid& g) { return (3 * (kMaxDepth - 1) + 1) * g.Wp; }
  static int64_t ring_elems(const Grid& g) { return scratch_offset_of(g) + 5 * g.Wp; }
  int64_t scratch_offset() const { return scratch_offset_of(g) + g.off; }
  static int64_t zero_elems(const Grid& g) { return g.Wp + 2 * g.off; }

  Stepper(const Grid& grid, const T* coefs, const T* zero_row)
      : g(grid), c(coefs, grid), zero(zero_row) {
    depth = depth_of(g);
  }

  int64_t sweep_begin() const { return g.row(0); }
  int64_t sweep_len() const { return g.row(g.H - 1) + g.W - g.row(0); }

  // A plane sweep in the padded layout also writes the ghost columns between rows: 0 * x there,
  // which is 0 only for finite x. Resetting them after every step keeps a NaN or Inf from
  // jumping to the next row (or, through reused buffers, to the next sample). The sweep runs in
  // that layout only where its first run, without ghost columns (see Grid), gave results that
  // are not all finite: a pixel that once holds Inf or NaN holds one in every later state and in
  // what the backward computes from it, so a sample whose results are all finite never had one,
  // and the first run's results are exactly the padded formula's (see redo_sweep). The layout
  // says which run this is: without ghost columns there is nothing to reset.
  void clear_ghosts(T* plane) const {
    if (!g.columns) return;
    for (int64_t y = 0; y + 1 < g.H; ++y) {
      plane[g.row(y) + g.W] = T(0);
      plane[g.row(y + 1) - 1] = T(0);
    }
  }

  // Row y of level s (1 <= s < depth) in a band's ring: column x at [x], written only for x in
  // [0, W), so that [-1] and [W] stay zero (ring rows start zeroed).
  T* ring_row(T* ring, int64_t s, int64_t y) const {
    return ring + ((s - 1) * 3 + y % 3) * g.Wp + g.off;
  }

  // One wavefront pass of S <= depth levels over tile t: level 0 is the plane src, row y of level
  // s < S is level_row(s, y) (a ring row, or a row of a plane the tile owns), row y of level S is
  // dst_row(y) (only the tile's own pixels are written). fn(s, y, x0, x1, up, mid, down, out)
  // computes row y of level s at columns [x0, x1) into out[x] from the rows above, at and below
  // it of level s - 1 (rows outside the image read as zeros).
  //
  // The column runs start on a cache line of the row and end on one or at W, as a whole row's run
  // does, so that their vectors' loads do not split lines (the arithmetic of a pixel is the same
  // in a run's vectors and in its scalar rest: see the top of the file). Rounding the halo out
  // to whole lines adds columns that are computed from whatever the ring holds there and that no
  // level reads.
  template <typename DstRow, typename LevelRow, typename RowFn>
  void wavefront(int64_t S, const Tile& t, const T* src, DstRow&& dst_row, LevelRow&& level_row,
                 RowFn&& fn) const {
    std::array<int64_t, kMaxDepth + 1> lo, hi, x0, x1;  // rows and columns of each level
    for (int64_t s = 1; s <= S; ++s) {
      lo[s] = std::max<int64_t>(0, t.y0 - (S - s));
      hi[s] = std::min<int64_t>(g.H, t.y1 + (S - s));
      x0[s] = std::max<int64_t>(0, t.x0 - (S - s)) / kLine * kLine;
      x1[s] = std::min(g.W, round_up(t.x1 + (S - s), kLine));
    }
    auto input_row = [&](int64_t s, int64_t y) -> const T* {
      if (y < 0 || y >= g.H) return zero + g.off;
      return s == 0 ? src + g.row(y) : level_row(s, y);
    };
    for (int64_t time = lo[1]; time < hi[1] + S - 1; ++time) {
      for (int64_t s = 1; s <= S; ++s) {
        const int64_t y = time - (s - 1);
        if (y < lo[s] || y >= hi[s]) continue;
        fn(s, y, x0[s], x1[s], input_row(s - 1, y - 1), input_row(s - 1, y),
           input_row(s - 1, y + 1), s == S ? dst_row(y) : level_row(s, y));
      }
    }
  }

  // S forward steps from the plane src into the plane dst. keep(s) names a plane that must
  // receive the state after step s (1 <= s < S), or nullptr; other intermediate states go to the
  // scratch planes tmp[0], tmp[1] (plane sweep, wavefront pass ends) or ring rows. tmp[0] is
  // written first, so tmp[1] may be src. With out_rows (wavefront only), the result goes instead
  // to the unpadded rows out_rows + y * W (rows on no cache line in general: the vector loop
  // splits a run into body and remainder by its length alone, not by where it is stored).
  template <typename Keep>
  void forward(int64_t S, const T* src, T* dst, Keep&& keep, T* const tmp[2],
               const Tiling<T>& tiling, T* out_rows = nullptr) const {
    auto plane_for = [&](int64_t s, int64_t parity) -> T* {
      if (s == S) return dst;
      T* k = keep(s);
      return k != nullptr ? k : tmp[parity % 2];
    };
    if (g.sweep) {
      const int64_t b = sweep_begin(), len = sweep_len();
      const T* cur = src;
      for (int64_t s = 1; s <= S; ++s) {
        T* out = plane_for(s, s - 1);
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
      const bool last = s0 + n == S;
      auto dst_row = [&](int64_t y) {
        return last && out_rows != nullptr ? out_rows + y * g.W : to + g.row(y);
      };
      tiling.each_tile(n, [&](const Tile& t, T* ring) {
        // A kept state's rows that the tile owns: computed in place when the tile spans whole
        // rows, else computed with their halo columns in the ring and copied.
        const bool whole_rows = t.x0 == 0 && t.x1 == g.W;
        auto level_row = [&](int64_t s, int64_t y) -> T* {
          if (whole_rows && y >= t.y0 && y < t.y1) {
            if (T* k = keep(s0 + s)) return k + g.row(y);
          }
          return ring_row(ring, s, y);
        };
        wavefront(n, t, from, dst_row, level_row,
                  [&](int64_t s, int64_t y, int64_t x0, int64_t x1, const T* up, const T* mid,
                      const T* down, T* row) {
                    forward_run(c, g.row(y) + x0, x1 - x0, up + x0, mid + x0, down + x0, row + x0);
                    if (whole_rows || s == n || y < t.y0 || y >= t.y1) return;
                    if (T* k = keep(s0 + s)) {
                      std::memcpy(k + g.row(y) + t.x0, row + t.x0, (t.x1 - t.x0) * sizeof(T));
                    }
                  });
      });
      from = to;
      s0 += n;
    }
  }

  // S adjoint steps from gin (= g^{k+S}) into gout (= g^k), where state(s) is the plane of the
  // forward state u^{k+S-s} that step s uses; with kRates, accumulates the rate gradient into acc
  // (each pixel's by the tile that owns it, in step order), else reads neither state nor acc.
  // gin, gout and gtmp are distinct planes; intermediate results alternate so the last lands in
  // gout.
  template <bool kRates, typename State>
  void adjoint(int64_t S, const T* gin, T* gout, State&& state, T* acc, T* gtmp,
               const Tiling<T>& tiling) const {
    if (g.sweep) {
      const int64_t b = sweep_begin(), len = sweep_len();
      const T* cur = gin;
      for (int64_t s = 1; s <= S; ++s) {
        T* out = (S - s) % 2 == 0 ? gout : gtmp;
        const T* u = nullptr;
        if constexpr (kRates) u = state(s) + b;
        adjoint_run<kRates>(c, b, len, cur + b - g.Wp, cur + b, cur + b + g.Wp, u, out + b,
                            kRates ? acc + b : static_cast<T*>(nullptr), g.P);
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
      tiling.each_tile(n, [&](const Tile& t, T* ring) {
        auto level_row = [&](int64_t s, int64_t y) { return ring_row(ring, s, y); };
        auto dst_row = [&](int64_t y) { return to + g.row(y); };
        wavefront(n, t, from, dst_row, level_row,
                  [&](int64_t s, int64_t y, int64_t x0, int64_t x1, const T* up, const T* mid,
                      const T* down, T* out) {
                    if constexpr (!kRates) {
                      adjoint_run<false>(c, g.row(y) + x0, x1 - x0, up + x0, mid + x0, down + x0,
                                         static_cast<const T*>(nullptr), out + x0,
                                         static_cast<T*>(nullptr), 0);
                      return;
                    }
                    const T* u = state(s0 + s) + g.row(y);
                    // Pixels of the halo add their rate gradients to the band's scratch rows
                    // (never read) rather than skip them: the same loop for every pixel.
                    T* scratch = ring + scratch_offset();
                    auto run = [&](bool own, int64_t a, int64_t b) {
                      if (a >= b) return;
                      T* into = own ? acc + g.row(y) + a : scratch + a;
                      adjoint_run<true>(c, g.row(y) + a, b - a, up + a, mid + a, down + a, u + a,
                                        out + a, into, own ? g.P : g.Wp);
                    };
                    if (y < t.y0 || y >= t.y1) {
                      run(false, x0, x1);
                    } else if (x0 == t.x0 && x1 == t.x1) {
                      run(true, x0, x1);
                    } else {
                      run(false, x0, t.x0);
                      run(true, t.x0, t.x1);
                      run(false, t.x1, x1);
                    }
                  });
      });
      from = to;
      s0 += n;
    }
  }
};

// Runs a plane-sweep sample's steps, run(grid, stepper), in the layout without ghost columns
// (see Grid) and, where finite() says its results are not all finite, again in the padded layout
// with the ghost columns reset after every step (see Stepper::clear_ghosts): the workspace's
// first `planes` planes (the coefficients first) are zeroed, build(grid) writes the coefficients
// in that layout, and run repeats the work. For finite results the first run's are the padded
// formula's; otherwise a NaN or Inf could have reached the next row through a row's end.
template <typename T, typename Build, typename Run, typename Finite>
void redo_sweep(const Grid& g, T* work, int64_t planes, const T* zero_row, Build&& build,
                Run&& run, Finite&& finite) {
  run(g, Stepper<T>(g, work, zero_row));
  if (finite()) return;
  const Grid padded = g.padded();
  std::fill(work, work + planes * g.P, T(0));
  build(padded);
  run(padded, Stepper<T>(padded, work, zero_row));
  // the next sample's run reads the unwritten elements of the first layout as zeros
  std::fill(work, work + planes * g.P, T(0));
}

template <typename T>
void to_padded(const T* src, const Grid& g, T* dst, int64_t y0, int64_t y1) {
  for (int64_t y = y0; y < y1; ++y) std::memcpy(dst + g.row(y), src + y * g.W, g.W * sizeof(T));
}

template <typename T>
void from_padded(const T* src, const Grid& g, T* dst, int64_t y0, int64_t y1) {
  for (int64_t y = y0; y < y1; ++y) std::memcpy(dst + y * g.W, src + g.row(y), g.W * sizeof(T));
}

// The per-sample work of the two ops, and its workspace. Samples either run one per thread
// (Tiling::parallel false, one band) or, when there are fewer samples than threads and the grid
// takes the wavefront, one after another with their bands in parallel.
template <typename T>
struct Samples {
  Grid g;
  bool banded;
  int64_t bands;
  Samples(int64_t N, int64_t H, int64_t W) : g(make_grid<T>(H, W)) {
    const int64_t threads = at::get_num_threads();
    banded = !g.sweep && N < threads && Stepper<T>::bands_for(g, threads) > 1;
    bands = banded ? Stepper<T>::bands_for(g, threads) : 1;
  }
  // A workspace of `planes` planes, the zero row and the ring rows of each band, for one thread
  // (or, banded, for the whole call); per_sample(n, tiling, work, zero_row) for each sample, with
  // work the planes. All of them but perhaps those after the first `used` get written.
  template <typename Fn>
  void run(int64_t N, int64_t planes, int64_t used, Fn&& per_sample) const {
    auto with_workspace = [&](int64_t begin, int64_t end, bool parallel) {
      const int64_t ring = g.sweep ? 0 : Stepper<T>::ring_elems(g);
      const int64_t elems = planes * g.P + Stepper<T>::zero_elems(g) + bands * ring;
      Workspace<T> work(elems);
      T* base = work.data;
      if (parallel) {
        // The first touch of a page clears it (most of the set-up time of a large sample): in
        // equal parts on all threads, rather than wherever each band's rows happen to fall.
        constexpr int64_t kPage = 4096 / int64_t(sizeof(T));
        at::parallel_for(0, (used * g.P + kPage - 1) / kPage, 1, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) base[p * kPage] = T(0);
        });
      }
      const T* zero_row = base + planes * g.P;
      std::vector<T*> rings(bands);
      for (int64_t b = 0; b < bands; ++b) {
        rings[b] = base + planes * g.P + Stepper<T>::zero_elems(g) + b * ring;
      }
      const Tiling<T> tiling(g, bands, parallel, rings.data());
      for (int64_t n = begin; n < end; ++n) per_sample(n, tiling, base, zero_row);
    };
    if (banded) {
      with_workspace(0, N, true);
    } else {
      at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
        with_workspace(begin, end, false);
      });
    }
  }
};

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
    const Samples<T> samples(N, H, W);
    const Grid& g = samples.g;
    const int64_t HW = H * W;
    // coefs, input, a scratch plane (the input is the other one once read), and for the plane
    // sweep the output (the wavefront writes its last pass to out directly).
    const bool sweep = g.sweep;
    const int64_t planes = coef_planes(g) + (sweep ? 3 : 2);
    samples.run(N, planes, planes, [&](int64_t n, const Tiling<T>& tiling, T* work,
                                       const T* zero_row) {
      T* coefs = work;
      T* in = coefs + coef_planes(g) * g.P;
      T* const tmp[2] = {in + g.P, in};
      T* res = sweep ? in + 2 * g.P : nullptr;
      tiling.each_band([&](int64_t y0, int64_t y1) {
        build_coefs(rp + n * 4 * HW, g, T(tau), coefs, y0, y1);
        if (!sweep) to_padded(u0p + n * HW, g, in, y0, y1);
      });
      auto no_keep = [](int64_t) -> T* { return nullptr; };
      if (sweep) {
        prefetch_next(n, N, HW, rp, {u0p});
        auto build = [&](const Grid& gg) { build_coefs(rp + n * 4 * HW, gg, T(tau), coefs, 0, H); };
        // in, tmp[0] and res are the sweep's state planes
        auto run = [&](const Grid& gg, const Stepper<T>& st) {
          to_padded(u0p + n * HW, gg, in, 0, H);
          st.forward(steps, in, res, no_keep, tmp, tiling);
          from_padded(res, gg, outp + n * HW, 0, H);
        };
        redo_sweep(g, work, planes, zero_row, build, run,
                   [&] { return all_finite(outp + n * HW, HW); });
      } else {
        const Stepper<T> st(g, coefs, zero_row);
        st.forward(steps, in, nullptr, no_keep, tmp, tiling, outp + n * HW);
      }
    });
  });
  return out;
}

// The gradient of u0 alone: `steps` adjoint steps from grad_out, which need the coefficients
// and three planes per sample, and no forward state.
template <typename T>
void adjoint_only(const T* gp, const T* rp, T* gu0p, int64_t N, int64_t H, int64_t W, T tau,
                  int64_t steps) {
  const Samples<T> samples(N, H, W);
  const Grid& g = samples.g;
  const int64_t HW = H * W;
  const int64_t planes = coef_planes(g) + 3;
  samples.run(N, planes, planes, [&](int64_t n, const Tiling<T>& tiling, T* work,
                                     const T* zero_row) {
    T* coefs = work;
    T* gin = coefs + coef_planes(g) * g.P;
    T* gout = gin + g.P;
    auto run = [&](const Grid& gg, const Stepper<T>& st) {
      tiling.each_band([&](int64_t y0, int64_t y1) { to_padded(gp + n * HW, gg, gin, y0, y1); });
      auto no_state = [](int64_t) -> const T* { return nullptr; };
      st.template adjoint<false>(steps, gin, gout, no_state, nullptr, gout + g.P, tiling);
      tiling.each_band([&](int64_t y0, int64_t y1) {
        from_padded(gout, gg, gu0p + n * HW, y0, y1);
      });
    };
    auto build = [&](const Grid& gg) {
      tiling.each_band([&](int64_t y0, int64_t y1) {
        build_coefs(rp + n * 4 * HW, gg, tau, coefs, y0, y1, /*inflow=*/false);
      });
    };
    build(g);
    if (!g.sweep) return run(g, Stepper<T>(g, coefs, zero_row));
    prefetch_next(n, N, HW, rp, {gp});
    redo_sweep(g, work, planes, zero_row, build, run,
               [&] { return all_finite(gu0p + n * HW, HW); });
  });
}

std::tuple<at::Tensor, at::Tensor> diffuse_backward_cpu(const at::Tensor& grad_in,
                                                         const at::Tensor& u0_in,
                                                         const at::Tensor& rates_in, double tau,
                                                         int64_t steps,
                                                         std::array<bool, 2> output_mask) {
  check_diffuse_backward_args(grad_in, u0_in, rates_in, tau, steps);
  TORCH_CHECK(u0_in.device().is_cpu(), "d2d.diffuse_backward: the CPU kernel got a tensor on ",
              u0_in.device());
  const bool need_u0 = output_mask[0], need_rates = output_mask[1];
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor u0 = u0_in.contiguous();
  const at::Tensor rates = rates_in.contiguous();
  at::Tensor grad_u0 = at::empty(need_u0 ? u0.sizes() : at::IntArrayRef{0}, u0.options());
  at::Tensor grad_rates = at::empty(need_rates ? rates.sizes() : at::IntArrayRef{0}, rates.options());
  const int64_t N = u0.size(0), H = u0.size(1), W = u0.size(2);
  if (u0.numel() == 0 || !(need_u0 || need_rates)) return {grad_u0, grad_rates};
  if (steps == 0) {
    if (need_u0) grad_u0.copy_(grad);
    if (need_rates) grad_rates.zero_();
    return {grad_u0, grad_rates};
  }
  if (!need_rates) {
    AT_DISPATCH_FLOATING_TYPES(u0.scalar_type(), "d2d_diffuse_backward_cpu", [&] {
      adjoint_only<scalar_t>(grad.data_ptr<scalar_t>(), rates.data_ptr<scalar_t>(),
                             grad_u0.data_ptr<scalar_t>(), N, H, W, scalar_t(tau), steps);
    });
    return {grad_u0, grad_rates};
  }

  AT_DISPATCH_FLOATING_TYPES(u0.scalar_type(), "d2d_diffuse_backward_cpu", [&] {
    using T = scalar_t;
    const T* gp = grad.data_ptr<T>();
    const T* u0p = u0.data_ptr<T>();
    const T* rp = rates.data_ptr<T>();
    T* gu0p = need_u0 ? grad_u0.data_ptr<T>() : nullptr;
    T* grp = grad_rates.data_ptr<T>();
    const Samples<T> samples(N, H, W);
    const Grid& g = samples.g;
    const SegmentPlan plan =
        plan_segments(steps, g.P * static_cast<int64_t>(sizeof(T)), kCpuStateBudgetBytes);
    const int64_t HW = H * W;
    // coefs, rate accumulators (4), adjoint planes (3), checkpoints u^{j * len}, segment states
    // u^{j * len + m} (1 <= m < len), and last two scratch planes, which only a forward of more
    // steps than a pass writes.
    const int64_t used = coef_planes(g) + 7 + plan.num_segments + (plan.segment_len - 1);
    samples.run(N, used + 2, used, [&](int64_t n, const Tiling<T>& tiling, T* work,
                                       const T* zero_row) {
      T* coefs = work;
      T* acc = coefs + coef_planes(g) * g.P;
      T* gplanes = acc + 4 * g.P;
      T* ckpt = gplanes + 3 * g.P;
      T* seg = ckpt + plan.num_segments * g.P;
      T* const tmp[2] = {seg + (plan.segment_len - 1) * g.P, seg + plan.segment_len * g.P};
      auto no_keep = [](int64_t) -> T* { return nullptr; };
      T* out_r = grp + n * 4 * HW;
      auto run = [&](const Grid& gg, const Stepper<T>& st) {
        T* gcur = gplanes;
        T* gnext = gplanes + g.P;
        tiling.each_band([&](int64_t y0, int64_t y1) {
          const auto [b, e] = plane_span(gg, y0, y1);
          for (int64_t d = 0; d < 4; ++d) std::fill(acc + d * g.P + b, acc + d * g.P + e, T(0));
          to_padded(u0p + n * HW, gg, ckpt, y0, y1);
          to_padded(gp + n * HW, gg, gcur, y0, y1);
        });
        for (int64_t j = 0; j + 1 < plan.num_segments; ++j) {
          st.forward(plan.segment_len, ckpt + j * g.P, ckpt + (j + 1) * g.P, no_keep, tmp, tiling);
        }
        for (int64_t j = plan.num_segments - 1; j >= 0; --j) {
          const int64_t len = std::min(plan.segment_len, steps - j * plan.segment_len);
          const T* start = ckpt + j * g.P;
          auto state = [&](int64_t m) -> T* {
            return m == 0 ? const_cast<T*>(start) : seg + (m - 1) * g.P;
          };
          if (len > 1) {
            st.forward(len - 1, start, state(len - 1), [&](int64_t m) { return state(m); }, tmp,
                       tiling);
          }
          st.template adjoint<true>(len, gcur, gnext,
                                    [&](int64_t s) -> const T* { return state(len - s); }, acc,
                                    gplanes + 2 * g.P, tiling);
          std::swap(gcur, gnext);
        }
        tiling.each_band([&](int64_t y0, int64_t y1) {
          if (gu0p != nullptr) from_padded(gcur, gg, gu0p + n * HW, y0, y1);
          for (int64_t y = y0; y < y1; ++y) {
            for (int64_t x = 0; x < W; ++x) {
              const int64_t i = gg.row(y) + x, s = y * W + x;
              out_r[s] = x + 1 < W ? T(tau) * acc[i] : T(0);
              out_r[HW + s] = x > 0 ? T(tau) * acc[g.P + i] : T(0);
              out_r[2 * HW + s] = y + 1 < H ? T(tau) * acc[2 * g.P + i] : T(0);
              out_r[3 * HW + s] = y > 0 ? T(tau) * acc[3 * g.P + i] : T(0);
            }
          }
        });
      };
      auto build = [&](const Grid& gg) {
        tiling.each_band([&](int64_t y0, int64_t y1) {
          build_coefs(rp + n * 4 * HW, gg, T(tau), coefs, y0, y1);
        });
      };
      build(g);
      if (!g.sweep) return run(g, Stepper<T>(g, coefs, zero_row));
      prefetch_next(n, N, HW, rp, {u0p, gp});
      // A non-finite state that a step reads reaches the rate gradient of each of its pixel's
      // directions, of which at least one is inside the image unless the image is one pixel
      // (which has no neighbour to pass it to); one that only the last step writes reaches no
      // result of the backward, whatever the layout.
      redo_sweep(g, work, used + 2, zero_row, build, run, [&] {
        return all_finite(out_r, 4 * HW) && (gu0p == nullptr || all_finite(gu0p + n * HW, HW));
      });
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
