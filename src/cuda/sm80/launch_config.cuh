// Definition of launch_config<Cfg>, included by the one .cu file that instantiates each Cfg.
#pragma once

#include "cuda/common/check.h"
#include "cuda/common/elem.cuh"
#include "cuda/common/launch.h"
#include "cuda/sm80/kernel.cuh"
#include "cuda/sm80/launch.h"

namespace mla::cuda::sm80 {

template <typename Cfg>
Status launch_config(const detail::DecodeProblem& p, const ScheduleView& schedule,
                     cudaStream_t stream, bool pdl) {
  const int rows = p.s_q * p.h_q;
  const dim3 grid(schedule.num_parts, (rows + Cfg::kRows - 1) / Cfg::kRows);
  return dispatch_elem(p.dtype, [&](auto traits) -> Status {
    auto* kernel = &decode_kernel<Cfg, decltype(traits)>;
    MLA_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(Cfg::kSmemBytes)));
    return launch_kernel("sm80::decode_kernel", kernel, grid, dim3(Cfg::kThreads), Cfg::kSmemBytes,
                         stream, pdl, p, schedule);
  });
}

}  // namespace mla::cuda::sm80
