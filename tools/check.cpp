#include "check.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "harness.h"

namespace mla::tools {
namespace {

std::string device_label(Device d) {
  return d.type == DeviceType::kCPU ? "cpu" : "cuda:" + std::to_string(d.index);
}

std::string shape_label(const testing::DecodeCase& c) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "b=%d s_q=%d h_q=%d page=%d%s %s", c.batch, c.s_q, c.h_q,
                c.page_size, c.causal ? " causal" : "",
                c.dtype == DType::kBFloat16 ? "bf16" : "fp16");
  return buf;
}

}  // namespace

int run_check(const CheckOptions& options) {
  if (!testing::device_usable(options.device)) {
    std::fprintf(
        stderr, "mla-decode check: device %s is not usable (%s)\n",
        device_label(options.device).c_str(),
        cuda_available_in_build() ? "no CUDA device found" : "this build has no CUDA backend");
    return 2;
  }
  std::vector<testing::DecodeCase> cases = testing::corner_cases();
  for (const auto& c : testing::correctness_sweep(options.level)) cases.push_back(c);
  if (!options.filter.empty()) {
    std::vector<testing::DecodeCase> kept;
    for (const auto& c : cases) {
      if (c.name.find(options.filter) != std::string::npos) kept.push_back(c);
    }
    cases.swap(kept);
  }
  ExecConfig config;
  config.num_threads = options.threads;
  std::printf(
      "mla-decode check on %s, level %d: %zu cases (out, lse and workspace poisoned, "
      "dead pages NaN; each case run twice)\n",
      device_label(options.device).c_str(), options.level, cases.size());
  std::printf("%-22s %-34s %-6s %9s %10s %10s\n", "case", "shape", "result", "checked", "max_abs",
              "cos_diff");
  const bool tty = isatty(fileno(stderr));
  const auto start = std::chrono::steady_clock::now();
  int failures = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    if (tty) {
      std::fprintf(stderr, "\r[%zu/%zu] %-30s", i + 1, cases.size(), c.name.c_str());
      std::fflush(stderr);
    }
    Status status;
    const testing::Comparison r = testing::run_decode_case(c, options.device, config, &status);
    const bool ok = status.ok() && r.ok;
    if (tty) std::fprintf(stderr, "\r%60s\r", "");
    std::printf("%-22s %-34s %-6s %9lld %10.2e %10.2e\n", c.name.c_str(), shape_label(c).c_str(),
                ok ? "pass" : "FAIL", static_cast<long long>(r.checked), r.max_abs, r.cos_diff);
    if (!ok) {
      ++failures;
      std::printf("    %s\n    %s\n", testing::describe(c).c_str(),
                  status.ok() ? r.failure.c_str() : status.message().c_str());
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%zu passed, %d failed (%.1f s)\n", cases.size() - failures, failures, seconds);
  return failures == 0 ? 0 : 1;
}

}  // namespace mla::tools
