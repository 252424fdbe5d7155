// Building and passing on Status values, for every part of the library (host code only).
//
// Every message a caller sees starts with the entry point's name ("mla::decode: ..."), as
// docs/design.md promises. Inner helpers return messages without it; the entry point adds it
// once with with_context(), which leaves a message that already starts with it unchanged.
//
// Message pieces are formatted without iostreams: a library linked into a Python extension with
// its own static libstdc++ must not touch the process's iostream locale machinery (that crashed
// inside std::ostream on a GPU host).
#pragma once

#include <cstdio>
#include <string>
#include <type_traits>
#include <utility>

#include "mla/mla.h"

namespace mla::detail {

inline void append_part(std::string& s, const char* v) { s += v; }
inline void append_part(std::string& s, const std::string& v) { s += v; }
inline void append_part(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  s += buf;
}
inline void append_part(std::string& s, const void* v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", v);
  s += buf;
}
template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
void append_part(std::string& s, T v) {
  s += std::to_string(v);
}

// The parts (strings, integers, floating-point values, pointers) concatenated.
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::string s;
  (append_part(s, parts), ...);
  return s;
}

// `s` with "fn: " in front of its message; OK stays OK, and so does a message that already
// starts with "fn: " (a backend that names the entry point itself).
inline Status with_context(const char* fn, const Status& s) {
  if (s.ok()) return s;
  const std::string prefix = std::string(fn) + ": ";
  if (s.message().compare(0, prefix.size(), prefix) == 0) return s;
  return Status(s.code(), prefix + s.message());
}

// `code` with "fn: argument 'name': <parts...>".
template <typename... Parts>
Status argument_error(StatusCode code, const char* fn, const char* name, const Parts&... parts) {
  return Status(code, concat(fn, ": argument '", name, "': ", parts...));
}

// kInvalidArgument "fn: argument 'name': <parts...>".
template <typename... Parts>
Status invalid_argument(const char* fn, const char* name, const Parts&... parts) {
  return argument_error(StatusCode::kInvalidArgument, fn, name, parts...);
}

}  // namespace mla::detail

// Returns the Status of `expr` from the enclosing function when it is not OK.
#define MLA_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::mla::Status mla_status_ = (expr);        \
    if (!mla_status_.ok()) return mla_status_; \
  } while (0)
