#include "numpy_view.h"

#include <sstream>
#include <string>
#include <vector>

#include "sparseforge/core/error.h"

namespace sfpy {
namespace {

using sparseforge::DType;

constexpr int kNpyArrayAligned = 0x0100;  // NPY_ARRAY_ALIGNED (pybind11 has no name for it)

// ml_dtypes registers bfloat16 with numpy; fetched once, lazily.
const py::dtype& bf16_dtype() {
  static py::dtype* dt = [] {
    py::object bf16 = py::module_::import("ml_dtypes").attr("bfloat16");
    return new py::dtype(py::dtype::from_args(bf16));  // leaked on purpose: lives with the process
  }();
  return *dt;
}

std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

std::string strides_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.strides(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string allowed_str(unsigned allowed) {
  std::vector<std::string> names;
  if (allowed & kF32) names.emplace_back("float32");
  if (allowed & kF16) names.emplace_back("float16");
  if (allowed & kBF16) names.emplace_back("bfloat16 (ml_dtypes)");
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    out += names[i];
    if (i + 2 < names.size()) out += ", ";
    if (i + 2 == names.size()) out += " or ";
  }
  return out;
}

[[noreturn]] void fail(const std::string& msg) { throw sparseforge::InvalidArgument(msg); }

py::array as_ndarray(py::handle obj, const char* name) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + ": expected a numpy.ndarray, got " +
                         py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>());
  }
  return py::reinterpret_borrow<py::array>(obj);
}

DType float_dtype(const py::array& a, const char* name, unsigned allowed) {
  const py::dtype dt = a.dtype();
  const char byteorder = dt.attr("byteorder").cast<std::string>()[0];
  if (byteorder == '>') {
    fail(std::string(name) + ": expected native byte order, got big-endian " + dtype_str(a));
  }
  DType t;
  bool known = true;
  if (dt.equal(py::dtype::of<float>())) {
    t = DType::kF32;
  } else if (dt.num() == 23 /* NPY_HALF */) {
    t = DType::kF16;
  } else if (dt.itemsize() == 2 && dt.kind() == 'V' && dt.equal(bf16_dtype())) {
    t = DType::kBF16;
  } else {
    known = false;
    t = DType::kF32;
  }
  const unsigned bit = t == DType::kF32 ? kF32 : t == DType::kF16 ? kF16 : kBF16;
  if (!known || !(allowed & bit)) {
    throw sparseforge::DTypeError(std::string(name) + ": expected dtype " + allowed_str(allowed) +
                                  ", got " + dtype_str(a));
  }
  return t;
}

// Rows with unit inner stride and a non-negative row stride that is a whole number of
// elements: slices like W[:, :k] qualify, transposes and W[:, ::2] do not.
size_t row_stride_elems(const py::array& a, const char* name) {
  const py::ssize_t item = a.itemsize();
  const py::ssize_t rows = a.shape(0), cols = a.shape(1);
  const py::ssize_t s0 = a.strides(0), s1 = a.strides(1);
  const bool inner_ok = s1 == item || cols <= 1;
  const bool outer_ok = rows <= 1 || (s0 >= cols * item && s0 % item == 0);
  if (!inner_ok || !outer_ok) {
    fail(std::string(name) + ": expected C-ordered rows (unit stride along the last axis), got " +
         dtype_str(a) + " array of shape " + shape_str(a) + " with strides " + strides_str(a) +
         "; pass np.ascontiguousarray(" + name + ")");
  }
  if (!(a.flags() & kNpyArrayAligned)) {
    fail(std::string(name) + ": expected an aligned array, got a misaligned buffer");
  }
  return rows <= 1 ? static_cast<size_t>(cols) : static_cast<size_t>(s0 / item);
}

void require_ndim(const py::array& a, const char* name, py::ssize_t ndim) {
  if (a.ndim() != ndim) {
    fail(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array, got a " +
         std::to_string(a.ndim()) + "-D array of shape " + shape_str(a));
  }
  if (a.size() == 0) {
    fail(std::string(name) + ": expected a non-empty array, got shape " + shape_str(a));
  }
}

}  // namespace

sparseforge::AnyConstMatrix matrix_in(py::handle obj, const char* name, unsigned allowed) {
  const py::array a = as_ndarray(obj, name);
  const DType t = float_dtype(a, name, allowed);
  require_ndim(a, name, 2);
  const size_t stride = row_stride_elems(a, name);
  return {t, a.data(), static_cast<size_t>(a.shape(0)), static_cast<size_t>(a.shape(1)), stride};
}

