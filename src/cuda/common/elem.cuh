// bf16 / fp16 traits for the kernels: the storage type, packing two fp32 values with
// round-to-nearest-even, and which MMA flavour to issue.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "core/problem.h"

namespace mla::cuda {

template <detail::ElemType kType>
struct ElemTraits;

template <>
struct ElemTraits<detail::ElemType::kBFloat16> {
  using T = __nv_bfloat16;
  static constexpr detail::ElemType kElem = detail::ElemType::kBFloat16;
  static constexpr bool kIsBf16 = true;
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
};

template <>
struct ElemTraits<detail::ElemType::kFloat16> {
  using T = __half;
  static constexpr detail::ElemType kElem = detail::ElemType::kFloat16;
  static constexpr bool kIsBf16 = false;
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
};

using Bf16 = ElemTraits<detail::ElemType::kBFloat16>;
using Fp16 = ElemTraits<detail::ElemType::kFloat16>;

// Calls `fn(ElemTraits<T>{})` for the problem's element type.
template <typename Fn>
decltype(auto) dispatch_elem(detail::ElemType type, Fn&& fn) {
  if (type == detail::ElemType::kBFloat16) return fn(Bf16{});
  return fn(Fp16{});
}

}  // namespace mla::cuda
