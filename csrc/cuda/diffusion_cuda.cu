// CUDA kernels of d2d::diffuse and d2d::diffuse_backward.
//
// Each block owns a rectangular tile of one sample, loads it with a halo into shared memory and
// runs several steps there before writing back (temporal blocking): the halo shrinks by one pixel
// per step, so a halo of S pixels allows S steps per launch. When a whole sample fits in one tile
// (small crops) there is no halo and all steps run in a single launch. The per-pixel math comes
// from kernels/diffusion_math.h, shared with the CPU kernels.
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
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../kernels/diffusion_math.h"
#include "../segments.h"
#include "launch.h"

namespace d2d {
namespace {

constexpr int kBX = 32, kBY = 16;        // threads per block: 512, as a 32 x 16 grid
constexpr int kMaxRegion = 64;           // largest tile side (including the halo)
constexpr int kPY = kMaxRegion / kBY;    // rows per thread at most
constexpr int kPX = kMaxRegion / kBX;    // columns per thread at most
constexpr int64_t kMaxGridZ = D2D_GRID_YZ_LIMIT;  // samples per launch (grid.z limit)

// Launch geometry: tiles of tile_h x tile_w interior pixels, loaded with a halo of halo_y/halo_x.
struct Geom {
  int H, W;
  int tile_h, tile_w, halo_y, halo_x;
  int load_h, load_w;  // largest loaded region: the shared-memory layout
  int tiles_y, tiles_x;
  int steps_per_launch;
};

template <typename T>
int64_t smem_bytes(int load_h, int load_w) {
  return (2 * int64_t(load_h + 2) * (load_w + 2) + 5 * int64_t(load_h) * load_w) * sizeof(T);
}

// The environment's cap on the tile side: D2D_CUDA_TILE_SIDE = 16, 32, 48 or 64 (default 64), for
// measuring which side is fastest on a GPU (a larger side wastes less on halos, a smaller one
// lets more blocks share a multiprocessor).
int tile_side_cap() {
  static const int cap = [] {
    const char* v = std::getenv("D2D_CUDA_TILE_SIDE");
    if (v == nullptr || *v == '\0') return kMaxRegion;
    const std::string s(v);
    TORCH_CHECK(s == "16" || s == "32" || s == "48" || s == "64",
                "D2D_CUDA_TILE_SIDE must be 16, 32, 48 or 64, got '", s, "'");
    return std::stoi(s);
  }();
  return cap;
}

// Largest square tile side (64, 48, 32 or 16, at most the cap) whose shared memory fits the device.
template <typename T>
int region_side() {
  int dev = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  for (int side : {64, 48, 32}) {
    if (side <= tile_side_cap() && smem_bytes<T>(side, side) <= optin) return side;
  }
  return 16;
}

template <typename T>
Geom make_geom(int64_t H64, int64_t W64, int64_t steps) {
  // Pixel coordinates are int in the kernels, with room for a tile past the edge.
  TORCH_CHECK(H64 <= INT32_MAX - kMaxRegion && W64 <= INT32_MAX - kMaxRegion,
              "d2d.diffuse (CUDA): H and W must be below ", INT32_MAX - kMaxRegion, ", got H=", H64,
              ", W=", W64);
  const int H = static_cast<int>(H64), W = static_cast<int>(W64);
  const int R = region_side<T>();
  Geom g{};
  g.H = H;
  g.W = W;
  const bool fit_y = H <= R, fit_x = W <= R;
  if (fit_y && fit_x) {
    g.steps_per_launch = static_cast<int>(std::min<int64_t>(steps, 1 << 30));
  } else {
    g.steps_per_launch = static_cast<int>(std::min<int64_t>(steps, R / 8));
  }
  const int S = std::max(g.steps_per_launch, 1);
  g.halo_y = fit_y ? 0 : S;
  g.halo_x = fit_x ? 0 : S;
  g.tile_h = fit_y ? H : R - 2 * S;
  g.tile_w = fit_x ? W : R - 2 * S;
  g.tiles_y = (H + g.tile_h - 1) / g.tile_h;
  g.tiles_x = (W + g.tile_w - 1) / g.tile_w;
  g.load_h = std::min(H, g.tile_h + 2 * g.halo_y);
  g.load_w = std::min(W, g.tile_w + 2 * g.halo_x);
  // the adjoint kernel's per-thread accumulators cover kMaxRegion x kMaxRegion pixels
  TORCH_INTERNAL_ASSERT(g.load_h <= kMaxRegion && g.load_w <= kMaxRegion);
  // the tiles of a sample go in grid.x (limit 2^31 - 1; grid.y would be 65535)
  TORCH_CHECK(int64_t(g.tiles_y) * g.tiles_x <= INT32_MAX,
              "d2d.diffuse (CUDA): too many tiles per sample (", int64_t(g.tiles_y) * g.tiles_x, ")");
  return g;
}

// Block-local view of a tile: interior [iy0, iy1) x [ix0, ix1), loaded region from (ly0, lx0)
// of size LH x LW, and the shared-memory planes.
template <typename T>
struct Tile {
  int iy0, iy1, ix0, ix1, ly0, lx0, LH, LW;
  int SW, P;  // padded row stride of the state planes, size of a coefficient plane
  T* buf0;
  T* buf1;
  T* cf;  // 5 coefficient planes of P, indexed ly * load_w + lx

