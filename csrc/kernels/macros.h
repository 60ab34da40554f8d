// Portability macros shared by the CPU (C++) and CUDA translation units.
#pragma once

#if defined(__CUDACC__)
#define D2D_HD __host__ __device__ __forceinline__
#else
#define D2D_HD inline
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

namespace d2d {

// exp that resolves to the device intrinsic in CUDA code and to std::exp on the host.
template <typename T>
D2D_HD T math_exp(T x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}


// Products, sums and differences rounded one at a time. nvcc merges a product and the sum it feeds
// into one fused multiply-add (its default, --fmad=true), which rounds once instead of twice; the
// CPU kernels are compiled without that contraction, so written as plain `a * b + c` the GPU's
// results would differ from the CPU's in the last bits. The __f*_rn intrinsics are never merged,
// so device code that uses these helpers rounds as the CPU does. The CUDA emulator stands in for
// the intrinsics (csrc/emu/cuda_emu.h). The templates serve the host and the CPU kernels' vector
// types; the CPU kernels' file turns contraction off itself.
#if defined(__CUDA_ARCH__) || defined(D2D_CUDA_EMULATION)
#define D2D_ROUNDED_DEVICE_MATH 1
#endif

template <typename T>
D2D_HD T mul_rn(T a, T b) {
  return a * b;
}
template <typename T>
D2D_HD T add_rn(T a, T b) {
  return a + b;
}
template <typename T>
D2D_HD T sub_rn(T a, T b) {
  return a - b;
}
#if defined(D2D_ROUNDED_DEVICE_MATH)
D2D_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
D2D_HD double mul_rn(double a, double b) { return __dmul_rn(a, b); }
D2D_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
D2D_HD double add_rn(double a, double b) { return __dadd_rn(a, b); }
D2D_HD float sub_rn(float a, float b) { return __fsub_rn(a, b); }
D2D_HD double sub_rn(double a, double b) { return __dsub_rn(a, b); }
#endif

D2D_HD float bits_to_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
#endif
}

// exp(x) for x <= 0, written so that a loop of it vectorises (libm's expf does not): Cody-Waite
// reduction x = n ln2 + r with |r| <= ln2/2, a degree-7 Taylor polynomial (relative error below
// 2e-8, under one float ulp) and 2^n from the exponent bits. Arguments below -87 return
// exp(-87) ~ 1.6e-38 instead of a denormal. The double overload calls the exact exp.
D2D_HD float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  // Round x / ln2 to the nearest integer by adding and removing 1.5 * 2^23 (no libm call, so the
  // loop vectorises without SSE4.1).
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;  // ln2 split in a short high part and a low part
  r = r + n * 2.12194440e-4f;
  float p = 1.98412698e-4f;  // 1/7!
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

D2D_HD double exp_nonpositive(double x) { return math_exp(x); }

}  // namespace d2d
