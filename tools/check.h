// `mla-decode check`: the correctness suite of the tests, runnable on any installed machine.
#pragma once

#include <string>

#include "mla/mla.h"

namespace mla::tools {

struct CheckOptions {
  Device device{};
  int level = 1;
  int threads = 0;
  std::string filter;
};

// Prints a pass/fail table; returns 0 when every case passed, 1 otherwise, 2 when the device
// cannot run.
int run_check(const CheckOptions& options);

}  // namespace mla::tools
