// Tile shapes of the portable (sm_80+) decode kernel.
//
// One CTA owns a tile of kRows packed query rows (row = s * h_q + h, so every head and MTP token
// of a request shares each KV tile) and streams the KV tokens its schedule assigns through a
// kStages-deep ring of kBlockN-token shared-memory tiles filled with cp.async. Per KV tile:
//   S = Q K^T  [kRows x kBlockN] over 576 dims: warp (band, group) computes 16 rows x kSTokens;
//   online softmax (row max exchanged through shared memory), P written to shared memory;
//   O += P V   [kRows x 512]: warp w owns 512 / kWarps output columns of every row, and V is the
//   first 512 columns of the same shared K tile, so the cache is read once.
#pragma once

#include <cstddef>
#include <cstdint>

#include "mla/mla.h"

namespace mla::cuda::sm80 {

template <int kMTiles_, int kBlockN_, int kStages_, int kWarps_>
struct Config {
  static constexpr int kMTiles = kMTiles_;    // 16-row MMA tiles per CTA
  static constexpr int kRows = 16 * kMTiles;  // query rows per CTA
  static constexpr int kBlockN = kBlockN_;    // tokens per pipeline stage
  static constexpr int kStages = kStages_;    // shared-memory KV stages (>= 2)
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

  // Shared memory of one CTA. Tiles hold rows of 16-byte chunks (swizzled, kernel.cuh); every
  // array starts on a 16-byte boundary because every size before it is a multiple of 16.
  struct Smem {
    alignas(16) uint8_t q[kRows * kRowBytes];              // the CTA's query rows
    alignas(16) uint8_t kv[kStages][kBlockN * kRowBytes];  // the KV ring
    alignas(16) uint8_t p[kRows * kBlockN * 2];            // P of the current tile
    float red_max[kSGroups][kRows];                        // per token group row maxima of the tile
    float alpha[kRows];                                    // per row rescale factor of the tile
    float red_sum[kSGroups][kRows];                        // per token group row sums (epilogue)
    float row_max[kRows];                                  // final row maxima (epilogue)
  };
  static constexpr size_t kSmemBytes = sizeof(Smem);

  static_assert(kStages >= 2, "the KV ring needs at least two stages");
  static_assert(kWarps % kMTiles == 0 && kSTokens % 8 == 0, "S warps tile rows x tokens");
  static_assert(kSNTiles == 1 || kSNTiles % 2 == 0, "S tiles are loaded one or two at a time");
  static_assert(kONTiles % 2 == 0, "V tiles are loaded two at a time");
  static_assert(kBlockN % 16 == 0 && 64 % kBlockN == 0, "stages must tile the 64-token blocks");
  static_assert(kPChunks == 4 || kPChunks == 8, "P swizzle covers 64- and 128-byte rows");
};

}  // namespace mla::cuda::sm80
