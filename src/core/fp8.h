// Scalar float8 e4m3 (OCP "E4M3FN", as CUDA's __nv_fp8_e4m3 and torch.float8_e4m3fn) <-> fp32
// conversions, for host code and, through MLA_FP8_HD, CUDA device code.
//
// e4m3: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; no infinities; the only NaN
// codes are 0x7F and 0xFF (exponent and mantissa all ones); the largest finite value is 448
// (0x7E). Encoding rounds to nearest, ties to even, and saturates: every finite input (and
// +-inf) becomes a finite code in [-448, 448]; only a NaN input gives a NaN code.
//
// The two KV cache formats built on it (docs/kv_formats.md) are described here too, so the CPU
// and CUDA backends share one definition of their layout.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MLA_FP8_HD __host__ __device__
#else
#define MLA_FP8_HD
#endif

namespace mla::detail {

inline constexpr float kFp8E4M3Max = 448.0f;
inline constexpr uint8_t kFp8E4M3MaxCode = 0x7e;
inline constexpr uint8_t kFp8E4M3NaN = 0x7f;

// fp8_ds_mla token layout (656 bytes): 512 e4m3 latent values, 4 fp32 scales (one per 128
// latent values, dequantised value = code * scale), 64 bf16 RoPE values.
inline constexpr int kDsMlaBlock = 128;                        // latent values per scale
inline constexpr int kDsMlaScaleOffset = 512;                  // bytes
inline constexpr int kDsMlaRopeOffset = 512 + 4 * 4;           // bytes
inline constexpr int kDsMlaTokenBytes = 512 + 4 * 4 + 64 * 2;  // 656

// Exact value of an e4m3 code (NaN for 0x7F / 0xFF).
MLA_FP8_HD inline float fp8_e4m3_to_float(uint8_t v) {
  const int exp = (v >> 3) & 0xf;
  const int mant = v & 0x7;
  float mag;
  if (exp == 0xf && mant == 0x7) {
    mag = NAN;
  } else if (exp == 0) {
    mag = std::ldexp(static_cast<float>(mant), -9);  // subnormal: mant * 2^-9
  } else {
    mag = std::ldexp(static_cast<float>(8 + mant), exp - 10);  // (1 + mant/8) * 2^(exp-7)
  }
  return (v & 0x80) ? -mag : mag;
}

// Nearest e4m3 code to `f`, ties to even; |f| >= 448 (inf included) saturates to +-448, NaN
// becomes 0x7F with f's sign.
MLA_FP8_HD inline uint8_t float_to_fp8_e4m3(float f) {
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  if (std::isnan(f)) return static_cast<uint8_t>(sign | kFp8E4M3NaN);
  const float a = std::fabs(f);
  // 448 is the largest code; values in (448, 464] would round to it anyway (464 is the tie with
  // the missing 480, and 0x7E's mantissa is even), larger ones saturate.
  if (a >= kFp8E4M3Max) return static_cast<uint8_t>(sign | kFp8E4M3MaxCode);
  if (a < 0.015625f) {
    // Subnormal range (below 2^-6): multiples of 2^-9. Code 8 (= 2^-6, the smallest normal)
    // follows on naturally when a rounds up.
    const int q = static_cast<int>(std::nearbyint(a * 512.0f));  // exact scaling, ties to even
    return static_cast<uint8_t>(sign | q);
  }
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): unbiased exponent e - 1 in [-6, 8]
  int q = static_cast<int>(std::nearbyint(std::ldexp(a, 4 - e)));  // in [8, 16]
  if (q == 16) {
    q = 8;
    ++e;
  }
  return static_cast<uint8_t>(sign | ((e - 1 + 7) << 3) | (q - 8));
}

// Scale of one fp8_ds_mla block with absolute maximum `amax` (over its finite values): amax / 448,
// amax clamped below at 1e-4 so that an all-zero block gets a finite positive scale; with `pow2`
// rounded up to a power of two (then every value still fits: |x| / scale <= 448). One definition
// for the CPU and CUDA quantisers, so they store the same bytes.
MLA_FP8_HD inline float ds_mla_scale(float amax, bool pow2) {
  const float scale = (amax < 1e-4f ? 1e-4f : amax) / kFp8E4M3Max;
  if (!pow2) return scale;
  int e = 0;
  const float m = std::frexp(scale, &e);  // scale = m * 2^e, m in [0.5, 1)
  return m == 0.5f ? scale : std::ldexp(1.0f, e);
}

// The fp16 bit pattern of e4m3 code `v` divided by 2^8: both formats have 1 + e + m bits with
// the exponent bias 7 (e4m3) and 15 (fp16), so shifting exponent and mantissa into place and
// multiplying the fp16 value by 256 gives the e4m3 value exactly, subnormals included. The NaN
// codes map to an fp16 NaN. Lets vector units convert fp8 through their fp16 instructions.
MLA_FP8_HD inline uint16_t fp8_e4m3_to_fp16_bits_div256(uint8_t v) {
  const uint16_t sign = static_cast<uint16_t>((v & 0x80) << 8);
  const uint16_t mag =
      (v & 0x7f) == 0x7f ? uint16_t{0x7e00} : static_cast<uint16_t>((v & 0x7f) << 7);
  return static_cast<uint16_t>(sign | mag);
}

}  // namespace mla::detail
