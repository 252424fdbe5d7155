// The sparse decode interface of the backends: the CPU reference and fast path
// (src/cpu/sparse_reference.cpp, src/cpu/fast/sparse.cpp) and the CUDA path (src/cuda/sparse/).
// src/core/sparse_api.cpp validates and dispatches here.
#pragma once

#include <cstddef>

#include "core/sparse_problem.h"
#include "mla/mla.h"

namespace mla::cpu {

// Fast path. num_threads >= 1 (already resolved).
size_t sparse_workspace_size(const SparseDecodeShape& shape, int num_threads);
Status sparse_decode(const detail::SparseDecodeProblem& problem, void* workspace,
                     size_t workspace_bytes, int num_threads);
// Straightforward reference: double accumulation, no workspace.
void reference_sparse_decode(const detail::SparseDecodeProblem& problem);

}  // namespace mla::cpu

namespace mla::cuda {

// kUnsupported when the build has no CUDA backend (src/core/no_cuda.cpp). Both run on `device`
// (whatever device is current) and return messages that start with `fn`. The workspace depends
// on shapes and the device only; sparse_decode refuses fp8 caches (kUnsupported naming
// kv_format), checks the workspace's size, resets its error key (reported by check_data_errors)
// and enqueues the kernels on `stream` without a host synchronisation.
Status sparse_workspace_size(const char* fn, const SparseDecodeShape& shape, int device,
                             size_t* bytes);
Status sparse_decode(const char* fn, const detail::SparseDecodeProblem& problem, int device,
                     const Workspace& workspace, void* stream);

}  // namespace mla::cuda
