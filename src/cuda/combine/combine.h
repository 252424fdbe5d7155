// Split-KV merge: for every request the schedule cut across partitions, merges the fp32
// partials of its splits by their LSE into out / lse.
#pragma once

#include <cuda_runtime.h>

#include "core/problem.h"
#include "cuda/workspace.h"

namespace mla::cuda {

// `pdl`: as a programmatic dependent launch of the decode kernel (sm_90+).
Status launch_combine(const detail::DecodeProblem& problem, const ScheduleView& schedule,
                      cudaStream_t stream, bool pdl);

}  // namespace mla::cuda
