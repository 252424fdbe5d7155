// Scalar element access for the CPU backends: load any supported element type as float and
// store float with round-to-nearest-even.
#pragma once

#include <cstdint>

#include "core/half.h"
#include "core/problem.h"

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

}  // namespace mla::cpu
