// Configuration choice for the portable kernel.
//
// Query rows are tiled by 16 when s_q * h_q <= 16, by 32 when <= 32 (a 64-row tile would spend
// 4x / 2x the tensor-core work in a memory-bound regime) and by 64 otherwise. On Hopper every
// tile streams 64-token KV stages, 2 deep: each warp re-reads its 16 x 576 Q band from shared
// memory per KV tile, so 64-token tiles halve that traffic, and measured on H100 they beat 4
// stages of 32 tokens on every spec row (docs/cuda_kernel_notes.md). The 16-row tile runs 8 warps
// (8 tokens of S each) so that each scheduler has two warps to hide latency with (4 warps with
// 4 stages of 32 tokens: 259 us on the h_q = 16 row, 8 warps with 2 x 64: 248 us).
// Ampere-class limits (163 KB per block) fall back to 2 stages of 32 tokens, and devices with
// about 100 KB per block use 16-row tiles for every shape.
#include "cuda/sm80/config.h"
#include "cuda/sm80/launch.h"

namespace mla::cuda::sm80 {
namespace {

template <typename Cfg>
constexpr KernelChoice choice_of() {
  KernelChoice c;
  c.m_tiles = Cfg::kMTiles;
  c.block_n = Cfg::kBlockN;
  c.stages = Cfg::kStages;
  c.warps = Cfg::kWarps;
  c.smem_bytes = Cfg::kSmemBytes;
  return c;
}

// Candidates in order of preference; the first that fits is used.
constexpr KernelChoice kSmallTile[] = {choice_of<Config<1, 64, 2, 8>>(),
                                       choice_of<Config<1, 32, 2, 4>>()};
constexpr KernelChoice kMidTile[] = {choice_of<Config<2, 64, 2, 8>>(),
                                     choice_of<Config<4, 32, 2, 8>>(),
                                     choice_of<Config<1, 32, 2, 4>>()};
constexpr KernelChoice kLargeTile[] = {choice_of<Config<4, 64, 2, 8>>(),
                                       choice_of<Config<4, 32, 2, 8>>(),
                                       choice_of<Config<1, 32, 2, 4>>()};

bool same(const KernelChoice& c, int m_tiles, int block_n, int stages, int warps) {
  return c.m_tiles == m_tiles && c.block_n == block_n && c.stages == stages && c.warps == warps;
}

}  // namespace

std::string KernelChoice::name() const {
  return "m" + std::to_string(m_tiles) + "n" + std::to_string(block_n) + "s" +
         std::to_string(stages) + "w" + std::to_string(warps);
}

bool choose_kernel(int rows, size_t smem_limit, const char* only, KernelChoice* choice) {
  auto pick = [&](const auto& list) {
    for (const KernelChoice& c : list) {
      if (only != nullptr && c.name() != only) continue;
      if (c.smem_bytes <= smem_limit) {
        *choice = c;
        return true;
      }
    }
    return false;
  };
  if (only != nullptr) return pick(kSmallTile) || pick(kMidTile) || pick(kLargeTile);
  return rows <= 16 ? pick(kSmallTile) : rows <= 32 ? pick(kMidTile) : pick(kLargeTile);
}

Status launch_decode(const KernelChoice& c, const detail::DecodeProblem& p,
                     const ScheduleView& schedule, cudaStream_t stream, bool pdl) {
  if (same(c, 1, 64, 2, 8)) return launch_config<Config<1, 64, 2, 8>>(p, schedule, stream, pdl);
  if (same(c, 1, 32, 2, 4)) return launch_config<Config<1, 32, 2, 4>>(p, schedule, stream, pdl);
  if (same(c, 2, 64, 2, 8)) return launch_config<Config<2, 64, 2, 8>>(p, schedule, stream, pdl);
  if (same(c, 4, 64, 2, 8)) return launch_config<Config<4, 64, 2, 8>>(p, schedule, stream, pdl);
  if (same(c, 4, 32, 2, 8)) return launch_config<Config<4, 32, 2, 8>>(p, schedule, stream, pdl);
  return Status(StatusCode::kInternal, "sm80::launch_decode: no kernel compiled for this choice");
}

}  // namespace mla::cuda::sm80
