// Non-owning matrix views: the one way data enters the core.
//
// Convention (stated once, used everywhere): row-major. Element (r, c) of a view lives at
// data[r * stride + c]; `stride` counts elements between row starts and is >= cols, so a
// column slice of a larger row-major array is a view without a copy. A linear layer's
// weight W has shape (out_features, in_features) and computes y = W x.
//
// Views never allocate or free. Callers own the memory and must keep it alive for the
// duration of a call; outputs are caller-owned views too (faiss-style).
#pragma once

#include <cstddef>
#include <cstdint>

#include "sparseforge/core/dtype.h"

namespace sparseforge {

template <class T>
struct MatrixView {
  T* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t stride = 0;  // elements between consecutive row starts, >= cols

  MatrixView() = default;
  MatrixView(T* d, size_t r, size_t c) : data(d), rows(r), cols(c), stride(c) {}
  MatrixView(T* d, size_t r, size_t c, size_t s) : data(d), rows(r), cols(c), stride(s) {}

  T* row(size_t r) const { return data + r * stride; }
  T& operator()(size_t r, size_t c) const { return data[r * stride + c]; }
  size_t size() const { return rows * cols; }
  bool empty() const { return rows == 0 || cols == 0; }
  bool contiguous() const { return stride == cols || rows <= 1; }
};

template <class T>
struct ConstMatrixView {
  const T* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t stride = 0;

  ConstMatrixView() = default;
  ConstMatrixView(const T* d, size_t r, size_t c) : data(d), rows(r), cols(c), stride(c) {}
  ConstMatrixView(const T* d, size_t r, size_t c, size_t s)
      : data(d), rows(r), cols(c), stride(s) {}
  // NOLINTNEXTLINE(google-explicit-constructor): a mutable view is usable as a const one.
  ConstMatrixView(const MatrixView<T>& v)
      : data(v.data), rows(v.rows), cols(v.cols), stride(v.stride) {}

  const T* row(size_t r) const { return data + r * stride; }
  const T& operator()(size_t r, size_t c) const { return data[r * stride + c]; }
  size_t size() const { return rows * cols; }
  bool empty() const { return rows == 0 || cols == 0; }
  bool contiguous() const { return stride == cols || rows <= 1; }
};

// A matrix whose storage dtype is known only at run time (weights arrive as fp32, fp16 or
// bf16 from Python). Algorithms take these and dispatch once with visit_dtype().
struct AnyConstMatrix {
  DType dtype = DType::kF32;
  const void* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t stride = 0;

  AnyConstMatrix() = default;
  AnyConstMatrix(DType t, const void* d, size_t r, size_t c, size_t s)
      : dtype(t), data(d), rows(r), cols(c), stride(s) {}
  template <class T>
  AnyConstMatrix(ConstMatrixView<T> v)  // NOLINT(google-explicit-constructor)
      : dtype(dtype_of<T>()), data(v.data), rows(v.rows), cols(v.cols), stride(v.stride) {}
  template <class T>
  AnyConstMatrix(MatrixView<T> v)  // NOLINT(google-explicit-constructor)
      : AnyConstMatrix(ConstMatrixView<T>(v)) {}

  // The typed view; the caller has checked dtype (visit_dtype does).
  template <class T>
  ConstMatrixView<T> as() const {
    return {static_cast<const T*>(data), rows, cols, stride};
  }
  size_t size() const { return rows * cols; }
  bool empty() const { return rows == 0 || cols == 0; }
};

struct AnyMatrix {
  DType dtype = DType::kF32;
  void* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t stride = 0;

  AnyMatrix() = default;
  AnyMatrix(DType t, void* d, size_t r, size_t c, size_t s)
      : dtype(t), data(d), rows(r), cols(c), stride(s) {}
  template <class T>
  AnyMatrix(MatrixView<T> v)  // NOLINT(google-explicit-constructor)
      : dtype(dtype_of<T>()), data(v.data), rows(v.rows), cols(v.cols), stride(v.stride) {}

  template <class T>
  MatrixView<T> as() const {
    return {static_cast<T*>(data), rows, cols, stride};
  }
  operator AnyConstMatrix() const {  // NOLINT(google-explicit-constructor)
    return {dtype, data, rows, cols, stride};
  }
  size_t size() const { return rows * cols; }
  bool empty() const { return rows == 0 || cols == 0; }
};

// A keep-mask: 1 = the weight is kept, 0 = pruned. One byte per element so numpy sees it
// as a bool array without conversion.
using MaskView = MatrixView<uint8_t>;
using ConstMaskView = ConstMatrixView<uint8_t>;

}  // namespace sparseforge
