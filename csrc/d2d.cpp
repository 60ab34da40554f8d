// Op schemas of the d2d namespace and the Python module stub that loads them.
// Backends register their kernels in cpu/*.cpp and cuda/*.cu with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(d2d, m) {
  m.def("diffuse(Tensor u0, Tensor rates, float tau, int steps) -> Tensor");
  m.def(
      "diffuse_backward(Tensor grad_out, Tensor u0, Tensor rates, float tau, int steps) "
      "-> (Tensor, Tensor)");
  m.def("soft_iou(Tensor logits, Tensor target, float smooth) -> Tensor");
  m.def(
      "soft_iou_backward(Tensor grad_loss, Tensor logits, Tensor target, float smooth, "
      "bool[2] output_mask) "
      "-> (Tensor, Tensor)");
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