  __device__ Tile(const Geom& g, T* smem) {
    iy0 = static_cast<int>(blockIdx.x / g.tiles_x) * g.tile_h;
    ix0 = static_cast<int>(blockIdx.x % g.tiles_x) * g.tile_w;
    iy1 = min(iy0 + g.tile_h, g.H);
    ix1 = min(ix0 + g.tile_w, g.W);
    ly0 = max(iy0 - g.halo_y, 0);
    lx0 = max(ix0 - g.halo_x, 0);
    LH = min(iy1 + g.halo_y, g.H) - ly0;
    LW = min(ix1 + g.halo_x, g.W) - lx0;
    SW = g.load_w + 2;
    P = g.load_h * g.load_w;
    buf0 = smem;
    buf1 = smem + (g.load_h + 2) * SW;
    cf = buf1 + (g.load_h + 2) * SW;
  }
  __device__ bool interior(int gy, int gx) const {
    return gy >= iy0 && gy < iy1 && gx >= ix0 && gx < ix1;
  }
};

template <typename T>
__device__ void zero_planes(T* p, int count) {
  const int tid = threadIdx.y * kBX + threadIdx.x;
  for (int i = tid; i < count; i += kBX * kBY) p[i] = T(0);
}

// Runs `nsteps` forward steps of every tile. Input u_in (N, H, W); if u_out is given, the result
// goes there. If states is given, the state after global step k = k0 + s + 1 is written to
// states[k / every - 1] (slots of N*H*W) when k % every == 0 and k < limit.
template <typename T>
__global__ void __launch_bounds__(kBX* kBY)
    diffuse_forward_kernel(const T* __restrict__ u_in, const T* __restrict__ rates,
                           T* __restrict__ u_out, T* __restrict__ states, int64_t every,
                           int64_t k0, int64_t limit, int nsteps, int64_t n0, int64_t N, T tau,
                           Geom g) {
  D2D_DYNAMIC_SMEM(smem_raw);  // used as T*, T up to double
  Tile<T> t(g, reinterpret_cast<T*>(smem_raw));
  const int64_t n = n0 + blockIdx.z;
  const int64_t HW = int64_t(g.H) * g.W;
  const T* r = rates + n * 4 * HW;
  zero_planes(t.buf0, 2 * (g.load_h + 2) * t.SW);
  __syncthreads();
  for (int ly = threadIdx.y; ly < t.LH; ly += kBY) {
    for (int lx = threadIdx.x; lx < t.LW; lx += kBX) {
      const int gy = t.ly0 + ly, gx = t.lx0 + lx;
      const int64_t s = int64_t(gy) * g.W + gx;
      T o[4], a;
      diffuse_out_coefs(r[s], r[HW + s], r[2 * HW + s], r[3 * HW + s], tau, gx + 1 < g.W, gx > 0,
                        gy + 1 < g.H, gy > 0, o, &a);
      const int c = ly * g.load_w + lx;
      // Inflow coefficients: each neighbour's out-coefficient towards this pixel.
      t.cf[c] = a;
      t.cf[t.P + c] = gx + 1 < g.W ? diffuse_out_coef(r[HW + s + 1], tau, true) : T(0);
      t.cf[2 * t.P + c] = gx > 0 ? diffuse_out_coef(r[s - 1], tau, true) : T(0);
      t.cf[3 * t.P + c] = gy + 1 < g.H ? diffuse_out_coef(r[3 * HW + s + g.W], tau, true) : T(0);
      t.cf[4 * t.P + c] = gy > 0 ? diffuse_out_coef(r[2 * HW + s - g.W], tau, true) : T(0);
      t.buf0[(ly + 1) * t.SW + lx + 1] = u_in[n * HW + s];
    }
  }
  __syncthreads();
  T* cur = t.buf0;
  T* nxt = t.buf1;
  const int P = t.P, SW = t.SW;
  for (int st = 0; st < nsteps; ++st) {
    const int64_t k = k0 + st + 1;
    const bool store = states != nullptr && k % every == 0 && k < limit;
    for (int ly = threadIdx.y; ly < t.LH; ly += kBY) {
      for (int lx = threadIdx.x; lx < t.LW; lx += kBX) {
        const int i = (ly + 1) * SW + lx + 1, c = ly * g.load_w + lx;
        const T v = diffuse_forward_px(t.cf[c], cur[i], t.cf[P + c], cur[i + 1], t.cf[2 * P + c],
                                       cur[i - 1], t.cf[3 * P + c], cur[i + SW], t.cf[4 * P + c],
                                       cur[i - SW]);
        nxt[i] = v;
        const int gy = t.ly0 + ly, gx = t.lx0 + lx;
        if (store && t.interior(gy, gx)) {
          states[(k / every - 1) * N * HW + n * HW + int64_t(gy) * g.W + gx] = v;
        }
      }
    }
    __syncthreads();
    T* tmp = cur;
    cur = nxt;
    nxt = tmp;
  }
  if (u_out != nullptr) {
    for (int ly = threadIdx.y; ly < t.LH; ly += kBY) {
      for (int lx = threadIdx.x; lx < t.LW; lx += kBX) {
        const int gy = t.ly0 + ly, gx = t.lx0 + lx;
        if (t.interior(gy, gx)) u_out[n * HW + int64_t(gy) * g.W + gx] = cur[(ly + 1) * SW + lx + 1];
      }
    }
  }
}

// Runs `nsteps` adjoint steps: from g_in = g^{k_lo + nsteps} down to g_out = g^{k_lo}, with the
// forward states u^{k_lo + s} at states[s] (slots of N*H*W), and (kRates) carries the rate
// gradient's running sum in grad_rates (N, 4, H, W): it starts from what the launches before left
// there (zeros before the first) and adds these steps one by one, as the CPU kernel's sum over all
// steps does, so that both round alike; the last launch (`finish`) stores tau times the sum, and 0
// where the neighbour is outside the image. Without kRates, states and grad_rates are not read.
template <bool kRates, typename T>
__global__ void __launch_bounds__(kBX* kBY)
    diffuse_adjoint_kernel(const T* __restrict__ g_in, const T* __restrict__ rates,
                           const T* __restrict__ states, T* __restrict__ g_out,
                           T* __restrict__ grad_rates, int nsteps, int64_t n0, int64_t N, T tau,
                           bool finish, Geom g) {
  D2D_DYNAMIC_SMEM(smem_raw);  // used as T*, T up to double
  Tile<T> t(g, reinterpret_cast<T*>(smem_raw));
  const int64_t n = n0 + blockIdx.z;
  const int64_t HW = int64_t(g.H) * g.W;
  const T* r = rates + n * 4 * HW;
  zero_planes(t.buf0, 2 * (g.load_h + 2) * t.SW);
  __syncthreads();
  const int P = t.P, SW = t.SW;
  for (int ly = threadIdx.y; ly < t.LH; ly += kBY) {
    for (int lx = threadIdx.x; lx < t.LW; lx += kBX) {
      const int gy = t.ly0 + ly, gx = t.lx0 + lx;
      const int64_t s = int64_t(gy) * g.W + gx;
      T o[4], a;
      diffuse_out_coefs(r[s], r[HW + s], r[2 * HW + s], r[3 * HW + s], tau, gx + 1 < g.W, gx > 0,
                        gy + 1 < g.H, gy > 0, o, &a);
      const int c = ly * g.load_w + lx;
      t.cf[c] = a;
      for (int d = 0; d < 4; ++d) t.cf[(d + 1) * P + c] = o[d];
      t.buf0[(ly + 1) * SW + lx + 1] = g_in[n * HW + s];
    }
  }
  __syncthreads();
  T acc[kPY][kPX][4];
#pragma unroll
  for (int py = 0; py < kPY; ++py) {
#pragma unroll
    for (int px = 0; px < kPX; ++px) {
      const int ly = threadIdx.y + py * kBY, lx = threadIdx.x + px * kBX;
      const int gy = t.ly0 + ly, gx = t.lx0 + lx;
      const bool own = kRates && ly < t.LH && lx < t.LW && t.interior(gy, gx);
      const T* gr = own ? grad_rates + n * 4 * HW + int64_t(gy) * g.W + gx : nullptr;
#pragma unroll
      for (int d = 0; d < 4; ++d) acc[py][px][d] = own ? gr[d * HW] : T(0);
    }
  }

  T* cur = t.buf0;
  T* nxt = t.buf1;
  for (int st = nsteps - 1; st >= 0; --st) {
    const T* u = kRates ? states + int64_t(st) * N * HW + n * HW : nullptr;
#pragma unroll
    for (int py = 0; py < kPY; ++py) {
#pragma unroll
      for (int px = 0; px < kPX; ++px) {
        const int ly = threadIdx.y + py * kBY, lx = threadIdx.x + px * kBX;
        if (ly < t.LH && lx < t.LW) {
          const int i = (ly + 1) * SW + lx + 1, c = ly * g.load_w + lx;
          const T gp = cur[i], ge = cur[i + 1], gw = cur[i - 1], gs = cur[i + SW], gn = cur[i - SW];
          const int gy = t.ly0 + ly, gx = t.lx0 + lx;
          if (kRates && t.interior(gy, gx)) {
            const T up = u[int64_t(gy) * g.W + gx];
            acc[py][px][0] = diffuse_rate_grad_accumulate(acc[py][px][0], up, ge, gp);
            acc[py][px][1] = diffuse_rate_grad_accumulate(acc[py][px][1], up, gw, gp);
            acc[py][px][2] = diffuse_rate_grad_accumulate(acc[py][px][2], up, gs, gp);
            acc[py][px][3] = diffuse_rate_grad_accumulate(acc[py][px][3], up, gn, gp);
          }
          nxt[i] = diffuse_adjoint_px(t.cf[c], gp, t.cf[P + c], ge, t.cf[2 * P + c], gw,
                                      t.cf[3 * P + c], gs, t.cf[4 * P + c], gn);
        }
      }
    }
    __syncthreads();
    T* tmp = cur;
    cur = nxt;
    nxt = tmp;
  }
#pragma unroll
  for (int py = 0; py < kPY; ++py) {
#pragma unroll
    for (int px = 0; px < kPX; ++px) {
      const int ly = threadIdx.y + py * kBY, lx = threadIdx.x + px * kBX;
      if (ly < t.LH && lx < t.LW) {
        const int gy = t.ly0 + ly, gx = t.lx0 + lx;
        if (t.interior(gy, gx)) {
          const int64_t s = int64_t(gy) * g.W + gx;
          g_out[n * HW + s] = cur[(ly + 1) * SW + lx + 1];
          if (!kRates) continue;
          T* gr = grad_rates + n * 4 * HW + s;
          const bool inside[4] = {gx + 1 < g.W, gx > 0, gy + 1 < g.H, gy > 0};
#pragma unroll
          for (int d = 0; d < 4; ++d) {
            gr[d * HW] = !finish ? acc[py][px][d] : inside[d] ? mul_rn(tau, acc[py][px][d]) : T(0);
          }
        }
      }
    }
  }
}

// Host-side driver: owns the geometry and launches the kernels over chunks of samples.
template <typename T>
struct Launcher {
  Geom g;
  int64_t N, HW, smem;
  T tau;
  const T* rates;
  cudaStream_t stream;

