// The sparse decode interface of the CPU backends (src/cpu/sparse_reference.cpp,
// src/cpu/fast/sparse.cpp). src/core/sparse_api.cpp validates and dispatches here; the CUDA
// backend has no sparse kernels yet and the entry point answers kUnsupported for it.
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
