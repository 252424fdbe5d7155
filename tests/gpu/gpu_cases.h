// Helpers shared by the GPU suites that run harness cases (harness.h) against the CPU reference.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/backends.h"
#include "harness.h"

namespace mla::testing {

inline constexpr Device kGpu{DeviceType::kCUDA, 0};

// Restricts the kernel choice for the lifetime of the object (as MLA_CUDA_KERNEL and
// MLA_CUDA_SMEM_LIMIT do for a whole process), restoring the previous override after.
class ScopedKernelOverride {
 public:
  explicit ScopedKernelOverride(const cuda::KernelOverride& o)
      : previous_(cuda::kernel_override()) {
    cuda::set_kernel_override(o);
  }
  ~ScopedKernelOverride() { cuda::set_kernel_override(previous_); }
  ScopedKernelOverride(const ScopedKernelOverride&) = delete;
  ScopedKernelOverride& operator=(const ScopedKernelOverride&) = delete;

 private:
  cuda::KernelOverride previous_;
};

// Runs the generated problem `hd` on GPU 0 and expects the library's OK and every element within
// the harness's tolerances of the reference.
inline void expect_case_passes(const HostDecode& hd) {
  Status status;
  const Comparison cmp = run_decode_case(hd, kGpu, ExecConfig{}, &status);
  ASSERT_TRUE(status.ok()) << describe(hd.c) << ": " << status.message();
  EXPECT_GT(cmp.checked, 0) << describe(hd.c);
  EXPECT_TRUE(cmp.ok) << describe(hd.c) << ": " << cmp.failure << " (max_abs " << cmp.max_abs
                      << ", cos_diff " << cmp.cos_diff << ")";
}

inline void expect_case_passes(const DecodeCase& c) { expect_case_passes(make_decode(c)); }

// The kernel overrides that together reach every compiled configuration for caches of `format`
// that GPU 0 runs, whatever it would choose: the Ampere-class fallbacks (shared memory limited
// to an A100's and to an sm_86 / sm_89 card's) and each registered name.
inline std::vector<cuda::KernelOverride> every_configuration(KvFormat format) {
  std::vector<cuda::KernelOverride> all = {{"", 163000}, {"", 101376}};
  for (const std::string& name : cuda::kernel_names(0, format)) all.push_back({name, 0});
  return all;
}

// Runs every case under every override, each case's data and reference generated once (most
// of a case's time is the reference).
inline void expect_cases_pass_under(const std::vector<DecodeCase>& cases,
                                    const std::vector<cuda::KernelOverride>& overrides) {
  for (const DecodeCase& c : cases) {
    const HostDecode hd = make_decode(c);
    for (const cuda::KernelOverride& o : overrides) {
      SCOPED_TRACE(o.kernel.empty() ? "MLA_CUDA_SMEM_LIMIT=" + std::to_string(o.smem_limit)
                                    : "MLA_CUDA_KERNEL=" + o.kernel);
      ScopedKernelOverride scoped(o);
      expect_case_passes(hd);
    }
  }
}

}  // namespace mla::testing
