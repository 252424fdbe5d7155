// Scalar element access for the CPU backends: load any supported element type as float and
// store float with round-to-nearest-even; dequantise one cached token of any KV format.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/fp8.h"
#include "core/half.h"
#include "core/problem.h"
#include "mla/mla.h"

namespace mla::cpu {

inline float load_elem(const void* base, int64_t index, detail::ElemType type) {
  const uint16_t bits = static_cast<const uint16_t*>(base)[index];
  return type == detail::ElemType::kBFloat16 ? detail::bf16_to_float(bits)
                                             : detail::fp16_to_float(bits);
}

inline void store_elem(void* base, int64_t index, detail::ElemType type, float value) {
  static_cast<uint16_t*>(base)[index] = type == detail::ElemType::kBFloat16
                                            ? detail::float_to_bf16(value)
                                            : detail::float_to_fp16(value);
}

// The 256 e4m3 code values as fp32 (exact), built once.
inline const float* fp8_e4m3_table() {
  static const struct Table {
    float v[256];
    Table() {
      for (int i = 0; i < 256; ++i) v[i] = detail::fp8_e4m3_to_float(static_cast<uint8_t>(i));
    }
  } table;
  return table.v;
}

// The 576 values of the token at element offset `offset` of `kv` (elements of the cache's type:
// bytes for fp8 formats), dequantised: code * scale in T (exact for T = double, one rounding
// for float). fp8_ds_mla scales are read with memcpy, so rows need no alignment.
template <typename T>
inline void dequantize_token(const void* kv, int64_t offset, detail::KvType type,
                             detail::ElemType dtype, float kv_scale, T* dst) {
  if (type == detail::KvType::kHalf) {
    for (int d = 0; d < kHeadDimQK; ++d) dst[d] = load_elem(kv, offset + d, dtype);
    return;
  }
  const float* lut = fp8_e4m3_table();
  const uint8_t* row = static_cast<const uint8_t*>(kv) + offset;
  if (type == detail::KvType::kFp8E4M3) {
    const T scale = kv_scale;
    for (int d = 0; d < kHeadDimQK; ++d) dst[d] = static_cast<T>(lut[row[d]]) * scale;
    return;
  }
  float scales[kHeadDimV / detail::kDsMlaBlock];
  std::memcpy(scales, row + detail::kDsMlaScaleOffset, sizeof scales);
  for (int d = 0; d < kHeadDimV; ++d) {
    dst[d] = static_cast<T>(lut[row[d]]) * static_cast<T>(scales[d / detail::kDsMlaBlock]);
  }
  uint16_t rope[kHeadDimRope];
  std::memcpy(rope, row + detail::kDsMlaRopeOffset, sizeof rope);
  for (int d = 0; d < kHeadDimRope; ++d) dst[kHeadDimV + d] = detail::bf16_to_float(rope[d]);
}

}  // namespace mla::cpu
