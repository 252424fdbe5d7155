// Building and passing on Status values, for every part of the library (host code only).
//
// Every message a caller sees starts with the entry point's name ("mla::decode: ..."), as
// docs/design.md promises. Inner helpers return messages without it; the entry point adds it
// once with with_context(), or returns the inner Status unchanged when it already has it.
#pragma once

#include <string>
#include <utility>

#include "mla/mla.h"

namespace mla::detail {

// `s` with "fn: " in front of its message; OK stays OK.
inline Status with_context(const char* fn, const Status& s) {
  if (s.ok()) return s;
  return Status(s.code(), std::string(fn) + ": " + s.message());
}

// kInvalidArgument "fn: argument 'name': what".
inline Status invalid_argument(const char* fn, const char* name, const std::string& what) {
  return Status(StatusCode::kInvalidArgument,
                std::string(fn) + ": argument '" + name + "': " + what);
}

}  // namespace mla::detail

// Returns the Status of `expr` from the enclosing function when it is not OK.
#define MLA_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::mla::Status mla_status_ = (expr);        \
    if (!mla_status_.ok()) return mla_status_; \
  } while (0)
