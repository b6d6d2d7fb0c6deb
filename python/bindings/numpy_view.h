// The one numpy gate: every array entering the core passes through here.
//
// It checks type (numpy.ndarray), dtype (float32 | float16 | ml_dtypes.bfloat16 | bool),
// ndim, layout (unit stride along the last axis, non-negative aligned rows), byte order
// and writeability, and raises with the argument's name, what was expected and what came:
//   ValueError: W: expected a 2-D array, got a 1-D array of shape (4096,)
//   DTypeError: W: expected dtype float32, float16 or bfloat16, got float64
// It never converts or copies: the view points into the caller's buffer.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <string>

#include "sparseforge/core/dtype.h"
#include "sparseforge/core/view.h"
#include "sparseforge/prune/sparsegpt.h"

namespace sfpy {

namespace py = pybind11;

// Which storage dtypes an argument accepts.
enum DTypeSet : unsigned { kF32 = 1, kF16 = 2, kBF16 = 4, kFloat = 7 };

// A 2-D float matrix (fp32/fp16/bf16) in the caller's memory. `writeable` requires a
// writeable array (in-place functions).
sparseforge::AnyConstMatrix matrix_in(py::handle obj, const char* name, unsigned allowed = kFloat);
sparseforge::AnyMatrix matrix_inout(py::handle obj, const char* name, unsigned allowed = kFloat);

// A 2-D bool mask of the given shape.
sparseforge::ConstMaskView mask_in(py::handle obj, const char* name, size_t rows, size_t cols);

// A 2-D uint8 matrix (packed codes) with unit-stride rows.
sparseforge::ConstMatrixView<uint8_t> u8_matrix_in(py::handle obj, const char* name);

// A Hessian: 2-D float32 or float64 with unit-stride rows (squareness and the rest are
// checked by the core, which knows W), or a LayerStats (core object) read in place.
sparseforge::prune::HessianView hessian_in(py::handle obj, const char* name);

// A 1-D float32 vector of length n with unit stride.
const float* vector_f32_in(py::handle obj, const char* name, size_t n);

// A writeable 1-D float32 vector of length n with unit stride (an `out=` argument).
float* vector_f32_out(py::handle obj, const char* name, size_t n);

// A 1-D selection: a bool mask, or int32 / int64 indices (C-contiguous; an index list may
// be empty). Values are checked by the core, which knows the range.
struct Selection {
  enum Kind { kBool, kInt32, kInt64 } kind;
  const void* data;
  size_t size;
};
Selection selection_in(py::handle obj, const char* name);

// A C-contiguous float array of any shape, as a flat buffer.
struct FlatArray {
  sparseforge::DType dtype;
  void* data;
  size_t size;
};
FlatArray flat_in(py::handle obj, const char* name, unsigned allowed = kFloat);

// out=None: a new float32 vector of length n (kept alive by *holder); else the caller's
// checked vector (vector_f32_out).
float* out_vector(const py::object& out, size_t n, py::array* holder);
// out=None: a new (rows, cols) float32 matrix; else the caller's writeable float32 matrix of
// exactly that shape (ValueError naming `out` otherwise).
sparseforge::MatrixView<float> out_matrix(const py::object& out, size_t rows, size_t cols,
                                          py::array* holder);

// New C-contiguous outputs, allocated while holding the GIL.
py::array new_array(sparseforge::DType dtype, const std::vector<py::ssize_t>& shape);
py::array_t<bool> new_mask(size_t rows, size_t cols);
sparseforge::MaskView mask_view(py::array_t<bool>& mask);
sparseforge::AnyMatrix matrix_view(py::array& out);

// The numpy dtype object for a storage dtype (bf16 through ml_dtypes).
py::dtype numpy_dtype(sparseforge::DType dtype);
sparseforge::DType parse_dtype(py::handle dtype_like, const char* name);

}  // namespace sfpy