  Launcher(const at::Tensor& rates_t, int64_t steps, double tau_d)
      : N(rates_t.size(0)),
        HW(rates_t.size(2) * rates_t.size(3)),
        tau(T(tau_d)),
        rates(rates_t.data_ptr<T>()),
        stream(c10::cuda::getCurrentCUDAStream()) {
    g = make_geom<T>(rates_t.size(2), rates_t.size(3), steps);
    smem = smem_bytes<T>(g.load_h, g.load_w);
    C10_CUDA_CHECK(cudaFuncSetAttribute(diffuse_forward_kernel<T>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    C10_CUDA_CHECK(cudaFuncSetAttribute(diffuse_adjoint_kernel<true, T>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    C10_CUDA_CHECK(cudaFuncSetAttribute(diffuse_adjoint_kernel<false, T>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }

  // Forward from u_in through `steps` steps (several launches if tiles need halos).
  // states/every/limit as in diffuse_forward_kernel, with k counted from k0; u_out optional.
  void forward(const T* u_in, T* u_out, int64_t steps, T* states, int64_t every, int64_t k0,
               int64_t limit, T* scratch0, T* scratch1) {
    const T* src = u_in;
    for (int64_t done = 0; done < steps;) {
      const int n = static_cast<int>(std::min<int64_t>(g.steps_per_launch, steps - done));
      const bool last = done + n == steps;
      T* dst = last ? u_out : (src == scratch0 ? scratch1 : scratch0);
      launch_forward(src, dst, states, every, k0 + done, limit, n);
      src = dst;
      done += n;
    }
  }

  void launch_forward(const T* u_in, T* u_out, T* states, int64_t every, int64_t k0,
                      int64_t limit, int nsteps) {
    for (int64_t n0 = 0; n0 < N; n0 += kMaxGridZ) {
      const dim3 grid(static_cast<unsigned>(g.tiles_x * g.tiles_y), 1,
                      static_cast<unsigned>(std::min(kMaxGridZ, N - n0)));
      D2D_LAUNCH(diffuse_forward_kernel<T>, grid, dim3(kBX, kBY), smem, stream,
                 u_in, rates, u_out, states, every, k0, limit, nsteps, n0, N, tau, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }

  // grad_rates == nullptr: the adjoint steps alone (states not read). finish: the last launch
  // of the backward (see diffuse_adjoint_kernel).
  void launch_adjoint(const T* g_in, const T* states, T* g_out, T* grad_rates, int nsteps,
                      bool finish) {
    for (int64_t n0 = 0; n0 < N; n0 += kMaxGridZ) {
      const dim3 grid(static_cast<unsigned>(g.tiles_x * g.tiles_y), 1,
                      static_cast<unsigned>(std::min(kMaxGridZ, N - n0)));
      auto* adjoint_kernel =
          grad_rates == nullptr ? &diffuse_adjoint_kernel<false, T> : &diffuse_adjoint_kernel<true, T>;
      D2D_LAUNCH(adjoint_kernel, grid, dim3(kBX, kBY), smem, stream,
                 g_in, rates, states, g_out, grad_rates, nsteps, n0, N, tau, finish, g);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
};

// The adjoint's running gradient, from the op's incoming gradient down to u0's: it ping-pongs
// between two tensors of its own, so that the last one is returned without a copy.
template <typename T>
struct AdjointChain {
  at::Tensor planes[2];
  T* buf[2];
  const T* cur;
  int which = 0;  // the plane written next

  AdjointChain(const at::Tensor& grad, const at::Tensor& like)
      : planes{at::empty(like.sizes(), like.options()), at::empty(like.sizes(), like.options())},
        buf{planes[0].data_ptr<T>(), planes[1].data_ptr<T>()},
        cur(grad.data_ptr<T>()) {}

  // Adjoint steps len .. 1 of a stretch whose forward states u^s lie at states + s * NHW
  // (nullptr: u0's gradient alone, no states), in launches of at most steps_per_launch steps.
  // last: the stretch that ends at step 0, whose last launch finishes the rate gradient.
  void run(Launcher<T>& L, int64_t len, const T* states, int64_t NHW, T* grad_rates, bool last) {
    for (int64_t hi = len; hi > 0;) {
      const int64_t lo = std::max<int64_t>(0, hi - L.g.steps_per_launch);
      L.launch_adjoint(cur, states == nullptr ? nullptr : states + lo * NHW, buf[which],
                       grad_rates, static_cast<int>(hi - lo), last && lo == 0);
      cur = buf[which];
      which ^= 1;
      hi = lo;
    }
  }

  // The gradient after the last run (at least one step run).
  at::Tensor result() const { return planes[cur == buf[0] ? 0 : 1]; }
};

at::Tensor diffuse_cuda(const at::Tensor& u0_in, const at::Tensor& rates_in, double tau,
                        int64_t steps) {
  check_diffuse_args(u0_in, rates_in, tau, steps);
  TORCH_CHECK(u0_in.is_cuda(), "d2d.diffuse: the CUDA kernel got a tensor on ", u0_in.device());
  const c10::cuda::CUDAGuard guard(u0_in.device());
  const at::Tensor u0 = u0_in.contiguous();
  const at::Tensor rates = rates_in.contiguous();
  at::Tensor out = at::empty(u0.sizes(), u0.options());
  if (out.numel() == 0) return out;
  if (steps == 0) return out.copy_(u0);
  AT_DISPATCH_FLOATING_TYPES(u0.scalar_type(), "d2d_diffuse_cuda", [&] {
    Launcher<scalar_t> L(rates, steps, tau);
    at::Tensor scratch;
    if (steps > L.g.steps_per_launch) scratch = at::empty({2, u0.numel()}, u0.options());
    scalar_t* s0 = scratch.defined() ? scratch.data_ptr<scalar_t>() : nullptr;
    L.forward(u0.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), steps, nullptr, 1, 0, 0, s0,
              s0 == nullptr ? nullptr : s0 + u0.numel());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> diffuse_backward_cuda(const at::Tensor& grad_in,
                                                          const at::Tensor& u0_in,
                                                          const at::Tensor& rates_in, double tau,
                                                          int64_t steps,
                                                          std::array<bool, 2> output_mask) {
  check_diffuse_backward_args(grad_in, u0_in, rates_in, tau, steps);
  TORCH_CHECK(u0_in.is_cuda(), "d2d.diffuse_backward: the CUDA kernel got a tensor on ",
              u0_in.device());
  const c10::cuda::CUDAGuard guard(u0_in.device());
  const bool need_u0 = output_mask[0], need_rates = output_mask[1];
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor u0 = u0_in.contiguous();
  const at::Tensor rates = rates_in.contiguous();
  at::Tensor grad_rates = need_rates ? at::zeros(rates.sizes(), rates.options())
                                     : at::empty({0}, rates.options());
  auto u0_result = [&](at::Tensor g) { return need_u0 ? g : at::empty({0}, u0.options()); };
  if (u0.numel() == 0 || !(need_u0 || need_rates)) {
    return {u0_result(at::empty(u0.sizes(), u0.options())), grad_rates};
  }
  if (steps == 0) return {u0_result(grad.clone()), grad_rates};
  if (!need_rates) {  // the adjoint chain alone: no forward states
    at::Tensor grad_u0;
    AT_DISPATCH_FLOATING_TYPES(u0.scalar_type(), "d2d_diffuse_backward_cuda", [&] {
      using T = scalar_t;
      Launcher<T> L(rates, steps, tau);
      AdjointChain<T> chain(grad, u0);
      chain.run(L, steps, nullptr, 0, nullptr, true);
      grad_u0 = chain.result();
    });
    return {grad_u0, grad_rates};
  }

  at::Tensor grad_u0;
  AT_DISPATCH_FLOATING_TYPES(u0.scalar_type(), "d2d_diffuse_backward_cuda", [&] {
    using T = scalar_t;
    const int64_t NHW = u0.numel();
    Launcher<T> L(rates, steps, tau);
    const SegmentPlan plan =
        plan_segments(steps, NHW * static_cast<int64_t>(sizeof(T)), kCudaStateBudgetBytes);
    // Work planes: 2 forward scratch, (num_segments - 1) checkpoints u^{j * len}, j >= 1, and
    // segment_len segment states (freed on return; the chain's planes are its own).
    const int64_t n_ckpt = plan.num_segments - 1;
    at::Tensor work = at::empty({2 + n_ckpt + plan.segment_len, NHW}, u0.options());
    AdjointChain<T> chain(grad, u0);
    T* w = work.data_ptr<T>();
    T* scratch0 = w;
    T* scratch1 = w + NHW;
    T* ckpt = w + 2 * NHW;                // ckpt + (j - 1) * NHW holds u^{j * len}
    T* seg = ckpt + n_ckpt * NHW;         // seg + m * NHW holds u^{j * len + m}
    const T* u0p = u0.data_ptr<T>();
    if (plan.num_segments > 1) {  // up to the last checkpoint u^{n_ckpt * len}, no further
      L.forward(u0p, nullptr, n_ckpt * plan.segment_len, ckpt, plan.segment_len, 0, steps, scratch0,
                scratch1);
    }
    T* grp = grad_rates.data_ptr<T>();
    for (int64_t j = plan.num_segments - 1; j >= 0; --j) {
      const int64_t base = j * plan.segment_len;
      const int64_t len = std::min(plan.segment_len, steps - base);
      const T* start = j == 0 ? u0p : ckpt + (j - 1) * NHW;
      C10_CUDA_CHECK(cudaMemcpyAsync(seg, start, NHW * sizeof(T), cudaMemcpyDeviceToDevice,
                                     L.stream));
      // Recompute u^{base + 1 .. base + len - 1} into seg[1 ..].
      if (len > 1) L.forward(seg, nullptr, len - 1, seg + NHW, 1, 0, len, scratch0, scratch1);
      // Adjoint steps from the segment's end down to its start.
      chain.run(L, len, seg, NHW, grp, j == 0);
    }
    grad_u0 = chain.result();
  });
  return {u0_result(grad_u0), grad_rates};
}

}  // namespace

TORCH_LIBRARY_IMPL(d2d, CUDA, m) {
  m.impl("diffuse", &diffuse_cuda);
  m.impl("diffuse_backward", &diffuse_backward_cuda);
}

}  // namespace d2d
