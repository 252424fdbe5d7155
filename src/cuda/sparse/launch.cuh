// launch_sparse (sparse.h) for one configuration: included by the instance files, one per
// configuration, so the configurations compile in parallel.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/check.h"
#include "cuda/common/elem.cuh"
#include "cuda/common/launch.h"
#include "cuda/sparse/kernel.cuh"
#include "cuda/sparse/sparse.h"

namespace mla::cuda::sparse {

// Grid: batch * s_q * row_tiles * num_splits CTAs in x (sparse_decode.cu checks it fits int32),
// Cfg::kThreads per CTA, Cfg::kSmemBytes of dynamic shared memory, whose limit is raised first.
template <typename Cfg, typename Traits>
Status launch_sparse(const detail::SparseDecodeProblem& p, const View& v, cudaStream_t stream,
                     bool pdl) {
  auto* kernel = &sparse_kernel<Cfg, Traits>;
  const int64_t ctas = static_cast<int64_t>(p.batch) * p.s_q * v.row_tiles * v.num_splits;
  MLA_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(Cfg::kSmemBytes)));
  return launch_kernel("sparse_kernel", kernel, dim3(static_cast<unsigned>(ctas)),
                       dim3(Cfg::kThreads), Cfg::kSmemBytes, stream, pdl, p, v);
}

}  // namespace mla::cuda::sparse

// The body of an instance file: launch_sparse of configuration `...` (a type; commas allowed)
// for both element types. Use at global scope.
#define MLA_INSTANTIATE_SPARSE(...)                                                    \
  namespace mla::cuda::sparse {                                                        \
  template Status launch_sparse<__VA_ARGS__, Bf16>(const detail::SparseDecodeProblem&, \
                                                   const View&, cudaStream_t, bool);   \
  template Status launch_sparse<__VA_ARGS__, Fp16>(const detail::SparseDecodeProblem&, \
                                                   const View&, cudaStream_t, bool);   \
  }
