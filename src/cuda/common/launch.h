// The one launch helper of the CUDA backend: every kernel of the library goes through
// launch_kernel, with programmatic dependent launch (PDL) where the device has it (sm_90+): the
// kernel may be scheduled while its predecessor on the stream drains, and must call
// ptx::grid_dependency_wait() before it reads anything the predecessor writes. Captured into a
// CUDA graph as a programmatic edge.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "core/problem.h"
#include "cuda/common/check.h"
#include "cuda/common/elem.cuh"
#include "cuda/workspace.h"

namespace mla::cuda {

using DecodeKernel = void (*)(detail::DecodeProblem, ScheduleView);

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

// A decode kernel of configuration Cfg: grid (num_parts, ceil(s_q * h_q / Cfg::kRows)),
// Cfg::kThreads per CTA and Cfg::kSmemBytes of dynamic shared memory, whose limit is raised first.
// The kernel is kernel_of(Cfg{}, Traits{}), which the configuration's family defines next to its
// kernel (found by argument-dependent lookup in Cfg's namespace). Declared in registry.h too,
// whose table takes its address; instantiated once per configuration by MLA_INSTANTIATE_DECODE.
template <typename Cfg, typename Traits>
Status launch_decode(const detail::DecodeProblem& p, const ScheduleView& schedule,
                     cudaStream_t stream, bool pdl) {
  const DecodeKernel kernel = kernel_of(Cfg{}, Traits{});
  const int rows = p.s_q * p.h_q;
  const dim3 grid(schedule.num_parts, (rows + Cfg::kRows - 1) / Cfg::kRows);
  MLA_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(Cfg::kSmemBytes)));
  return launch_kernel("decode_kernel", kernel, grid, dim3(Cfg::kThreads), Cfg::kSmemBytes, stream,
                       pdl, p, schedule);
}

}  // namespace mla::cuda

// The body of an instance file: launch_decode of configuration `...` (a type; commas allowed)
// for both element types. Use at global scope.
#define MLA_INSTANTIATE_DECODE(...)                                                          \
  namespace mla::cuda {                                                                      \
  template Status launch_decode<__VA_ARGS__, Bf16>(const detail::DecodeProblem&,             \
                                                   const ScheduleView&, cudaStream_t, bool); \
  template Status launch_decode<__VA_ARGS__, Fp16>(const detail::DecodeProblem&,             \
                                                   const ScheduleView&, cudaStream_t, bool); \
  }
