// Vector operations of the AVX-512 kernels (kernel_avx512.cpp, kernel_avx512_bf16.cpp): 16
// fp32 lanes, 32 zmm registers. The micro-kernels hold 24 accumulators (2 row vectors x 12
// tokens or columns; 1 x 24 for an odd row vector). Include only from translation units
// compiled with AVX-512 F/BW/DQ/VL; internal linkage, like kernel_impl.h.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "core/problem.h"

namespace mla::cpu::fast {
namespace {

struct Avx512Ops {
  static constexpr int kWidth = 16;
  static constexpr int kQkTokens2 = 12, kQkTokens1 = 24;
  static constexpr int kPvCols2 = 12, kPvCols1 = 24;
  using V = __m512;

  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float a) { return _mm512_set1_ps(a); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static void store(float* p, V a) { _mm512_storeu_ps(p, a); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V mask_ge(V a, V t, V lim, V fill) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, lim, _CMP_GE_OQ), a, fill);
  }
  static V mask_eq(V a, V value, V fill) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, value, _CMP_EQ_OQ), a, fill);
  }
  // 2^x for x <= 0 (or -inf), as in the AVX2 kernel: 2^round(x) * Taylor-6 polynomial of 2^f,
  // exactly 0 below -125.
  static V exp2(V x) {
    const V lo = _mm512_set1_ps(-125.0f);
    const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    x = _mm512_max_ps(x, lo);
    const V n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm512_sub_ps(x, n);
    V poly = _mm512_set1_ps(1.5403530393381608e-4f);
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(1.3333558146428443e-3f));
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(9.6181291076284772e-3f));
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(5.5504108664821580e-2f));
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(2.4022650695910071e-1f));
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(6.9314718055994531e-1f));
    poly = _mm512_fmadd_ps(poly, f, _mm512_set1_ps(1.0f));
    const __m512i scale = _mm512_slli_epi32(_mm512_cvtps_epi32(n), 23);
    const V r = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(poly), scale));
    return _mm512_maskz_mov_ps(keep, r);
  }

  // n is a multiple of 16 (576, 512 and 64 all are).
  static void load_halves(const uint16_t* src, float* dst, int n, detail::ElemType type) {
    if (type == detail::ElemType::kBFloat16) {
      for (int i = 0; i < n; i += 16) {
        const __m512i w =
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
        _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
      }
    } else {
      for (int i = 0; i < n; i += 16) {
        _mm512_storeu_ps(
            dst + i,
            _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
      }
    }
  }
  // Round to nearest even; NaN stays a quiet NaN (bf16) / becomes the canonical NaN (fp16).
  static void store_halves(const float* src, uint16_t* dst, int n, detail::ElemType type) {
    for (int i = 0; i < n; i += 16) {
      const V x = _mm512_loadu_ps(src + i);
      __m256i h;
      if (type == detail::ElemType::kBFloat16) {
        const __m512i bits = _mm512_castps_si512(x);
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
        __m512i r = _mm512_srli_epi32(
            _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
        const __m512i nan = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
        r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), r, nan);
        h = _mm512_cvtepi32_epi16(r);
      } else {
        h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      }
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), h);
    }
  }
};

}  // namespace
}  // namespace mla::cpu::fast
