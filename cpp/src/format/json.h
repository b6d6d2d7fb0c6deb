// A small JSON reader for the container header and model metadata (internal to the core).
// Objects keep their key order; numbers keep their text (converted on demand, so integer
// offsets above 2^53 stay exact). Malformed input throws InvalidArgument naming `what`.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "sparseforge/core/error.h"

namespace sparseforge {
namespace json {

struct Value {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject } type = Type::kNull;
  bool boolean = false;
  std::string text;  // kString: the decoded string; kNumber: the number's text
  std::vector<Value> items;
  std::vector<std::pair<std::string, Value>> members;

  bool is(Type t) const { return type == t; }
  const Value* find(const std::string& key) const {
    for (const auto& m : members) {
      if (m.first == key) return &m.second;
    }
    return nullptr;
  }
};

class Parser {
 public:
  Parser(const char* data, size_t size, const char* what)
      : p_(data), end_(data + size), what_(what) {}

  Value parse() {
    Value v = value(0);
    space();
    if (p_ != end_) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const char* why) const {
    SF_THROW(InvalidArgument, "%s: invalid JSON (%s)", what_, why);
  }
  void space() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  bool literal(const char* s) {
    const char* q = p_;
    for (; *s; ++s, ++q) {
      if (q >= end_ || *q != *s) return false;
    }
    p_ = q;
    return true;
  }
  static void utf8(uint32_t cp, std::string& out) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  uint32_t hex4() {
    if (end_ - p_ < 4) fail("short \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i, ++p_) {
      const char c = *p_;
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        fail("bad \\u escape");
      }
    }
    return v;
  }
  std::string string() {
    ++p_;  // the opening quote
    std::string out;
    while (true) {
      if (p_ >= end_) fail("unterminated string");
      const char c = *p_++;
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (p_ >= end_) fail("unterminated escape");
      const char e = *p_++;
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && end_ - p_ >= 6 && p_[0] == '\\' && p_[1] == 'u') {
            p_ += 2;
            const uint32_t lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8(cp, out);
          break;
        }
        default:
          fail("bad escape");
      }
    }
  }
  Value value(int depth) {
    if (depth > 64) fail("nested too deeply");
    space();
    if (p_ >= end_) fail("unexpected end");
    Value v;
    const char c = *p_;
    if (c == '{') {
      v.type = Value::Type::kObject;
      ++p_;
      space();
      if (p_ < end_ && *p_ == '}') {
        ++p_;
        return v;
      }
      while (true) {
        space();
        if (p_ >= end_ || *p_ != '"') fail("expected a key");
        std::string key = string();
        space();
        if (p_ >= end_ || *p_ != ':') fail("expected ':'");
        ++p_;
        v.members.emplace_back(std::move(key), value(depth + 1));
        space();
        if (p_ < end_ && *p_ == ',') {
          ++p_;
          continue;
        }
        if (p_ < end_ && *p_ == '}') {
          ++p_;
          return v;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type = Value::Type::kArray;
      ++p_;
      space();
      if (p_ < end_ && *p_ == ']') {
        ++p_;
        return v;
      }
      while (true) {
        v.items.push_back(value(depth + 1));
        space();
        if (p_ < end_ && *p_ == ',') {
          ++p_;
          continue;
        }
        if (p_ < end_ && *p_ == ']') {
          ++p_;
          return v;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.type = Value::Type::kString;
      v.text = string();
      return v;
    }
    if (literal("true") || literal("false")) {
      v.type = Value::Type::kBool;
      v.boolean = p_[-1] == 'e' && p_[-2] == 'u';
      return v;
    }
    if (literal("null")) return v;
    const char* start = p_;
    while (p_ < end_ &&
           (std::string("+-.eE").find(*p_) != std::string::npos || (*p_ >= '0' && *p_ <= '9'))) {
      ++p_;
    }
    if (p_ == start) fail("unexpected character");
    v.type = Value::Type::kNumber;
    v.text.assign(start, p_);
    return v;
  }

  const char* p_;
  const char* end_;
  const char* what_;
};

inline Value parse(const std::string& s, const char* what) {
  return Parser(s.data(), s.size(), what).parse();
}

// A non-negative integer number (exact up to 2^64 - 1); throws naming `what`.
inline uint64_t to_u64(const Value& v, const char* what) {
  SF_CHECK_ARG(v.is(Value::Type::kNumber) && !v.text.empty() &&
                   v.text.find_first_not_of("0123456789") == std::string::npos,
               "%s: expected a non-negative integer", what);
  errno = 0;
  char* end = nullptr;
  const unsigned long long x = std::strtoull(v.text.c_str(), &end, 10);
  SF_CHECK_ARG(errno == 0 && end && *end == '\0', "%s: integer out of range", what);
  return static_cast<uint64_t>(x);
}

inline double to_double(const Value& v, const char* what) {
  SF_CHECK_ARG(v.is(Value::Type::kNumber), "%s: expected a number", what);
  char* end = nullptr;
  const double x = std::strtod(v.text.c_str(), &end);
  SF_CHECK_ARG(end && *end == '\0', "%s: expected a number, got '%s'", what, v.text.c_str());
  return x;
}

}  // namespace json
}  // namespace sparseforge
