// Per-pixel math of the d2d::diffuse op, shared by the CPU and CUDA kernels.
//
// The op is the explicit master equation of a random walk on the pixel grid.
// Directions d: 0 -> (y, x+1) "east", 1 -> (y, x-1) "west", 2 -> (y+1, x) "south",
// 3 -> (y-1, x) "north"; opp(d) swaps 0<->1 and 2<->3. With out-coefficients
//     o_d(p) = tau * r_d(p) if q_d(p) is inside the image, else 0,
//     a(p)   = 1 - sum_d o_d(p),
// one step is u' = A u with
//     u'_p = a(p) u_p + sum_d o_opp(d)(q_d(p)) u_{q_d(p)}          (forward: gather the inflow)
// and the adjoint step g = A^T g' that the backward runs is
//     g_p  = a(p) g'_p + sum_d o_d(p) g'_{q_d(p)}                  (adjoint: gather along the outflow)
// The derivative of <g', A u> with respect to r_d(p) is tau * u_p * (g'_{q_d(p)} - g'_p).
//
// Kernels store o_d and a once per sample; neighbours outside the image (or outside a tile's
// loaded region) read as zero, which the zero coefficients make harmless.
//
// Every product, sum and difference is rounded on its own, in the order written here (mul_rn,
// add_rn and sub_rn, macros.h), so that the CPU and CUDA kernels give the same bits. Both also
// carry the rate gradient's sum over the steps in one running sum (diffuse_rate_grad_accumulate).
#pragma once

#include "macros.h"

namespace d2d {

// Out-coefficient of one direction: tau * rate if the neighbour lies inside the image,
// else 0 (zero-flux boundary).
template <typename T>
D2D_HD T diffuse_out_coef(T rate, T tau, bool inside) {
  return inside ? mul_rn(tau, rate) : T(0);
}

// Out-coefficients o[0..3] and self-coefficient a of a pixel from its four rates.
template <typename T>
D2D_HD void diffuse_out_coefs(T r0, T r1, T r2, T r3, T tau, bool has_e, bool has_w,
                              bool has_s, bool has_n, T* o, T* a) {
  o[0] = diffuse_out_coef(r0, tau, has_e);
  o[1] = diffuse_out_coef(r1, tau, has_w);
  o[2] = diffuse_out_coef(r2, tau, has_s);
  o[3] = diffuse_out_coef(r3, tau, has_n);
  *a = sub_rn(T(1), add_rn(add_rn(add_rn(o[0], o[1]), o[2]), o[3]));
}

// One pixel of the forward step. in_e is the east neighbour's coefficient towards p
// (its o_1), in_w the west neighbour's o_0, in_s the south neighbour's o_3, in_n the north's o_2.
template <typename T>
D2D_HD T diffuse_forward_px(T a, T u, T in_e, T u_e, T in_w, T u_w, T in_s, T u_s, T in_n,
                            T u_n) {
  return add_rn(add_rn(add_rn(add_rn(mul_rn(a, u), mul_rn(in_e, u_e)), mul_rn(in_w, u_w)),
                       mul_rn(in_s, u_s)),
                mul_rn(in_n, u_n));
}

// One pixel of the adjoint step: o0..o3 are p's own out-coefficients, g_* the neighbours'
// adjoint values after the step.
template <typename T>
D2D_HD T diffuse_adjoint_px(T a, T g, T o0, T g_e, T o1, T g_w, T o2, T g_s, T o3, T g_n) {
  return add_rn(add_rn(add_rn(add_rn(mul_rn(a, g), mul_rn(o0, g_e)), mul_rn(o1, g_w)),
                       mul_rn(o2, g_s)),
                mul_rn(o3, g_n));
}

// Contribution of one step to d/d r_d(p), without the factor tau (applied once at the end).
template <typename T>
D2D_HD T diffuse_rate_grad_px(T u, T g_q, T g_p) {
  return mul_rn(u, sub_rn(g_q, g_p));
}

// The running sum of those contributions over the steps, latest step first: acc + u (g_q - g_p),
// the product rounded before the sum.
template <typename T>
D2D_HD T diffuse_rate_grad_accumulate(T acc, T u, T g_q, T g_p) {
  return add_rn(acc, diffuse_rate_grad_px(u, g_q, g_p));
}

}  // namespace d2d
