// Host-side validation of the public arguments (spec section 3.4): every check that can run
// without reading device memory, plus (CPU tensors only) the data checks on seq_lens,
// block_table and slot_mapping. A failed check returns a Status naming the argument and the
// offending value; the caller then launches and writes nothing.
#pragma once

#include <cstddef>

#include "core/problem.h"
#include "mla/mla.h"

namespace mla::detail {

// Validates `params` and fills `problem` and `device` (the device every tensor is on).
Status validate_decode(const char* fn, const DecodeParams& params, DecodeProblem* problem,
                       Device* device);
// Validates the shape arguments of workspace_size().
Status validate_shape(const char* fn, const DecodeShape& shape);
// CPU tensors: seq_lens in [0, max_pages * page_size] and every live page id in [0, num_pages).
Status validate_decode_data(const char* fn, const DecodeProblem& problem);

// CPU tensors: the fp8_e4m3 scale tensor at `kv_scale_ptr` (nullptr: none, nothing to do) must
// hold a finite value > 0 (else kDataError); it is copied into `*kv_scale`.
Status resolve_kv_scale(const char* fn, const float* kv_scale_ptr, float* kv_scale);

// The caller's workspace against the `required` bytes of this call: size, null, 256-byte alignment.
Status check_workspace(const char* fn, const Workspace& workspace, size_t required);

Status validate_kv_write(const char* fn, const KvCacheWriteParams& params, KvWriteProblem* problem,
                         Device* device);
// CPU tensors: every slot in [-1, num_pages * page_size).
Status validate_kv_write_data(const char* fn, const KvWriteProblem& problem);

Status validate_merge(const char* fn, const MergeParams& params, MergeProblem* problem,
                      Device* device);

}  // namespace mla::detail
