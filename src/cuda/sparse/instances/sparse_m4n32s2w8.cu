// Sparse decode configuration m4n32s2w8 (sparse/config.h; chosen in sparse_decode.cu).
#include "cuda/sparse/launch.cuh"

MLA_INSTANTIATE_SPARSE(mla::cuda::sparse::Config<4, 32, 2, 8>)
