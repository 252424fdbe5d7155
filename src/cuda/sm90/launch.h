// Host side of the Hopper decode kernel: whether it was built, which tile configuration serves a
// shape, and its launch. The kernel is compiled for sm_90a only, so it runs on compute
// capability 9.0 exactly; decode.cu falls back to the portable kernel elsewhere.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "core/problem.h"
#include "cuda/workspace.h"

namespace mla::cuda::sm90 {

struct KernelChoice {
  bool seesaw = false;  // the warp-specialised seesaw kernel (seesaw.cuh), else the lock-step one
  int block_n = 0;      // tokens per pipeline stage
  int stages = 0;
  size_t smem_bytes = 0;
  static constexpr int kRowsPerCta = 64;
  std::string name() const;  // sm90ss, or sm90n<block_n>s<stages>
};

// The preferred configuration whose shared memory fits `smem_limit` bytes per block; with `only`
// (a configuration name, for tests and benchmarks) that one alone. False when none fits.
bool choose_kernel(size_t smem_limit, const char* only, KernelChoice* choice);

// Enqueues the kernel on a grid of (num_parts, ceil(rows / 64)); `pdl`: as a programmatic
// dependent launch.
Status launch_decode(const KernelChoice& choice, const detail::DecodeProblem& problem,
                     const ScheduleView& schedule, cudaStream_t stream, bool pdl);

}  // namespace mla::cuda::sm90
