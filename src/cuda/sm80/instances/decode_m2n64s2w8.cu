// Instance: 2x16 query rows, 64-token KV stages, 2 stages, 8 warps (registry.cu).
#include "cuda/sm80/kernel.cuh"

MLA_INSTANTIATE_DECODE(mla::cuda::sm80::Config<2, 64, 2, 8>)