sparseforge::AnyMatrix matrix_inout(py::handle obj, const char* name, unsigned allowed) {
  py::array a = as_ndarray(obj, name);
  const DType t = float_dtype(a, name, allowed);
  require_ndim(a, name, 2);
  const size_t stride = row_stride_elems(a, name);
  if (!a.writeable()) {
    fail(std::string(name) +
         ": expected a writeable array (modified in place), got a read-only one");
  }
  return {t, a.mutable_data(), static_cast<size_t>(a.shape(0)), static_cast<size_t>(a.shape(1)),
          stride};
}

sparseforge::ConstMaskView mask_in(py::handle obj, const char* name, size_t rows, size_t cols) {
  const py::array a = as_ndarray(obj, name);
  if (a.dtype().num() != 0 /* NPY_BOOL */) {
    throw sparseforge::DTypeError(std::string(name) + ": expected dtype bool, got " + dtype_str(a));
  }
  require_ndim(a, name, 2);
  if (static_cast<size_t>(a.shape(0)) != rows || static_cast<size_t>(a.shape(1)) != cols) {
    fail(std::string(name) + ": expected shape (" + std::to_string(rows) + ", " +
         std::to_string(cols) + "), got " + shape_str(a));
  }
  const size_t stride = row_stride_elems(a, name);
  return {static_cast<const uint8_t*>(a.data()), rows, cols, stride};
}

sparseforge::ConstMatrixView<uint8_t> u8_matrix_in(py::handle obj, const char* name) {
  const py::array a = as_ndarray(obj, name);
  if (!a.dtype().equal(py::dtype::of<uint8_t>())) {
    throw sparseforge::DTypeError(std::string(name) + ": expected dtype uint8, got " +
                                  dtype_str(a));
  }
  require_ndim(a, name, 2);
  const size_t stride = row_stride_elems(a, name);
  return {static_cast<const uint8_t*>(a.data()), static_cast<size_t>(a.shape(0)),
          static_cast<size_t>(a.shape(1)), stride};
}

sparseforge::prune::HessianView hessian_in(py::handle obj, const char* name) {
  if (py::isinstance<sparseforge::calib::LayerStats>(obj)) {  // read in place, no copy
    return sparseforge::prune::hessian_view(obj.cast<const sparseforge::calib::LayerStats&>());
  }
  const py::array a = as_ndarray(obj, name);
  const py::dtype dt = a.dtype();
  const bool f64 = dt.equal(py::dtype::of<double>());
  if (!f64 && !dt.equal(py::dtype::of<float>())) {
    throw sparseforge::DTypeError(std::string(name) + ": expected dtype float64 or float32, got " +
                                  dtype_str(a));
  }
  require_ndim(a, name, 2);
  const size_t stride = row_stride_elems(a, name);
  if (a.shape(0) != a.shape(1)) {
    fail(std::string(name) + ": expected a square matrix, got shape " + shape_str(a));
  }
  sparseforge::prune::HessianView h;
  h.data = a.data();
  h.f64 = f64;
  h.n = static_cast<size_t>(a.shape(0));
  h.stride = stride;
  return h;
}

const float* vector_f32_in(py::handle obj, const char* name, size_t n) {
  const py::array a = as_ndarray(obj, name);
  if (!a.dtype().equal(py::dtype::of<float>())) {
    throw sparseforge::DTypeError(std::string(name) + ": expected dtype float32, got " +
                                  dtype_str(a));
  }
  if (a.ndim() != 1 || static_cast<size_t>(a.shape(0)) != n) {
    fail(std::string(name) + ": expected shape (" + std::to_string(n) + ",), got " + shape_str(a));
  }
  if (a.strides(0) != 4 && n > 1) {
    fail(std::string(name) + ": expected a contiguous vector, got stride " +
         std::to_string(a.strides(0)));
  }
  if (!(a.flags() & kNpyArrayAligned)) {
    fail(std::string(name) + ": expected an aligned array, got a misaligned buffer");
  }
  return static_cast<const float*>(a.data());
}

float* vector_f32_out(py::handle obj, const char* name, size_t n) {
  py::array a = as_ndarray(obj, name);
  const float* p = vector_f32_in(a, name, n);
  if (!a.writeable()) {
    fail(std::string(name) + ": expected a writeable array, got a read-only one");
  }
  return const_cast<float*>(p);
}

