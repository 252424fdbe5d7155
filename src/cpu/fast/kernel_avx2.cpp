// AVX2 + FMA + F16C kernel (Haswell / Zen and later): 8 fp32 lanes, 16 ymm registers. The
// micro-kernels hold 12 accumulators (2 row vectors x 6 tokens or columns; 1 x 12 for an odd
// row vector), enough to cover FMA latency x 2 FMA ports with 3 registers to spare.
#include <immintrin.h>

#include "cpu/fast/kernel_impl.h"

namespace mla::cpu::fast {
namespace {

struct Avx2Ops {
  static constexpr int kWidth = 8;
  static constexpr int kQkTokens2 = 6, kQkTokens1 = 12;
  static constexpr int kPvCols2 = 6, kPvCols1 = 12;
  using V = __m256;

  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float a) { return _mm256_set1_ps(a); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static void store(float* p, V a) { _mm256_storeu_ps(p, a); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V mask_ge(V a, V t, V lim, V fill) {
    return _mm256_blendv_ps(a, fill, _mm256_cmp_ps(t, lim, _CMP_GE_OQ));
  }
  static V mask_eq(V a, V value, V fill) {
    return _mm256_blendv_ps(a, fill, _mm256_cmp_ps(a, value, _CMP_EQ_OQ));
  }
  // 2^x for x <= 0 (or -inf): 2^round(x) * p(f), p the degree-6 Taylor polynomial of 2^f on
  // |f| <= 1/2 (relative error < 2e-7). Exactly 0 below -125, so masked keys weigh nothing.
  static V exp2(V x) {
    const V lo = _mm256_set1_ps(-125.0f);
    const V keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    x = _mm256_max_ps(x, lo);
    const V n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm256_sub_ps(x, n);
    V poly = _mm256_set1_ps(1.5403530393381608e-4f);
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(1.3333558146428443e-3f));
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(9.6181291076284772e-3f));
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(5.5504108664821580e-2f));
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(2.4022650695910071e-1f));
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(6.9314718055994531e-1f));
    poly = _mm256_fmadd_ps(poly, f, _mm256_set1_ps(1.0f));
    const __m256i scale = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    const V r = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(poly), scale));
    return _mm256_and_ps(r, keep);
  }

  // n is a multiple of 8 (576, 512 and 64 all are).
  static void load_halves(const uint16_t* src, float* dst, int n, detail::ElemType type) {
    if (type == detail::ElemType::kBFloat16) {
      for (int i = 0; i < n; i += 8) {
        const __m256i w =
            _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
      }
    } else {
      for (int i = 0; i < n; i += 8) {
        _mm256_storeu_ps(
            dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
      }
    }
  }
  // Round to nearest even; NaN stays a quiet NaN (bf16) / becomes the canonical NaN (fp16).
  static void store_halves(const float* src, uint16_t* dst, int n, detail::ElemType type) {
    for (int i = 0; i < n; i += 8) {
      const V x = _mm256_loadu_ps(src + i);
      __m128i h;
      if (type == detail::ElemType::kBFloat16) {
        const __m256i bits = _mm256_castps_si256(x);
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
        __m256i r = _mm256_srli_epi32(
            _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
        const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
        r = _mm256_blendv_epi8(r, nan, _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
        // Pack the 32-bit lanes (each < 2^16) to 16 bits; packus works per 128-bit half.
        const __m256i packed = _mm256_packus_epi32(r, r);
        h = _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
      } else {
        h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      }
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
    }
  }
};

}  // namespace

const KernelTable& avx2_kernels() {
  static const KernelTable table{"avx2", run_piece<Avx2Ops, false>};
  return table;
}

}  // namespace mla::cpu::fast
