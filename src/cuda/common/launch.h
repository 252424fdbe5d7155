// Kernel launch with programmatic dependent launch (PDL) where the device has it (sm_90+): the
// kernel may be scheduled while its predecessor on the stream drains, and must call
// ptx::grid_dependency_wait() before it reads anything the predecessor writes. Captured into a
// CUDA graph as a programmatic edge.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "cuda/common/check.h"

namespace mla::cuda {

template <typename... Params, typename... Args>
Status launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                     size_t smem_bytes, cudaStream_t stream, bool pdl, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = pdl ? 1 : 0;
  return cuda_status(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...), name);
}

}  // namespace mla::cuda
