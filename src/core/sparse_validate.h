// Host-side validation of mla::sparse_decode's arguments, like validate.h for decode: structure
// first (nothing is read), then (CPU tensors only) the contents of indices and topk_lengths.
#pragma once

#include "core/sparse_problem.h"
#include "mla/mla.h"

namespace mla::detail {

// Validates `params` and fills `problem` and `device` (the device every tensor is on).
Status validate_sparse_decode(const char* fn, const SparseDecodeParams& params,
                              SparseDecodeProblem* problem, Device* device);
// The shape arguments of sparse_workspace_size().
Status validate_sparse_shape(const char* fn, const SparseDecodeShape& shape);
// CPU tensors: topk_lengths[b] in [0, topk], and every entry that counts is -1 or a slot in
// [0, num_pages * page_size). kDataError naming the first bad entry.
Status validate_sparse_data(const char* fn, const SparseDecodeProblem& problem);

}  // namespace mla::detail
