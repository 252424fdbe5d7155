// fp8 KV caches in decode kernels (docs/kv_formats.md): cp.async of a tile's raw token bytes into
// shared memory, and their dequantisation into the 16-bit (bf16 / fp16) tiles the tensor-core math
// reads. Shared by the kernels that stage fp8 tokens in shared memory; the byte layouts come from
// core/fp8.h.
//
// Exactness: every e4m3 code is exactly representable in bf16 and in fp16 (4 significant bits,
// magnitudes 2^-9 .. 448), so an fp8_e4m3 tile is converted without rounding and its per-tensor
// scale is applied in fp32 outside the tile (to the logits and to the output). fp8_ds_mla values
// are code * block scale, rounded once from fp32 to the 16-bit type; its bf16 RoPE values are
// copied (bf16) or rounded to fp16.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/fp8.h"
#include "core/problem.h"
#include "cuda/common/decode_io.cuh"
#include "cuda/common/ptx.cuh"
#include "cuda/workspace.h"

namespace mla::cuda::fp8 {

// The per-tensor scale of a decode call (1 for formats without one), read from the device when
// the caller passed a tensor. Read after ptx::grid_dependency_wait(): a previous kernel may have
// written it.
__device__ __forceinline__ float kv_scale(const detail::DecodeProblem& p) {
  return p.kv_scale_ptr != nullptr ? *p.kv_scale_ptr : p.kv_scale;
}

// Whether a per-tensor scale is usable: finite and > 0 (NaN fails the first comparison).
__device__ __forceinline__ bool kv_scale_ok(float scale) {
  return scale > 0.0f && scale <= 3.402823466e38f;
}

// cp.async of KV tokens [tok, tok + kBlockN) of request b as raw kRowBytes-byte rows into
// `raw_base` (tile row t at raw_base + t * kRowBytes), with the page ids `pages` loaded for the
// same tile: decode_io::load_kv's contract for bytes. One warp per token row; tokens at or past
// `tok_end` and tokens on an out-of-range page are zero-filled without reading (zero codes and
// zero scales dequantise to 0), the latter set `bad` and record the request in the error key.
template <int kBlockN, int kWarps, int kRowBytes>
__device__ __forceinline__ void load_kv_raw(const detail::DecodeProblem& p, const ScheduleView& s,
                                            int32_t b, int64_t tok, int64_t tok_end, int warp,
                                            int lane,
                                            const decode_io::KvPages<kBlockN, kWarps>& pages,
                                            uint32_t raw_base, bool& bad) {
  constexpr int kChunks = kRowBytes / 16;
  static_assert(kChunks > 32 && kChunks <= 64, "a warp copies a row in two steps");
  const uint8_t* kv = static_cast<const uint8_t*>(p.kv);
#pragma unroll
  for (int i = 0; i < decode_io::KvPages<kBlockN, kWarps>::kTokens; ++i) {
    const int32_t page = pages.page[i];
    const int t = warp + i * kWarps;
    const int64_t j = tok + t;
    const bool live = j < tok_end;
    const bool in_cache = page >= 0 && page < p.num_pages;
    if (live && !in_cache) {
      if (!bad && lane == 0) {
        atomicMin(&s.header->error_key,
                  error_key(b, DataError::kBadPage, static_cast<int32_t>(j >> p.page_shift)));
      }
      bad = true;
    }
    const bool valid = live && in_cache;
    const uint8_t* src =
        valid ? kv + page * p.kv_stride_page + (j & (p.page_size - 1)) * p.kv_stride_row : kv;
    const uint32_t dst = raw_base + t * kRowBytes;
    ptx::cp_async_16(dst + lane * 16, src + lane * 16, valid);
    if (lane < kChunks - 32)
      ptx::cp_async_16(dst + (lane + 32) * 16, src + (lane + 32) * 16, valid);
  }
}

// Exact values of two e4m3 codes (bytes 0 and 1 of `codes`), as fp32. Goes through the fp16 bit
// pattern of value / 256 (core/fp8.h's fp8_e4m3_to_fp16_bits_div256, two lanes at once): the NaN
// codes 0x7F / 0xFF become NaN.
__device__ __forceinline__ float2 e4m3x2_to_float2(uint32_t codes) {
  const uint32_t t = __byte_perm(codes, 0, 0x4140);  // code 0 in bits 0..7, code 1 in 16..23
  const uint32_t h = ((t & 0x00800080u) << 8) | ((t & 0x007f007fu) << 7);
  const uint32_t nan = __vcmpeq2(t & 0x007f007fu, 0x007f007fu);  // 0xffff per NaN lane
  const uint32_t bits = (h & ~nan) | (((h & 0x80008000u) | 0x7e007e00u) & nan);
  const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&bits));
  return make_float2(f.x * 256.0f, f.y * 256.0f);  // exact: a power-of-two scaling
}

// Dequantises raw tile `raw` (kBlockN rows of kRowBytes bytes, kind kKv) into the 16-bit tile
// whose 16-byte chunk `chunk` of row `row` is at `tile + chunk_offset(row, chunk)`. All kThreads
// threads take part; each writes whole 16-byte chunks (8 values), consecutive threads consecutive
// chunks of a row. The caller orders the raw tile's arrival before and the math after (barriers).
template <detail::KvType kKv, int kBlockN, int kThreads, typename Traits, typename ChunkOffset>
__device__ __forceinline__ void dequantize_tile(const uint8_t* raw, uint8_t* tile,
                                                ChunkOffset chunk_offset) {
  constexpr int kRowChunks = kHeadDimQK / 8;  // 16-byte chunks of a 16-bit row
  constexpr int kRowBytes =
      kKv == detail::KvType::kFp8DsMla ? detail::kDsMlaTokenBytes : kHeadDimQK;
  static_assert(kKv != detail::KvType::kHalf, "16-bit caches need no dequantisation");
#pragma unroll 2
  for (int i = threadIdx.x; i < kBlockN * kRowChunks; i += kThreads) {
    const int row = i / kRowChunks, chunk = i - row * kRowChunks;
    const uint8_t* src = raw + row * kRowBytes;
    uint4 v;
    if (kKv == detail::KvType::kFp8DsMla && chunk >= kHeadDimV / 8) {
      // RoPE: 8 bf16 values, stored after the codes and scales.
      const uint4 r = *reinterpret_cast<const uint4*>(src + detail::kDsMlaRopeOffset +
                                                      (chunk - kHeadDimV / 8) * 16);
      auto cvt = [](uint32_t w) {
        return Traits::pack(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
      };
      v = make_uint4(cvt(r.x), cvt(r.y), cvt(r.z), cvt(r.w));
    } else {
      const uint2 codes = *reinterpret_cast<const uint2*>(src + chunk * 8);
      float scale = 1.0f;  // fp8_e4m3: applied outside the tile
      if (kKv == detail::KvType::kFp8DsMla) {
        scale = *reinterpret_cast<const float*>(src + detail::kDsMlaScaleOffset +
                                                4 * (chunk * 8 / detail::kDsMlaBlock));
      }
      auto cvt = [scale](uint32_t two) {
        const float2 f = e4m3x2_to_float2(two);
        return Traits::pack(f.x * scale, f.y * scale);
      };
      v = make_uint4(cvt(codes.x), cvt(codes.x >> 16), cvt(codes.y), cvt(codes.y >> 16));
    }
    *reinterpret_cast<uint4*>(tile + chunk_offset(row, chunk)) = v;
  }
}

}  // namespace mla::cuda::fp8
