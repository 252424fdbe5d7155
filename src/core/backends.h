// The interface each backend implements. src/core/api.cpp validates the public arguments into
// the problem structs of problem.h and dispatches here by device.
#pragma once

#include <cstddef>
#include <cstdint>

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

// All functions return kUnsupported when the build has no CUDA backend (src/core/no_cuda.cpp).
bool available_in_build();
int device_count();
// kUnsupported when `device` does not exist or is older than sm_80.
Status check_device(int device);
Status workspace_size(const DecodeShape& shape, int device, size_t* bytes);
Status plan(const detail::DecodeProblem& problem, void* workspace, size_t workspace_bytes,
            void* stream);
Status decode_planned(const detail::DecodeProblem& problem, void* workspace, size_t workspace_bytes,
                      void* stream);
Status check_data_errors(const void* workspace, size_t workspace_bytes, int device, void* stream);
Status write_kv_cache(const detail::KvWriteProblem& problem, void* stream);
Status merge_states(const detail::MergeProblem& problem, void* stream);

}  // namespace mla::cuda