Selection selection_in(py::handle obj, const char* name) {
  const py::array a = as_ndarray(obj, name);
  const py::dtype dt = a.dtype();
  Selection s{Selection::kBool, a.data(), static_cast<size_t>(a.size())};
  if (dt.num() == 0 /* NPY_BOOL */) {
    s.kind = Selection::kBool;
  } else if (dt.kind() == 'i' && dt.itemsize() == 4) {
    s.kind = Selection::kInt32;
  } else if (dt.kind() == 'i' && dt.itemsize() == 8) {
    s.kind = Selection::kInt64;
  } else {
    throw sparseforge::DTypeError(std::string(name) +
                                  ": expected dtype bool, int32 or int64, got " + dtype_str(a));
  }
  if (dt.attr("byteorder").cast<std::string>()[0] == '>') {
    fail(std::string(name) + ": expected native byte order, got big-endian " + dtype_str(a));
  }
  if (a.ndim() != 1) {
    fail(std::string(name) + ": expected a 1-D array, got a " + std::to_string(a.ndim()) +
         "-D array of shape " + shape_str(a));
  }
  if (a.size() > 1 && a.strides(0) != a.itemsize()) {
    fail(std::string(name) + ": expected a contiguous vector, got stride " +
         std::to_string(a.strides(0)) + "; pass np.ascontiguousarray(" + name + ")");
  }
  if (!(a.flags() & kNpyArrayAligned)) {
    fail(std::string(name) + ": expected an aligned array, got a misaligned buffer");
  }
  return s;
}

FlatArray flat_in(py::handle obj, const char* name, unsigned allowed) {
  const py::array a = as_ndarray(obj, name);
  const DType t = float_dtype(a, name, allowed);
  if (!(a.flags() & py::array::c_style)) {
    fail(std::string(name) + ": expected a C-contiguous array, got strides " + strides_str(a) +
         "; pass np.ascontiguousarray(" + name + ")");
  }
  if (!(a.flags() & kNpyArrayAligned)) {
    fail(std::string(name) + ": expected an aligned array, got a misaligned buffer");
  }
  return {t, const_cast<void*>(a.data()), static_cast<size_t>(a.size())};
}

py::dtype numpy_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return py::dtype("float16");
    case DType::kBF16:
      return bf16_dtype();
    case DType::kF32:
    default:
      return py::dtype::of<float>();
  }
}

DType parse_dtype(py::handle dtype_like, const char* name) {
  py::dtype dt;
  try {
    dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(dtype_like));
  } catch (const py::error_already_set&) {
    throw py::type_error(std::string(name) + ": expected a numpy dtype, got " +
                         py::repr(dtype_like).cast<std::string>());
  }
  if (dt.equal(py::dtype::of<float>())) return DType::kF32;
  if (dt.num() == 23) return DType::kF16;
  if (dt.itemsize() == 2 && dt.kind() == 'V' && dt.equal(bf16_dtype())) return DType::kBF16;
  throw sparseforge::DTypeError(std::string(name) +
                                ": expected float32, float16 or bfloat16 (ml_dtypes), got " +
                                py::str(dt).cast<std::string>());
}

py::array new_array(DType dtype, const std::vector<py::ssize_t>& shape) {
  return py::array(numpy_dtype(dtype), shape);
}

py::array_t<bool> new_mask(size_t rows, size_t cols) {
  return py::array_t<bool>({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
}

sparseforge::MaskView mask_view(py::array_t<bool>& mask) {
  return {reinterpret_cast<uint8_t*>(mask.mutable_data()), static_cast<size_t>(mask.shape(0)),
          static_cast<size_t>(mask.shape(1))};
}

sparseforge::AnyMatrix matrix_view(py::array& out) {
  return {parse_dtype(out.dtype(), "out"), out.mutable_data(), static_cast<size_t>(out.shape(0)),
          static_cast<size_t>(out.shape(1)), static_cast<size_t>(out.shape(1))};
}

}  // namespace sfpy

namespace sfpy {

float* out_vector(const py::object& out, size_t n, py::array* holder) {
  if (out.is_none()) {
    *holder = new_array(DType::kF32, {static_cast<py::ssize_t>(n)});
    return static_cast<float*>(holder->mutable_data());
  }
  float* p = vector_f32_out(out, "out", n);
  *holder = py::reinterpret_borrow<py::array>(out);
  return p;
}

sparseforge::MatrixView<float> out_matrix(const py::object& out, size_t rows, size_t cols,
                                          py::array* holder) {
  if (out.is_none()) {
    *holder =
        new_array(DType::kF32, {static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
    return {static_cast<float*>(holder->mutable_data()), rows, cols};
  }
  const sparseforge::AnyMatrix m = matrix_inout(out, "out", kF32);
  if (m.rows != rows || m.cols != cols) {
    throw sparseforge::InvalidArgument("out: expected shape (" + std::to_string(rows) + ", " +
                                       std::to_string(cols) + "), got (" + std::to_string(m.rows) +
                                       ", " + std::to_string(m.cols) + ")");
  }
  *holder = py::reinterpret_borrow<py::array>(out);
  return m.as<float>();
}

}  // namespace sfpy
