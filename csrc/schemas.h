// The op schemas, declared once: the d2d library (d2d.cpp) and the CUDA emulator's test library
// (csrc/emu/) define the same ops, each in its own namespace.
#pragma once

#include <torch/library.h>

namespace d2d {

inline void define_schemas(torch::Library& m) {
  m.def("diffuse(Tensor u0, Tensor rates, float tau, int steps) -> Tensor");
  // output_mask: which of (grad_u0, grad_rates) to compute; one not asked for comes back empty,
  // shape (0,). grad_u0 alone is the adjoint chain by itself: no forward states, no recompute.
  m.def(
      "diffuse_backward(Tensor grad_out, Tensor u0, Tensor rates, float tau, int steps, "
      "bool[2] output_mask=[True, True]) -> (Tensor, Tensor)");
  // soft_iou is soft_iou_forward's loss (CompositeImplicitAutograd, d2d.cpp): the forward also
  // returns the per-sample sums, so the backward is one elementwise pass over the logits (it
  // recomputes the sigmoid instead of keeping a tensor of probabilities alive).
  m.def("soft_iou(Tensor logits, Tensor target, float smooth) -> Tensor");
  // from_logits=False: the input is the probability itself (models that end in a sigmoid).
  m.def(
      "soft_iou_forward(Tensor logits, Tensor target, float smooth, bool from_logits=True) "
      "-> (Tensor loss, Tensor sums)");
  m.def(
      "soft_iou_backward(Tensor grad_loss, Tensor logits, Tensor target, Tensor sums, float smooth, "
      "bool[2] output_mask, bool from_logits=True) -> (Tensor, Tensor)");
}

}  // namespace d2d
