// Argument checks and shape helpers shared by the CPU and CUDA entry points (host code only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace d2d {

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* op,
                       const char* name_a, const char* name_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", name_a, " and ", name_b,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_diffuse_args(const at::Tensor& u0, const at::Tensor& rates, double tau,
                               int64_t steps) {
  const char* op = "d2d.diffuse";
  TORCH_CHECK(u0.dim() == 3, op, ": u0 must have shape (N, H, W), got ", u0.sizes());
  TORCH_CHECK(rates.dim() == 4 && rates.size(1) == 4, op,
              ": rates must have shape (N, 4, H, W), got ", rates.sizes());
  TORCH_CHECK(rates.size(0) == u0.size(0) && rates.size(2) == u0.size(1) &&
                  rates.size(3) == u0.size(2),
              op, ": rates ", rates.sizes(), " does not match u0 ", u0.sizes(),
              " (expected (N, 4, H, W) for u0 of shape (N, H, W))");
  check_float_dtype(u0, op, "u0");
  check_same(u0, rates, op, "u0", "rates");
  TORCH_CHECK(std::isfinite(tau) && tau >= 0, op, ": tau must be finite and >= 0, got ", tau);
  TORCH_CHECK(steps >= 0, op, ": steps must be >= 0, got ", steps);
}

inline void check_diffuse_backward_args(const at::Tensor& grad_out, const at::Tensor& u0,
                                        const at::Tensor& rates, double tau, int64_t steps) {
  check_diffuse_args(u0, rates, tau, steps);
  TORCH_CHECK(grad_out.sizes() == u0.sizes(), "d2d.diffuse_backward: grad_out has shape ",
              grad_out.sizes(), ", expected ", u0.sizes());
  check_same(grad_out, u0, "d2d.diffuse_backward", "grad_out", "u0");
}

// x (the logits) and target of shape (N, ...), and smooth.
inline void check_soft_iou_inputs(const at::Tensor& x, const at::Tensor& target, double smooth,
                                  const char* op, const char* name) {
  TORCH_CHECK(x.dim() >= 1, op, ": ", name, " must have shape (N, ...), got a 0-d tensor");
  TORCH_CHECK(x.sizes() == target.sizes(), op, ": ", name, " ", x.sizes(), " and target ",
              target.sizes(), " must have the same shape");
  check_float_dtype(x, op, name);
  check_same(x, target, op, name, "target");
  TORCH_CHECK(std::isfinite(smooth) && smooth >= 0, op, ": smooth must be finite and >= 0, got ",
              smooth);
}

// M of an (N, ...) input viewed as (N, M): the elements per sample (0 for an empty batch,
// where numel / N is undefined).
inline int64_t sample_numel(const at::Tensor& x) { return x.size(0) == 0 ? 0 : x.numel() / x.size(0); }

inline void check_soft_iou_args(const at::Tensor& logits, const at::Tensor& target,
                                double smooth) {
  check_soft_iou_inputs(logits, target, smooth, "d2d.soft_iou", "logits");
}

inline void check_soft_iou_backward_args(const at::Tensor& grad_loss, const at::Tensor& logits,
                                         const at::Tensor& target, const at::Tensor& sums,
                                         double smooth) {
  const char* op = "d2d.soft_iou_backward";
  check_soft_iou_inputs(logits, target, smooth, op, "logits");
  TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == logits.size(0), op,
              ": grad_loss must have shape (", logits.size(0), ",), got ", grad_loss.sizes());
  check_same(grad_loss, logits, op, "grad_loss", "logits");
  TORCH_CHECK(sums.dim() == 2 && sums.size(0) == logits.size(0) && sums.size(1) == 3, op,
              ": sums must have shape (", logits.size(0), ", 3), got ", sums.sizes());
  TORCH_CHECK(sums.scalar_type() == at::kDouble, op, ": sums must be float64, got ",
              sums.scalar_type());
  TORCH_CHECK(sums.device() == logits.device(), op, ": sums and logits must be on the same device, got ",
              sums.device(), " and ", logits.device());
}

}  // namespace d2d
