// Op schemas of the d2d namespace and the Python module stub that loads them.
// Backends register their kernels in cpu/*.cpp and cuda/*.cu with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>

TORCH_LIBRARY(d2d, m) {
  m.def("diffuse(Tensor u0, Tensor rates, float tau, int steps) -> Tensor");
  m.def(
      "diffuse_backward(Tensor grad_out, Tensor u0, Tensor rates, float tau, int steps) "
      "-> (Tensor, Tensor)");
  // soft_iou is soft_iou_forward's loss (CompositeImplicitAutograd below): the forward also
  // returns the per-sample sums, so the backward is one elementwise pass over the logits (it
  // recomputes the sigmoid instead of keeping a tensor of probabilities alive).
  m.def("soft_iou(Tensor logits, Tensor target, float smooth) -> Tensor");
  m.def(
      "soft_iou_forward(Tensor logits, Tensor target, float smooth) "
      "-> (Tensor loss, Tensor sums)");
  m.def(
      "soft_iou_backward(Tensor grad_loss, Tensor logits, Tensor target, Tensor sums, float smooth, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(d2d, CompositeImplicitAutograd, m) {
  m.impl("soft_iou", [](const at::Tensor& logits, const at::Tensor& target, double smooth) {
    static const auto forward = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("d2d::soft_iou_forward", "")
                                    .typed<std::tuple<at::Tensor, at::Tensor>(
                                        const at::Tensor&, const at::Tensor&, double)>();
    return std::get<0>(forward.call(logits, target, smooth));
  });
}

// Importing d2d_ext._C runs the static registrations above; the module itself is empty apart
// from WITH_CUDA, which says whether CUDA kernels were compiled in.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m != nullptr) {
#ifdef D2D_WITH_CUDA
    PyModule_AddIntConstant(m, "WITH_CUDA", 1);
#else
    PyModule_AddIntConstant(m, "WITH_CUDA", 0);
#endif
  }
  return m;
}
