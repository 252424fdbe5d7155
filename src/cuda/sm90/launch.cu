// Instances of the Hopper kernels (compiled for sm_90a only, registry.cu). The lock-step kernel
// (kernel.cuh): 64-token stages, 2 deep. Q (72 KB), two stages (144 KB) and the P tile fill the 227
// KB a block may use. Measured alternatives (docs/cuda_kernel_notes.md, v5): 4 stages of 32 tokens
// were 15-20% slower on every spec row, and 2-4 independent S accumulator chains made no
// difference.
#include <cstring>

#include "cuda/common/launch.h"
#include "cuda/sm90/config.h"
#include "cuda/sm90/kernel.cuh"
#include "cuda/sm90/seesaw.cuh"
#include "cuda/sm90/tensor_map.h"

namespace mla::cuda::sm90 {

// The kernel of configuration Cfg, for launch_decode (common/launch.h).
template <int kBlockN, int kStages, typename Traits>
constexpr DecodeKernel kernel_of(Config<kBlockN, kStages>, Traits) {
  return &decode_kernel<Config<kBlockN, kStages>, Traits>;
}

}  // namespace mla::cuda::sm90

MLA_INSTANTIATE_DECODE(mla::cuda::sm90::Config<64, 2>)

namespace mla::cuda {
namespace {

// The seesaw kernel (seesaw.cuh): TMA for page sizes of 64 and more where the cache has a tensor
// map, its cp.async producer otherwise. The map is cached per cache (tensor_map.h).
template <typename Traits>
Status launch_seesaw(const detail::DecodeProblem& p, const ScheduleView& schedule,
                     cudaStream_t stream, bool pdl) {
  using Cfg = sm90::SeesawConfig;
  sm90::KvSource src;
  std::memset(&src, 0, sizeof src);
  src.use_tma = sm90::kv_tensor_map(p, &src.map) ? 1 : 0;
  const int row_tiles = (p.s_q * p.h_q + Cfg::kRows - 1) / Cfg::kRows;
  // One row tile reads each page once: stream it through L2. Several read it one after another.
  src.evict_first = row_tiles == 1 ? 1 : 0;
  auto* kernel = p.page_size < Cfg::kBlockN ? &sm90::seesaw_kernel<Traits, true>
                                            : &sm90::seesaw_kernel<Traits, false>;
  MLA_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(Cfg::kSmemBytes)));
  return launch_kernel("sm90::seesaw_kernel", kernel, dim3(schedule.num_parts, row_tiles),
                       dim3(Cfg::kThreads), Cfg::kSmemBytes, stream, pdl, p, schedule, src);
}

}  // namespace

template <>
Status launch_decode<sm90::SeesawConfig, Bf16>(const detail::DecodeProblem& p,
                                               const ScheduleView& schedule, cudaStream_t stream,
                                               bool pdl) {
  return launch_seesaw<Bf16>(p, schedule, stream, pdl);
}

template <>
Status launch_decode<sm90::SeesawConfig, Fp16>(const detail::DecodeProblem& p,
                                               const ScheduleView& schedule, cudaStream_t stream,
                                               bool pdl) {
  return launch_seesaw<Fp16>(p, schedule, stream, pdl);
}

}  // namespace mla::cuda
