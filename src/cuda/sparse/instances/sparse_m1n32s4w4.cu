// Sparse decode configuration m1n32s4w4 (sparse/config.h; chosen in sparse_decode.cu).
#include "cuda/sparse/launch.cuh"

MLA_INSTANTIATE_SPARSE(mla::cuda::sparse::Config<1, 32, 4, 4>)
