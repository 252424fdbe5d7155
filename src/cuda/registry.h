// The decode kernel registry: one table of every compiled decode kernel configuration
// (registry.cu). The chooser, MLA_CUDA_KERNEL, `mla-decode kernels` (and through it
// tools/gpu-check.sh --kernels all) and the GPU tests all iterate it. Adding a kernel is one
// entry there plus the translation unit that instantiates its launch function.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <vector>

#include "core/backends.h"
#include "core/problem.h"
#include "cuda/common/device.h"
#include "cuda/workspace.h"

namespace mla::cuda {

// Enqueues a decode kernel on a grid of (schedule.num_parts, ceil(s_q * h_q / rows_per_cta));
// `pdl`: as a programmatic dependent launch (sm_90+).
using LaunchFn = Status (*)(const detail::DecodeProblem& problem, const ScheduleView& schedule,
                            cudaStream_t stream, bool pdl);

// The launch of configuration Cfg for element type Traits (defined in common/launch.h, instantiated
// by the configuration's instance file): a LaunchFn.
template <typename Cfg, typename Traits>
Status launch_decode(const detail::DecodeProblem& problem, const ScheduleView& schedule,
                     cudaStream_t stream, bool pdl);

// One compiled configuration for one element type and KV cache format. A configuration has one
// entry per element type and format it serves, under one name (so MLA_CUDA_KERNEL=m4n32s2w8
// forces that tile shape for every format it has been compiled for).
struct KernelEntry {
  const char* name;  // what MLA_CUDA_KERNEL accepts, e.g. "m4n64s2w8" or "sm90n64s2"
  int arch;          // 80: sm_80 and newer; 90: sm_90a, compute capability 9.0 only
  int rows_per_cta;  // packed query rows (s * h_q + h) one CTA serves
  detail::ElemType elem;
  detail::KvType kv_format;  // kHalf: the cache has q's type; else an fp8 layout (core/fp8.h)
  size_t smem_bytes;         // dynamic shared memory per CTA
  int threads;               // per CTA
  LaunchFn launch;

  // Whether this entry can run on `info`'s device with at most `smem_limit` bytes a block.
  bool runs_on(const DeviceInfo& info, size_t smem_limit) const;
};

// Every registered entry, in the chooser's order of preference among equal tile heights.
const std::vector<KernelEntry>& kernel_registry();

// The entry serving `batch` requests of `rows` = s_q * h_q query rows of `elem` from a `kv`
// cache of `page_size` tokens a page on `info`'s device within `smem_limit` bytes of shared
// memory a block; with `only` (a registered name) that configuration alone. nullptr when none
// fits.
//
// The rule (16-bit caches; fp8 caches go to the portable kernel on every architecture so far),
// on compute capability 9.0: the seesaw kernel (sm90ss) where its TMA producer pays, pages of
// at least kSeesawMinPage tokens, or, for at most 32 rows, kSeesawMinPageFewRows tokens and
// kSeesawMinBatchFewRows requests; else the first Hopper kernel (sm90n64s2) for more than 32
// rows. Otherwise the portable kernel with the smallest tile height of 16, 32, 64 that holds the
// rows, then taller tiles, then shorter ones, each in table order, the first that fits.
const KernelEntry* choose_kernel(const DeviceInfo& info, int batch, int rows, int page_size,
                                 detail::ElemType elem, detail::KvType kv, size_t smem_limit,
                                 const char* only);

// Measured on the H200 (bench/results/2026-11-30-h200-sm90ss-v8.md, batch 128, 4096 keys): the
// seesaw kernel against the chooser of before, h_q 128: 428 / 470 us at page 8, 381 / 470 at 16;
// h_q 16: 219 / 199 at page 8, 200 / 199 at 16, 183 / 200 at 32; h_q 16 at page 64 and 8192
// keys: 27.5 / 26.4 us at batch 1, 31.4 / 32.8 at batch 4.
constexpr const char* kSeesawName = "sm90ss";
constexpr int kSeesawMinPage = 8;
constexpr int kSeesawMinPageFewRows = 32;
constexpr int kSeesawMinBatchFewRows = 4;

// The configuration override of tests and benchmarks (KernelOverride in core/backends.h). Read
// from MLA_CUDA_KERNEL / MLA_CUDA_SMEM_LIMIT at the first call that needs it.
struct ActiveOverride {
  char kernel[32];    // empty: the chooser decides
  size_t smem_limit;  // 0: the device's limit
};
ActiveOverride active_override();

}  // namespace mla::cuda
