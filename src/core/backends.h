// The interface each backend implements. src/core/api.cpp validates the public arguments into
// the problem structs of problem.h and dispatches here by device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/problem.h"
#include "mla/mla.h"

namespace mla::cpu {

// Fast path (src/cpu/fast/). num_threads >= 1 (already resolved).
size_t workspace_size(const DecodeShape& shape, int num_threads);
Status decode(const detail::DecodeProblem& problem, void* workspace, size_t workspace_bytes,
              int num_threads);
// Straightforward reference (src/cpu/reference.cpp): double accumulation, no workspace.
void reference_decode(const detail::DecodeProblem& problem);
void write_kv_cache(const detail::KvWriteProblem& problem);
void merge_states(const detail::MergeProblem& problem);

}  // namespace mla::cpu

namespace mla::cuda {

// Which half of a decode call to run: the schedule (plan), the kernels (decode_planned), or both.
enum class DecodeStage { kPlan, kRun, kBoth };

// All functions return kUnsupported when the build has no CUDA backend (src/core/no_cuda.cpp).
// Each runs on `device` (the device of its tensors, whatever device is current) and returns
// messages that start with `fn`.
bool available_in_build();
int device_count();
Status workspace_size(const char* fn, const DecodeShape& shape, int device, size_t* bytes);
Status decode(const char* fn, const detail::DecodeProblem& problem, int device,
              const Workspace& workspace, DecodeStage stage, void* stream);
Status check_data_errors(const char* fn, const Workspace& workspace, int device, void* stream);
Status write_kv_cache(const char* fn, const detail::KvWriteProblem& problem, int device,
                      void* stream);
Status merge_states(const char* fn, const detail::MergeProblem& problem, int device, void* stream);

// Decode kernel configurations, for tests, benchmarks and `mla-decode kernels`.
// The names of the registered configurations `device` can run for caches of `format`, in
// registry order (empty when the device is unusable or the backend is not built).
std::vector<std::string> kernel_names(int device, KvFormat format = KvFormat::kSameAsQ);
// Restricts the kernel choice of every later call in the process: `kernel` names the one
// configuration to use (empty: the chooser decides), `smem_limit` caps the shared memory a block
// may use (0: the device's limit). Initialised from MLA_CUDA_KERNEL and MLA_CUDA_SMEM_LIMIT,
// which are read once, at the first call that sizes or launches a decode: set them before it.
// Size workspaces after changing the override, since the choice decides their size.
struct KernelOverride {
  std::string kernel;
  size_t smem_limit = 0;
};
KernelOverride kernel_override();
void set_kernel_override(const KernelOverride& override_value);

}  // namespace mla::cuda
