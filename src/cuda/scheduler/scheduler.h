// Device-side split-KV scheduler (plan step): reads seq_lens on the device, validates them and
// writes the schedule of workspace.h, with no host synchronisation and a fixed one-CTA grid.
#pragma once

#include <cuda_runtime.h>

#include "core/problem.h"
#include "cuda/workspace.h"

namespace mla::cuda {

// Enqueues the scheduler on `stream` (`pdl`: as a programmatic dependent launch, sm_90+).
// Resets the workspace's error key first.
Status launch_scheduler(const detail::DecodeProblem& problem, const ScheduleView& schedule,
                        cudaStream_t stream, bool pdl);

}  // namespace mla::cuda
