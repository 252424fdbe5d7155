// Online-softmax helpers, base 2. Logits are kept as log2-domain values (the softmax scale times
// log2(e) is folded into one multiply), so every exponential is one ex2.approx. A row that has
// seen no visible key has max = -inf; the guards below keep -inf - -inf from producing NaN.
#pragma once

#include <math_constants.h>

namespace mla::cuda::softmax {

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

// 2^x with one MUFU.EX2 (ex2.approx.ftz: relative error 2^-22, exp2(-inf) = +0).
// https://docs.nvidia.com/cuda/parallel-thread-execution/#floating-point-instructions-ex2
__device__ __forceinline__ float exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// The reference point for exponentials of a row whose running max is `m`: 0 for an empty row, so
// exp2(-inf - 0) = 0 for its (all masked) logits and exp2(-inf - 0) = 0 for its rescale factor.
__device__ __forceinline__ float exp_base(float m) { return m == -CUDART_INF_F ? 0.0f : m; }

// Max over the 4 lanes of a quad (the lanes that share a row of an MMA fragment).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Natural-log LSE of a row from its log2-domain max `m` and sum `l` of exp2(logit - m);
// -inf for an empty row (l == 0).
__device__ __forceinline__ float natural_lse(float m, float l) {
  return l > 0.0f ? (m + log2f(l)) * kLn2 : -CUDART_INF_F;
}

}  // namespace mla::cuda::softmax
