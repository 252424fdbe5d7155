// Tile shapes of the Hopper (sm_90a) decode kernel.
//
// One CTA of two warpgroups owns 64 packed query rows (row = s * h_q + h) and streams the KV
// tokens of its work items through a kStages-deep ring of kBlockN-token shared-memory tiles
// filled with cp.async. Per KV tile, warpgroup w:
//   S = Q K^T  [64 x kBlockN / 2]: its half of the tile's tokens, over 576 dims (wgmma, Q and K
//   read from shared memory);
//   online softmax: row maxima exchanged with the other warpgroup through shared memory, P of its
//   tokens written to a shared [64 x kBlockN] tile;
//   O += P V   [64 x 256]: wgmma over all kBlockN tokens, P and V from shared memory (V is the
//   first 512 columns of the same K tile, read transposed); w owns output columns 256w..256w+255
//   (a 64 x 256 fp32 accumulator: 128 registers a thread).
//
// Shared memory uses wgmma's 128-byte swizzle: a tile of R rows x 576 columns is 9 slabs of 64
// columns, each R rows of 128 bytes with 16-byte chunk c of row r at (c ^ (r & 7)), on 1024-byte
// boundaries. The P tile is one such slab (64 tokens = 128 bytes a row).
#pragma once

#include <cstddef>

#include "cuda/common/elem.cuh"
#include "cuda/registry.h"
#include "mla/mla.h"

namespace mla::cuda::sm90 {

template <int kBlockN_, int kStages_>
struct Config {
  static constexpr int kRows = 64;  // query rows per CTA: the M of one wgmma
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kWarpGroups = 2;
  static constexpr int kWarps = 4 * kWarpGroups;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kOCols = kHeadDimV / kWarpGroups;  // output columns per warpgroup
  static constexpr int kSlabs = kHeadDimQK / 64;          // 64-column slabs of a 576-wide row

  static constexpr size_t kQSlabBytes = size_t{kRows} * 128;
  static constexpr size_t kKvSlabBytes = size_t{kBlockN} * 128;
  static constexpr size_t kQBytes = kSlabs * kQSlabBytes;
  static constexpr size_t kStageBytes = kSlabs * kKvSlabBytes;
  static constexpr size_t kKvOffset = kQBytes;
  static constexpr size_t kPOffset = kKvOffset + kStages * kStageBytes;  // bf16 [64 x kBlockN]
  static constexpr size_t kMaxOffset = kPOffset + size_t{kRows} * kBlockN * 2;  // float [2][64]
  static constexpr size_t kSumOffset = kMaxOffset + sizeof(float) * 2 * kRows;  // float [2][64]
  // + 1024: the dynamic shared memory base is aligned up to the swizzle atom at run time.
  static constexpr size_t kSmemBytes = kSumOffset + sizeof(float) * 2 * kRows + 1024;

