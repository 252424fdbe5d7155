// Kernel launch with programmatic dependent launch (PDL) where the device has it (sm_90+): the
// kernel may be scheduled while its predecessor on the stream drains, and must call
// ptx::grid_dependency_wait() before it reads anything the predecessor writes. Captured into a
// CUDA graph as a programmatic edge.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "core/problem.h"
#include "cuda/common/check.h"
#include "cuda/workspace.h"

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

// A decode kernel: grid (num_parts, ceil(s_q * h_q / rows_per_cta)), `threads` per CTA and
// `smem_bytes` of dynamic shared memory, whose limit is raised first.
using DecodeKernel = void (*)(detail::DecodeProblem, ScheduleView);
inline Status launch_decode_kernel(const char* name, DecodeKernel kernel, int rows_per_cta,
                                   int threads, size_t smem_bytes, const detail::DecodeProblem& p,
                                   const ScheduleView& schedule, cudaStream_t stream, bool pdl) {
  const int rows = p.s_q * p.h_q;
  const dim3 grid(schedule.num_parts, (rows + rows_per_cta - 1) / rows_per_cta);
  MLA_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(smem_bytes)));
  return launch_kernel(name, kernel, grid, dim3(threads), smem_bytes, stream, pdl, p, schedule);
}

}  // namespace mla::cuda
