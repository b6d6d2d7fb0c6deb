// Errors that carry context. Nothing in the core aborts or asserts on input: it throws one
// of these, and the Python bindings map each to one Python exception:
//
//   InvalidArgument  (std::invalid_argument) -> ValueError
//   DTypeError       (std::invalid_argument) -> sparseforge.DTypeError (TypeError, ValueError)
//   NumericalError   (std::runtime_error)    -> sparseforge.NumericalError
//   InternalError    (std::logic_error)      -> RuntimeError  (a bug in sparseforge)
//   std::bad_alloc                           -> MemoryError
//
// Messages start with the argument's name and say what was expected and what came:
//   SF_CHECK_ARG(cols % m == 0, "W: in_features=%zu is not a multiple of m=%d", cols, m);
// The macros append the function that raised, e.g. " [in nm_mask]".
#pragma once

#include <stdexcept>
#include <string>

namespace sparseforge {

class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
class DTypeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};
class NumericalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

namespace detail {
#if defined(__GNUC__) || defined(__clang__)
#define SF_PRINTF_LIKE(fmt_index, first_arg) __attribute__((format(printf, fmt_index, first_arg)))
#define SF_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define SF_PRINTF_LIKE(fmt_index, first_arg)
#define SF_UNLIKELY(x) (x)
#endif
std::string format_message(const char* fmt, ...) SF_PRINTF_LIKE(1, 2);
std::string with_context(const std::string& message, const char* function);
[[noreturn]] void throw_internal(const char* condition, const char* file, int line,
                                 const char* function);
}  // namespace detail

#define SF_THROW(ExceptionType, ...)                       \
  throw ExceptionType(::sparseforge::detail::with_context( \
      ::sparseforge::detail::format_message(__VA_ARGS__), __func__))

// Bad input from a caller: ValueError in Python.
#define SF_CHECK_ARG(cond, ...)                                                      \
  do {                                                                               \
    if (SF_UNLIKELY(!(cond))) SF_THROW(::sparseforge::InvalidArgument, __VA_ARGS__); \
  } while (0)

// Wrong storage dtype: sparseforge.DTypeError in Python.
#define SF_CHECK_DTYPE(cond, ...)                                               \
  do {                                                                          \
    if (SF_UNLIKELY(!(cond))) SF_THROW(::sparseforge::DTypeError, __VA_ARGS__); \
  } while (0)

// A numerical failure with diagnostics: sparseforge.NumericalError in Python.
#define SF_CHECK_NUMERIC(cond, ...)                                                 \
  do {                                                                              \
    if (SF_UNLIKELY(!(cond))) SF_THROW(::sparseforge::NumericalError, __VA_ARGS__); \
  } while (0)

// An internal invariant. Throws (never aborts) so a bug cannot kill a Python process.
#define SF_CHECK(cond)                                                            \
  do {                                                                            \
    if (SF_UNLIKELY(!(cond)))                                                     \
      ::sparseforge::detail::throw_internal(#cond, __FILE__, __LINE__, __func__); \
  } while (0)

}  // namespace sparseforge
