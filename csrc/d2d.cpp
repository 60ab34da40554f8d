// The d2d op library (schemas in schemas.h) and the Python module stub that loads it.
// Backends register their kernels in cpu/*.cpp and cuda/*.cu with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>

#include "schemas.h"

TORCH_LIBRARY(d2d, m) {
  d2d::define_schemas(m);
  d2d::define_cpu_schemas(m);
}

TORCH_LIBRARY_IMPL(d2d, CompositeImplicitAutograd, m) {
  m.impl("soft_iou", [](const at::Tensor& logits, const at::Tensor& target, double smooth) {
    static const auto forward = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("d2d::soft_iou_forward", "")
                                    .typed<std::tuple<at::Tensor, at::Tensor>(
                                        const at::Tensor&, const at::Tensor&, double, bool)>();
    return std::get<0>(forward.call(logits, target, smooth, true));
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