  static_assert(kStages >= 2, "the KV ring needs at least two stages");
  static_assert(kBlockN == 64, "S is one m64n32 wgmma per warpgroup and k-step; P one slab");
  static_assert(kOCols == 256, "P V is one m64n256 wgmma per 16 tokens");
};

// Compile-time shape of the seesaw kernel. The latent (512) and RoPE (64) widths come from
// mla.h; a KV element type other than 16-bit would change kKvSlabBytes and the load paths.
struct SeesawConfig {
  static constexpr int kRows = 64;    // query rows per CTA: the M of one wgmma
  static constexpr int kBlockN = 64;  // tokens per tile (one ring slot)
  static constexpr int kSlots = 2;
  static constexpr int kLatentSlabs = kHeadDimV / 64;   // 8 slabs of 64 columns
  static constexpr int kRopeSteps = kHeadDimRope / 16;  // 4 k-steps of S from registers
  static constexpr int kSlabs = kHeadDimQK / 64;        // 9 slabs of a KV token row
  // Boxes 0..3 (V columns 0..255) are read last by warpgroup 0, boxes 4..8 by warpgroup 1.
  static constexpr int kLoBoxes = kLatentSlabs / 2;
  static constexpr int kConsumerThreads = 256;
  // + a producer warpgroup (register reallocation, setmaxnreg, moves registers between whole
  // warpgroups). Consumers need 240 registers (O alone is 128; at 232 ptxas serialises their
  // wgmma). With TMA warp 0 issues the lo boxes and warp 1 the hi boxes (one lane per page of a
  // tile); with cp.async its four warps each copy 16 tokens of a tile.
  static constexpr int kThreads = kConsumerThreads + 128;
  static constexpr int kProducerWarp = kConsumerThreads / 32;
  static constexpr int kCopyWarps = 4;  // cp.async: 16 tokens of a tile each
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  // setmaxnreg.inc takes registers only from those the CTA's own warps gave back with
  // setmaxnreg.dec: the CTA holds the launch count (65536 / 384 rounded down to 8: 168) for every
  // thread, and a consumer asking for more than the producer freed waits forever (32 / 240 hung).
  static constexpr int kLaunchRegs = (65536 / kThreads) / 8 * 8;
  static_assert(kProducerRegs * 128 + kConsumerRegs * kConsumerThreads <= kLaunchRegs * kThreads,
                "register pool of the CTA");
  static constexpr int kOCols = kHeadDimV / 2;  // output columns per warpgroup
  static constexpr uint32_t kSlabBytes = kBlockN * 128;
  static constexpr uint32_t kTileBytes = kSlabs * kSlabBytes;
  static_assert(kRows == kBlockN, "Q and KV slabs share one descriptor stride");
  static_assert(kHeadDimRope % 16 == 0 && kHeadDimV % 128 == 0, "widths in whole k-steps");

  // Named barrier of warpgroup w (0 is __syncthreads), for zeroing dead V rows. Everything
  // between the warpgroups goes through mbarriers (Smem), so that one side signals without
  // waiting, and compute-sanitizer's racecheck follows them (it reported named-barrier hand-overs
  // of this kernel as hazards).
  static constexpr uint32_t kBarWarpGroup0 = 1;

  struct Smem {
    alignas(1024) uint8_t q[kLatentSlabs][kSlabBytes];  // Q latent columns, swizzled
    alignas(1024) uint8_t kv[kSlots][kSlabs][kSlabBytes];
    alignas(1024) uint8_t p[2][kRows * 128];  // P_A, P_B: one swizzled slab each
    float row_max[2][kRows];                  // m_A, m_B
    float row_scale[2][kRows];                // a_A, a_B
    float row_sum[2][kRows];                  // each warpgroup's row sums, for the epilogue
    uint64_t full[kSlots][kSlabs];            // one per 64-column box of a slot
    uint64_t empty[kSlots][2];  // [slot][half]: half h freed by warpgroup h (128 arrivals)
    uint64_t sa_ready;          // WG0 published m_A, a_A
    uint64_t sb_ready;          // WG1 published m_B, a_B
    uint64_t pa_ready;          // WG0 stored P_A (at the scale of m_A)
    uint64_t pb_ready;          // WG1 stored P_B
    uint64_t q_ready;           // all consumers loaded an item's Q (256 arrivals)
    uint64_t sums_ready;        // all consumers stored their row sums (256 arrivals)
    // A copy warp's tokens of the tile in the slot touched a page id outside the cache.
    int32_t slot_bad[kSlots][kCopyWarps];
  };
  // + 1024: the dynamic shared memory base is aligned up to the swizzle atom at run time.
  static constexpr size_t kSmemBytes = sizeof(Smem) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "the 227 KB of shared memory a block may use");
};

}  // namespace mla::cuda::sm90

namespace mla::cuda {

// The seesaw kernel takes the KV cache's tensor map besides the problem and the schedule, so its
// launch is this specialisation (sm90/launch.cu), not the generic one of common/launch.h.
template <>
Status launch_decode<sm90::SeesawConfig, Bf16>(const detail::DecodeProblem&, const ScheduleView&,
                                               cudaStream_t, bool);
template <>
Status launch_decode<sm90::SeesawConfig, Fp16>(const detail::DecodeProblem&, const ScheduleView&,
                                               cudaStream_t, bool);

}  // namespace mla::cuda
