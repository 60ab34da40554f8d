// The d2d op library (schemas in schemas.h) and the Python module that loads it.
// Backends register their kernels in cpu/*.cpp and cuda/*.cu with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "cpu/label.h"
#include "cpu/line_offsets.h"
#include "schemas.h"

TORCH_LIBRARY(d2d, m) { d2d::define_schemas(m); }

TORCH_LIBRARY_IMPL(d2d, CompositeImplicitAutograd, m) {
  m.impl("soft_iou", [](const at::Tensor& logits, const at::Tensor& target, double smooth) {
    static const auto forward = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("d2d::soft_iou_forward", "")
                                    .typed<std::tuple<at::Tensor, at::Tensor>(
                                        const at::Tensor&, const at::Tensor&, double, bool)>();
    return std::get<0>(forward.call(logits, target, smooth, true));
  });
}

namespace {

// The data pointer and (rows, cols) of a 2-D C-contiguous numpy array whose __array_interface__
// typestr is `typestr` (the module is built for the limited API, which has no buffer protocol
// before Python 3.11). Sets a ValueError naming the function `fn` and the argument `name` and
// returns false otherwise.
bool numpy_2d(const char* fn, PyObject* array, const char* typestr, const char* name, bool writable,
              void** data, int64_t* rows, int64_t* cols) {
  PyObject* info = PyObject_GetAttrString(array, "__array_interface__");
  if (info == nullptr || !PyDict_Check(info)) {
    Py_XDECREF(info);
    PyErr_Format(PyExc_ValueError, "_C.%s: %s must be a numpy array", fn, name);
    return false;
  }
  PyObject* type = PyDict_GetItemString(info, "typestr");
  PyObject* shape = PyDict_GetItemString(info, "shape");
  PyObject* strides = PyDict_GetItemString(info, "strides");
  PyObject* where = PyDict_GetItemString(info, "data");
  bool ok = type != nullptr && PyUnicode_Check(type) &&
            PyUnicode_CompareWithASCIIString(type, typestr) == 0;
  if (!ok) {
    PyErr_Format(PyExc_ValueError, "_C.%s: %s must have dtype %s", fn, name, typestr);
  } else if (shape == nullptr || !PyTuple_Check(shape) || PyTuple_Size(shape) != 2) {
    ok = false;
    PyErr_Format(PyExc_ValueError, "_C.%s: %s must have 2 dimensions", fn, name);
  } else if (strides != nullptr && strides != Py_None) {
    ok = false;
    PyErr_Format(PyExc_ValueError, "_C.%s: %s must be C-contiguous", fn, name);
  } else if (where == nullptr || !PyTuple_Check(where) || PyTuple_Size(where) != 2) {
    ok = false;
    PyErr_Format(PyExc_ValueError, "_C.%s: %s has no data pointer", fn, name);
  } else if (writable && PyObject_IsTrue(PyTuple_GetItem(where, 1))) {
    ok = false;
    PyErr_Format(PyExc_ValueError, "_C.%s: %s must be writable", fn, name);
  } else {
    *rows = PyLong_AsLongLong(PyTuple_GetItem(shape, 0));
    *cols = PyLong_AsLongLong(PyTuple_GetItem(shape, 1));
    *data = PyLong_AsVoidPtr(PyTuple_GetItem(where, 0));
    ok = PyErr_Occurred() == nullptr;
  }
  Py_DECREF(info);
  return ok;
}

// numpy's typestr of this machine's int32 and float32 (byte order explicit, as
// __array_interface__ gives it)
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
constexpr const char* kInt32 = ">i4";
constexpr const char* kFloat32 = ">f4";
#else
constexpr const char* kInt32 = "<i4";
constexpr const char* kFloat32 = "<f4";
#endif

// _C.label(mask, labels, connectivity) -> count: d2d::label_components of the bool array mask
// (H, W) into the int32 array labels (H, W), both C-contiguous (d2d_ext.morphology.label).
PyObject* label(PyObject*, PyObject* args) {
  PyObject *mask, *labels;
  int connectivity;
  if (!PyArg_ParseTuple(args, "OOi", &mask, &labels, &connectivity)) return nullptr;
  void *in, *out;
  int64_t H, W, H_out, W_out;
  if (!numpy_2d("label", mask, "|b1", "mask", false, &in, &H, &W) ||
      !numpy_2d("label", labels, kInt32, "labels", true, &out, &H_out, &W_out)) {
    return nullptr;
  }
  if (H_out != H || W_out != W) {
    return PyErr_Format(PyExc_ValueError,
                        "_C.label: labels (%lld, %lld) must have mask's shape (%lld, %lld)",
                        static_cast<long long>(H_out), static_cast<long long>(W_out),
                        static_cast<long long>(H), static_cast<long long>(W));
  }
  if (connectivity != 4 && connectivity != 8) {
    return PyErr_Format(PyExc_ValueError, "_C.label: connectivity must be 4 or 8, got %d",
                        connectivity);
  }
  if (H * W >= INT32_MAX) {
    return PyErr_Format(PyExc_ValueError,
                        "_C.label: a mask of %lld pixels has more than int32 labels can number",
                        static_cast<long long>(H * W));
  }
  const int32_t n = d2d::label_components(static_cast<const bool*>(in),
                                          static_cast<int32_t*>(out), H, W, connectivity);
  return PyLong_FromLong(n);
}

// _C.line_offsets(rows, width, offsets) -> (size, error): d2d::column_offsets of the float32 array
// rows (n, W) into the float32 array offsets (1, W), both C-contiguous (d2d_ext.stripes._offsets).
PyObject* line_offsets(PyObject*, PyObject* args) {
  PyObject *rows, *offsets;
  int width;
  if (!PyArg_ParseTuple(args, "OiO", &rows, &width, &offsets)) return nullptr;
  void *in, *out;
  int64_t n, W, one, W_out;
  if (!numpy_2d("line_offsets", rows, kFloat32, "rows", false, &in, &n, &W) ||
      !numpy_2d("line_offsets", offsets, kFloat32, "offsets", true, &out, &one, &W_out)) {
    return nullptr;
  }
  if (one != 1 || W_out != W) {
    return PyErr_Format(PyExc_ValueError,
                        "_C.line_offsets: offsets (%lld, %lld) must have shape (1, %lld)",
                        static_cast<long long>(one), static_cast<long long>(W_out),
                        static_cast<long long>(W));
  }
  if (width < 1 || width % 2 == 0 || W < width || n < 1) {
    return PyErr_Format(PyExc_ValueError,
                        "_C.line_offsets: width must be odd, at least 1 and at most the %lld columns "
                        "of at least one row, got %d",
                        static_cast<long long>(W), width);
  }
  const d2d::ColumnOffsets got = d2d::column_offsets(static_cast<const float*>(in), n, W, width,
                                                     static_cast<float*>(out));
  return Py_BuildValue("(dd)", got.size, got.error);
}

PyMethodDef methods[] = {
    {"label", label, METH_VARARGS,
     "label(mask, labels, connectivity) -> count: the 4- or 8-connected components of the "
     "C-contiguous bool array mask (H, W), written to the int32 array labels (H, W)"},
    {"line_offsets", line_offsets, METH_VARARGS,
     "line_offsets(rows, width, offsets) -> (size, error): each column's median departure from "
     "the running median of width pixels of its row, over the C-contiguous float32 rows (n, W), "
     "written to the float32 array offsets (1, W); the pattern's robust size and one offset's "
     "standard error"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// Importing d2d_ext._C runs the static registrations above. The module holds WITH_CUDA, which
// says whether CUDA kernels were compiled in, label, the annotator's labelling of small masks, and
// line_offsets, its readout-pattern probe.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
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
