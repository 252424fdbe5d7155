// Tile shapes of the portable (sm_80+) decode kernel.
//
// One CTA owns a tile of kRows packed query rows (row = s * h_q + h, so every head and MTP token
// of a request shares each KV tile) and streams the KV tokens its schedule assigns through a
// kStages-deep ring of kBlockN-token shared-memory tiles filled with cp.async. Per KV tile:
//   S = Q K^T  [kRows x kBlockN] over 576 dims: warp (band, group) computes 16 rows x kSTokens;
//   online softmax (row max exchanged through shared memory), P written to shared memory;
//   O += P V   [kRows x 512]: warp w owns 512 / kWarps output columns of every row, and V is the
//   first 512 columns of the same shared K tile, so the cache is read once.
//
// fp8 caches (kKv != kHalf): the ring holds the tokens' raw bytes (576 or 656 a token) as cp.async
// lands them, and each tile is dequantised into one bf16/fp16 tile of the layout above before the
// same tensor-core math, so the fp8 ring costs half (e4m3) of a 16-bit ring's shared memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/problem.h"
#include "mla/mla.h"

namespace mla::cuda::sm80 {

// The raw fp8 stages of a configuration, a base of its Smem: empty for 16-bit caches (where the
// empty-base optimisation makes it take no space).
template <size_t kBytes>
struct RawRing {
  alignas(16) uint8_t raw[kBytes];
};
template <>
struct RawRing<0> {};

template <int kMTiles_, int kBlockN_, int kStages_, int kWarps_,
          detail::KvType kKv_ = detail::KvType::kHalf>
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

  // KV storage: 16-bit tiles in the ring itself, or an fp8 ring of kRawRowBytes-byte tokens
  // (unswizzled) feeding one 16-bit tile.
  static constexpr detail::KvType kKv = kKv_;
  static constexpr bool kFp8 = kKv != detail::KvType::kHalf;
  static constexpr int kRawRowBytes = kKv == detail::KvType::kFp8DsMla ? kFp8DsMlaTokenBytes
                                      : kFp8                           ? kHeadDimQK
                                                                       : 0;
  static constexpr int kKvTiles = kFp8 ? 1 : kStages;  // 16-bit tiles the math reads
  static constexpr size_t kRawBytes = kFp8 ? size_t{kStages} * kBlockN * kRawRowBytes : 0;

  // Shared memory of one CTA. Tiles hold rows of 16-byte chunks (swizzled, kernel.cuh); every
  // array starts on a 16-byte boundary because every size before it is a multiple of 16. The
  // fp8 ring (RawRing::raw, kStages x kBlockN x kRawRowBytes) comes first when there is one.
  struct Smem : RawRing<kRawBytes> {
    alignas(16) uint8_t q[kRows * kRowBytes];               // the CTA's query rows
    alignas(16) uint8_t kv[kKvTiles][kBlockN * kRowBytes];  // the KV ring (fp8: the math tile)
    alignas(16) uint8_t p[kRows * kBlockN * 2];             // P of the current tile
    float red_max[kSGroups][kRows];  // per token group row maxima of the tile
    float alpha[kRows];              // per row rescale factor of the tile
    float red_sum[kSGroups][kRows];  // per token group row sums (epilogue)
    float row_max[kRows];            // final row maxima (epilogue)
  };
  static constexpr size_t kSmemBytes = sizeof(Smem);

  static_assert(kStages >= 2, "the KV ring needs at least two stages");
  static_assert(kWarps % kMTiles == 0 && kSTokens % 8 == 0, "S warps tile rows x tokens");
  static_assert(kSNTiles == 1 || kSNTiles % 2 == 0, "S tiles are loaded one or two at a time");
  static_assert(kONTiles % 2 == 0, "V tiles are loaded two at a time");
  static_assert(kBlockN % 16 == 0 && 64 % kBlockN == 0, "stages must tile the 64-token blocks");
  static_assert(kPChunks == 4 || kPChunks == 8, "P swizzle covers 64- and 128-byte rows");
  static_assert(kRawRowBytes % 16 == 0, "fp8 tokens are copied in 16-byte chunks");
};

}  // namespace mla::cuda::sm80
