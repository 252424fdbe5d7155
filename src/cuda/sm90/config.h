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

}  // namespace mla::cuda::sm90
