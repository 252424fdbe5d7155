// Host side of the portable decode kernel: which tile configuration serves a shape on a device,
// and its launch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>

#include "core/problem.h"
#include "cuda/workspace.h"

namespace mla::cuda::sm80 {

// One compiled configuration (see config.h).
struct KernelChoice {
  int m_tiles = 0;  // rows per CTA = 16 * m_tiles
  int block_n = 0;  // tokens per pipeline stage
  int stages = 0;
  int warps = 0;
  size_t smem_bytes = 0;
  int rows_per_cta() const { return 16 * m_tiles; }
  std::string name() const;  // m<m_tiles>n<block_n>s<stages>w<warps>
};

// The preferred configuration for `rows` = s_q * h_q query rows whose shared memory fits
// `smem_limit` bytes per block; with `only` (a name such as "m4n64s2w8", for tests and
// benchmarks) that configuration alone is considered. Returns false when none fits.
bool choose_kernel(int rows, size_t smem_limit, const char* only, KernelChoice* choice);

// Enqueues the decode kernel on a grid of (num_parts, ceil(rows / rows_per_cta)); `pdl`: as a
// programmatic dependent launch (sm_90+).
Status launch_decode(const KernelChoice& choice, const detail::DecodeProblem& problem,
                     const ScheduleView& schedule, cudaStream_t stream, bool pdl);

// Per-configuration launchers, one translation unit each (instances/*.cu).
template <typename Cfg>
Status launch_config(const detail::DecodeProblem& problem, const ScheduleView& schedule,
                     cudaStream_t stream, bool pdl);

}  // namespace mla::cuda::sm80
