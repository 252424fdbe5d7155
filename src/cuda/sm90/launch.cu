// Instance of the Hopper kernel (compiled for sm_90a only, registry.cu): 64-token stages, 2
// deep. Q (72 KB), two stages (144 KB) and the P tile fill the 227 KB a block may use. Measured
// alternatives (docs/cuda_kernel_notes.md, v5): 4 stages of 32 tokens were 15-20% slower on
// every spec row, and 2-4 independent S accumulator chains made no difference.
#include "cuda/common/launch.h"
#include "cuda/sm90/config.h"
#include "cuda/sm90/kernel.cuh"

namespace mla::cuda::sm90 {

// The kernel of configuration Cfg, for launch_decode (common/launch.h).
template <int kBlockN, int kStages, typename Traits>
constexpr DecodeKernel kernel_of(Config<kBlockN, kStages>, Traits) {
  return &decode_kernel<Config<kBlockN, kStages>, Traits>;
}

}  // namespace mla::cuda::sm90

MLA_INSTANTIATE_DECODE(mla::cuda::sm90::Config<64, 2>)
