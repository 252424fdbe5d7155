// Helpers every public entry point (src/core/api.cpp, src/core/sparse_api.cpp) starts with.
#pragma once

#include <exception>
#include <new>
#include <string>
#include <thread>

#include "core/status.h"
#include "mla/mla.h"

namespace mla::detail {

// CPU threads of a call: config.num_threads, or all hardware threads for 0.
inline int resolve_threads(const ExecConfig& config) {
  if (config.num_threads > 0) return config.num_threads;
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

inline Status check_config(const char* fn, const ExecConfig& config) {
  if (config.num_threads < 0) {
    return invalid_argument(fn, "config.num_threads", "must be >= 0, got ", config.num_threads);
  }
  return Status();
}

// Runs `body`, turning an escaping exception (allocation failure) into a Status: nothing throws
// across the API. Every message leaves with the entry point's name in front.
template <typename F>
Status guarded(const char* fn, F&& body) {
  try {
    return with_context(fn, body());
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kInternal, std::string(fn) + ": out of host memory");
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, std::string(fn) + ": " + e.what());
  }
}

}  // namespace mla::detail
