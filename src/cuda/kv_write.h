// The KV cache write kernels (kv_write.cu: 16-bit caches; kv_write_fp8.cu: the fp8 quantisers),
// launched by cuda::write_kv_cache on the caller's stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/problem.h"
#include "core/status.h"

namespace mla::cuda {

// Quantises every token of `p` whose slot is in [0, capacity) into its fp8 cache row (p.kv_type
// is kFp8E4M3 or kFp8DsMla); other slots (-1 padding, or out of range) are skipped.
Status launch_write_kv_fp8(const detail::KvWriteProblem& p, int page_shift, int64_t capacity,
                           cudaStream_t stream);

}  // namespace mla::cuda
