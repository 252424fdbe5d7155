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
  return dispatch_elem(p.dtype, [&](auto traits) {
    return launch_decode_kernel("sm80::decode_kernel", &decode_kernel<Cfg, decltype(traits)>,
                                Cfg::kRows, Cfg::kThreads, Cfg::kSmemBytes, p, schedule, stream,
                                pdl);
  });
}

}  // namespace mla::cuda::sm80
