// Instance: 1x16 query rows, 32-token KV stages, 2 stages, 4 warps, fp8_e4m3 cache (registry.cu).
#include "cuda/sm80/kernel.cuh"

MLA_INSTANTIATE_DECODE(mla::cuda::sm80::Config<1, 32, 2, 4, mla::detail::KvType::kFp8E4M3>)
