// Tile shapes of the portable (sm_80+) sparse decode kernel (sparse/kernel.cuh).
//
// One CTA owns kRows heads of one query token (b, s): rows h0 .. h0 + kRows - 1 of the packed
// rows s * h_q + h, which all attend to the same selected tokens, so the CTA gathers each of
// them once for all its heads. It walks a contiguous range of that token's top-k entries in
// kBlockN-entry tiles through a kStages-deep cp.async ring: while tile t is multiplied, tiles
// t + 1 .. t + kStages - 1 are in flight. The math per tile is the portable dense kernel's
// (sm80/config.h): S = Q K^T by (row band, token group) warps, online softmax with the row maxima
// exchanged in shared memory, O += P V with each warp owning 512 / kWarps output columns, V read
// from the same gathered rows as K.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mla/mla.h"

namespace mla::cuda::sparse {

template <int kMTiles_, int kBlockN_, int kStages_, int kWarps_>
struct Config {
  static constexpr int kMTiles = kMTiles_;    // 16-row MMA tiles per CTA
  static constexpr int kRows = 16 * kMTiles;  // heads per CTA
  static constexpr int kBlockN = kBlockN_;    // top-k entries per pipeline stage
  static constexpr int kStages = kStages_;    // shared-memory stages of the gather ring (>= 2)
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;

  // S phase: kMTiles row bands x kSGroups token groups.
  static constexpr int kSGroups = kWarps / kMTiles;
  static constexpr int kSTokens = kBlockN / kSGroups;
  static constexpr int kSNTiles = kSTokens / 8;
  // O phase: each warp owns kOCols output columns.
  static constexpr int kOCols = kHeadDimV / kWarps;
  static constexpr int kONTiles = kOCols / 8;

  static constexpr int kRowBytes = kHeadDimQK * 2;   // one 576-wide bf16/fp16 row
  static constexpr int kPChunks = kBlockN * 2 / 16;  // 16-byte chunks per row of P
  // Tokens each warp gathers per tile (token warp + i * kWarps).
  static constexpr int kGatherTokens = kBlockN / kWarps;

  // Shared memory of one CTA, 16-byte-chunk XOR-swizzled rows as in the dense kernel. Every
  // array starts on a 16-byte boundary because every size before it is a multiple of 16.
  struct Smem {
    alignas(16) uint8_t q[kRows * kRowBytes];              // the CTA's query rows
    alignas(16) uint8_t kv[kStages][kBlockN * kRowBytes];  // the gather ring
    alignas(16) uint8_t p[kRows * kBlockN * 2];            // P of the current tile
    float red_max[kSGroups][kRows];                        // per token group row maxima of a tile
    float alpha[kRows];                                    // per row rescale factor of a tile
    float red_sum[kSGroups][kRows];                        // per token group row sums (epilogue)
    float row_max[kRows];                                  // final row maxima (epilogue)
    // Whether entry i of the tile in stage j is a selected token (not -1, not past the range,
    // not a bad slot); written by the warp that gathers it, read by the S phase to mask logits.
    uint8_t live[kStages][kBlockN];
  };
  static constexpr size_t kSmemBytes = sizeof(Smem);

  static_assert(kStages >= 2, "the gather ring needs at least two stages");
  static_assert(kWarps % kMTiles == 0 && kSTokens % 8 == 0, "S warps tile rows x tokens");
  static_assert(kSNTiles == 1 || kSNTiles % 2 == 0, "S tiles are loaded one or two at a time");
  static_assert(kONTiles % 2 == 0, "V tiles are loaded two at a time");
  static_assert(kBlockN % 16 == 0 && kBlockN % kWarps == 0, "whole MMA k-steps, even gathers");
  static_assert(kPChunks == 4 || kPChunks == 8, "P swizzle covers 64- and 128-byte rows");
};

}  // namespace mla::cuda::sparse
