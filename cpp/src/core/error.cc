#include "sparseforge/core/error.h"

#include <cstdarg>
#include <cstdio>
#include <string>
#include <vector>

namespace sparseforge {
namespace detail {

std::string format_message(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  const int len = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::string out;
  if (len > 0) {
    std::vector<char> buf(static_cast<size_t>(len) + 1);
    std::vsnprintf(buf.data(), buf.size(), fmt, args);
    out.assign(buf.data(), static_cast<size_t>(len));
  }
  va_end(args);
  return out;
}

std::string with_context(const std::string& message, const char* function) {
  return message + " [in " + function + "]";
}

void throw_internal(const char* condition, const char* file, int line, const char* function) {
  throw InternalError(format_message(
      "internal error in sparseforge: '%s' failed at %s:%d [in %s]; please report this", condition,
      file, line, function));
}

}  // namespace detail
}  // namespace sparseforge
