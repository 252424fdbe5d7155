// Configurations of the Hopper kernel and their launches (compiled for sm_90a only).
//
// One configuration: 64-token stages, 2 deep. Q (72 KB), two stages (144 KB) and the P tile fill
// the 227 KB a block may use. Measured alternatives (docs/cuda_kernel_notes.md, v5): 4 stages of
// 32 tokens were 15-20% slower on every spec row, and 2-4 independent S accumulator chains made
// no difference.
#include <cstring>

#include "cuda/common/check.h"
#include "cuda/common/elem.cuh"
#include "cuda/common/launch.h"
#include "cuda/sm90/config.h"
#include "cuda/sm90/kernel.cuh"
#include "cuda/sm90/launch.h"
#include "cuda/sm90/seesaw.cuh"
#include "cuda/sm90/tensor_map.h"

namespace mla::cuda::sm90 {
namespace {

template <typename Cfg>
constexpr KernelChoice choice_of() {
  KernelChoice c;
  c.block_n = Cfg::kBlockN;
  c.stages = Cfg::kStages;
  c.smem_bytes = Cfg::kSmemBytes;
  return c;
}

constexpr KernelChoice seesaw_choice() {
  KernelChoice c;
  c.seesaw = true;
  c.block_n = SeesawConfig::kBlockN;
  c.stages = SeesawConfig::kSlots;
  c.smem_bytes = SeesawConfig::kSmemBytes;
  return c;
}

constexpr KernelChoice kCandidates[] = {seesaw_choice(), choice_of<Config<64, 2>>()};

Status launch_seesaw(const detail::DecodeProblem& p, const ScheduleView& schedule,
                     cudaStream_t stream, bool pdl) {
  KvSource src;
  std::memset(&src, 0, sizeof src);
  src.use_tma = kv_tensor_map(p, &src.map) ? 1 : 0;
  const int rows = p.s_q * p.h_q;
  const int row_tiles = (rows + SeesawConfig::kRows - 1) / SeesawConfig::kRows;
  src.evict_first = row_tiles == 1 ? 1 : 0;
  return dispatch_elem(p.dtype, [&](auto traits) {
    auto* kernel = &seesaw_kernel<decltype(traits)>;
    MLA_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(SeesawConfig::kSmemBytes)));
    return launch_kernel("sm90::seesaw_kernel", kernel, dim3(schedule.num_parts, row_tiles),
                         dim3(SeesawConfig::kThreads), SeesawConfig::kSmemBytes, stream, pdl, p,
                         schedule, src);
  });
}

template <typename Cfg>
Status launch_config(const detail::DecodeProblem& p, const ScheduleView& schedule,
                     cudaStream_t stream, bool pdl) {
  return dispatch_elem(p.dtype, [&](auto traits) {
    return launch_decode_kernel("sm90::decode_kernel", &decode_kernel<Cfg, decltype(traits)>,
                                Cfg::kRows, Cfg::kThreads, Cfg::kSmemBytes, p, schedule, stream,
                                pdl);
  });
}

}  // namespace

std::string KernelChoice::name() const {
  if (seesaw) return "sm90ss";
  return "sm90n" + std::to_string(block_n) + "s" + std::to_string(stages);
}

bool choose_kernel(size_t smem_limit, const char* only, KernelChoice* choice) {
  for (const KernelChoice& c : kCandidates) {
    if (only != nullptr && c.name() != only) continue;
    if (c.smem_bytes <= smem_limit) {
      *choice = c;
      return true;
    }
  }
  return false;
}

Status launch_decode(const KernelChoice& c, const detail::DecodeProblem& p,
                     const ScheduleView& schedule, cudaStream_t stream, bool pdl) {
  if (c.seesaw) return launch_seesaw(p, schedule, stream, pdl);
  if (c.block_n == 64 && c.stages == 2)
    return launch_config<Config<64, 2>>(p, schedule, stream, pdl);
  return Status(StatusCode::kInternal, "sm90::launch_decode: no kernel compiled for this choice");
}

}  // namespace mla::cuda::sm90
