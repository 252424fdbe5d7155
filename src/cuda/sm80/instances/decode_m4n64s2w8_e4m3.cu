// Instance: 4x16 query rows, 64-token KV stages, 2 stages, 8 warps, fp8_e4m3 cache (registry.cu).
#include "cuda/sm80/kernel.cuh"

MLA_INSTANTIATE_DECODE(mla::cuda::sm80::Config<4, 64, 2, 8, mla::detail::KvType::kFp8E4M3>)
