// Helpers shared by the GPU suites that run harness cases (harness.h) against the CPU reference.
#pragma once

#include <gtest/gtest.h>

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

// Runs case `c` on GPU 0 and expects the library's OK and every element within the harness's
// tolerances of the reference.
inline void expect_case_passes(const DecodeCase& c) {
  Status status;
  const Comparison cmp = run_decode_case(c, kGpu, ExecConfig{}, &status);
  ASSERT_TRUE(status.ok()) << describe(c) << ": " << status.message();
  EXPECT_GT(cmp.checked, 0) << describe(c);
  EXPECT_TRUE(cmp.ok) << describe(c) << ": " << cmp.failure << " (max_abs " << cmp.max_abs
                      << ", cos_diff " << cmp.cos_diff << ")";
}

}  // namespace mla::testing
