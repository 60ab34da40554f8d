// Per-element math of the d2d::soft_iou op, shared by the CPU and CUDA kernels.
//
// The input x is a logit (p = sigmoid(x)) or, with from_logits false, the probability p itself.
//
// With p = sigmoid(logit) and per-sample sums I = sum p*t, Sp = sum p, St = sum t:
//     loss = 1 - (I + s) / (Sp + St - I + s)            (s = smooth)
// dloss/dI = -(D + Nm) / D^2,  dloss/dSp = dloss/dSt = Nm / D^2,  with Nm = I + s, D = Sp+St-I+s.
#pragma once

#include "macros.h"

namespace d2d {

// p = sigmoid(x) and its slope p (1 - p) = e / (1 + e)^2 (e = exp(-|x|)): overflow-free and
// branch-free (vectorises on the CPU), the slope without the cancellation of 1 - p near p = 1.
template <typename T>
D2D_HD void sigmoid_slope(T x, T* p, T* slope) {
  const T e = exp_nonpositive(x >= T(0) ? -x : x);  // in (0, 1]
  const T s = T(1) / (T(1) + e);
  *p = x >= T(0) ? s : e * s;
  *slope = e * s * s;
}

template <typename T>
D2D_HD T sigmoid(T x) {
  T p, slope;  // the unused slope is optimised away
  sigmoid_slope(x, &p, &slope);
  return p;
}

// The prediction p of one element and its slope dp/dx, from a logit (p = sigmoid(x)) or, for
// models that end in a sigmoid, from the probability itself (p = x, slope 1).
template <bool FromLogits, typename T>
D2D_HD void prediction_slope(T x, T* p, T* slope) {
  if constexpr (FromLogits) {
    sigmoid_slope(x, p, slope);
  } else {
    *p = x;
    *slope = T(1);
  }
}

template <bool FromLogits, typename T>
D2D_HD T prediction(T x) {
  if constexpr (FromLogits) {
    return sigmoid(x);
  } else {
    return x;
  }
}

// The union sum_p + sum_t - inter + smooth is 0 only with smooth 0 and every p and t exactly 0: two
// empty sets, a perfect match, so the loss is 0 (the limit as smooth -> 0) with a zero gradient,
// rather than 0 / 0.
template <typename A>
D2D_HD A soft_iou_loss(A inter, A sum_p, A sum_t, A smooth) {
  const A den = sum_p + sum_t - inter + smooth;
  return den == A(0) ? A(0) : A(1) - (inter + smooth) / den;
}

// Derivatives of the loss with respect to the three sums, scaled by the upstream gradient go.
template <typename A>
D2D_HD void soft_iou_dsums(A inter, A sum_p, A sum_t, A smooth, A go, A* d_inter, A* d_sum) {
  const A num = inter + smooth;
  const A den = sum_p + sum_t - inter + smooth;
  const A inv2 = den == A(0) ? A(0) : A(1) / (den * den);  // see soft_iou_loss
  *d_inter = -go * (den + num) * inv2;
  *d_sum = go * num * inv2;
}

// dL/dx and dL/dtarget of one element with prediction p and slope dp/dx (p (1 - p) for a logit,
// 1 for a probability), given the sum derivatives of its sample.
template <typename T>
D2D_HD T soft_iou_grad_logit(T slope, T target, T d_inter, T d_sum) {
  return (d_inter * target + d_sum) * slope;
}

template <typename T>
D2D_HD T soft_iou_grad_target(T p, T d_inter, T d_sum) {
  return d_inter * p + d_sum;
}

// Both gradients of one element from its input x (the backward recomputes the sigmoid rather
// than keep p, a tensor the size of the logits, alive from the forward to the backward).
template <bool FromLogits, typename T>
D2D_HD void soft_iou_grad_px(T x, T target, T d_inter, T d_sum, T* g_logit, T* g_target) {
  T p, slope;
  prediction_slope<FromLogits>(x, &p, &slope);
  *g_logit = soft_iou_grad_logit(slope, target, d_inter, d_sum);
  *g_target = soft_iou_grad_target(p, d_inter, d_sum);
}

}  // namespace d2d
