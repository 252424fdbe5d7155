// The CPU attention kernel, written once over a vector-ops type and instantiated per ISA by
// kernel_<isa>.cpp (each compiled with its own ISA flags). Everything here has internal
// linkage, so the copies built for different ISAs can never be merged by the linker.
//
// Schedule of one piece (request b, row tile of R <= 64 rows, keys [k0, k1)):
//   1. q rows -> fp32 q^T [576][R], pre-multiplied by softmax_scale * log2(e) (softmax in
//      base 2); rows sit in vector lanes.
//   2. For each KV tile of up to 96 tokens: gather the tokens through the block table and
//      convert them to fp32 once, kv [96][576] (the first 512 columns are V, so K and V come
//      from one conversion). Then
//        S^T[t][r] = kv[t] . q^T[:, r]      register-blocked: broadcast kv[t][d] x q^T row
//        online softmax per row (lanes), masked keys -> -inf, P overwrites S
//        out^T[c][r] = out^T[c][r] * alpha[r] + sum_t kv[t][c] * P[t][r]
//      Keeping rows in lanes means neither K nor V is ever transposed: both micro-kernels
//      broadcast a scalar of the kv tile against a row vector of q^T or P.
//   3. Normalise and write out/lse (or the split partial).
// With kBf16Dot (the opt-in AVX512-BF16 variant, see isa.h) and bf16 data, step 1 keeps q as
// raw bf16 pairs and the scores come from vdpbf16ps on the raw bf16 tile (two exact products
// per lane per instruction, fp32 accumulation, half the instructions); only V is converted.
// fp8 caches (never with kBf16Dot) are dequantised token by token into the fp32 tile through the
// ISA's fp16 conversion (load_fp8_token), code * scale rounded once to fp32.
// Keys at or beyond seq_len are never loaded (the tile is cut at k1 <= seq_len); padding
// tokens of the last tile are zero-filled, then masked, so their P is exactly 0 and their V is
// 0 (never 0 * NaN).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/fp8.h"
#include "cpu/fast/kernel.h"

#define MLA_ALWAYS_INLINE inline __attribute__((always_inline))

namespace mla::cpu::fast {
namespace {

using detail::DecodeProblem;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// Tokens of the last (partial) KV tile are padded to this, a multiple of every token block.
constexpr int kTokenAlign = 24;

// S^T[i][rv*W..] for NB tokens x RV row vectors over the full 576-wide dot product. The
// NB * RV accumulators stay in registers; each step loads RV q vectors and broadcasts NB kv
// values. With kPrefetch, every 32 steps also prefetches one cache line of each of the NB
// tokens `pf` points at (the next KV tile), spreading the next tile's DRAM traffic over this
// tile's FMAs instead of stalling the conversion on it.
template <class Ops, int RV, int NB, bool kPrefetch>
MLA_ALWAYS_INLINE void qk_block(const float* qt, int64_t ld, const float* kv, float* s,
                                const uint16_t* const* pf) {
  using V = typename Ops::V;
  constexpr int W = Ops::kWidth;
  constexpr int kLineHalves = 32;  // 64-byte line of 16-bit elements
  V acc[NB][RV];
#pragma GCC unroll 32
  for (int i = 0; i < NB; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[i][v] = Ops::zero();
  }
  for (int d0 = 0; d0 < kHeadDimQK; d0 += kLineHalves) {
    if constexpr (kPrefetch) {
#pragma GCC unroll 32
      for (int i = 0; i < NB; ++i) __builtin_prefetch(pf[i] + d0, 0, 3);
    }
    for (int d = d0; d < d0 + kLineHalves; ++d) {
      V q[RV];
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) q[v] = Ops::load(qt + d * ld + v * W);
#pragma GCC unroll 32
      for (int i = 0; i < NB; ++i) {
        const V k = Ops::bcast(kv + i * kHeadDimQK + d);
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) acc[i][v] = Ops::fma(q[v], k, acc[i][v]);
      }
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < NB; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) Ops::store(s + i * ld + v * W, acc[i][v]);
  }
}

// qk_block for the AVX512-BF16 path: q2 holds q^T as bf16 pairs [288][ld] (lane r of pair p =
// q[r][2p], q[r][2p + 1]); raw is the bf16 tile [NB][576]. Each vdpbf16ps adds two exact
// products per lane; `scale` (softmax_scale * log2 e) is applied once at the end.
template <class Ops, int RV, int NB, bool kPrefetch>
MLA_ALWAYS_INLINE void qk_block_bf16(const uint32_t* q2, int64_t ld, const uint16_t* raw, float* s,
                                     const uint16_t* const* pf, float scale) {
  using V = typename Ops::V;
  using VI = typename Ops::VI;
  constexpr int W = Ops::kWidth;
  constexpr int kLineHalves = 32;
  V acc[NB][RV];
#pragma GCC unroll 32
  for (int i = 0; i < NB; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[i][v] = Ops::zero();
  }
  for (int d0 = 0; d0 < kHeadDimQK; d0 += kLineHalves) {
    if constexpr (kPrefetch) {
#pragma GCC unroll 32
      for (int i = 0; i < NB; ++i) __builtin_prefetch(pf[i] + d0, 0, 3);
    }
    for (int d = d0; d < d0 + kLineHalves; d += 2) {
      VI q[RV];
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) q[v] = Ops::load_pairs(q2 + (d / 2) * ld + v * W);
#pragma GCC unroll 32
      for (int i = 0; i < NB; ++i) {
        const VI k = Ops::bcast_pair(raw + i * kHeadDimQK + d);
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) acc[i][v] = Ops::dot_bf16(acc[i][v], q[v], k);
      }
    }
  }
  const V vscale = Ops::set1(scale);
#pragma GCC unroll 32
  for (int i = 0; i < NB; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) Ops::store(s + i * ld + v * W, Ops::mul(acc[i][v], vscale));
  }
}

// out^T[c..c+NC][rv*W..] = out^T * alpha + sum_t kv[t][c..c+NC] * P[t][rv*W..] over ntok tokens.
template <class Ops, int RV, int NC>
MLA_ALWAYS_INLINE void pv_block(const float* p, int64_t ld, const float* kv, int ntok, float* ot,
                                const float* alpha) {
  using V = typename Ops::V;
  constexpr int W = Ops::kWidth;
  V acc[NC][RV];
#pragma GCC unroll 32
  for (int j = 0; j < NC; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[j][v] = Ops::zero();
  }
  for (int t = 0; t < ntok; ++t) {
    V pr[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) pr[v] = Ops::load(p + t * ld + v * W);
#pragma GCC unroll 32
    for (int j = 0; j < NC; ++j) {
      const V x = Ops::bcast(kv + t * kHeadDimQK + j);
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) acc[j][v] = Ops::fma(pr[v], x, acc[j][v]);
    }
  }
#pragma GCC unroll 32
  for (int j = 0; j < NC; ++j) {
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      float* o = ot + j * ld + v * W;
      Ops::store(o, Ops::fma(Ops::load(o), Ops::load(alpha + v * W), acc[j][v]));
    }
  }
}

// Scores of one KV tile for all row vectors: pairs of vectors first, then an odd one. The
// first row block prefetches the next tile's tokens (`next`, one pointer per token).
template <class Ops>
void tile_scores(const float* qt, int64_t ld, const float* kv, int ntok, float* s,
                 const uint16_t* const* next) {
  constexpr int W = Ops::kWidth;
  int64_t r = 0;
  if (2 * W <= ld) {
    for (int t = 0; t < ntok; t += Ops::kQkTokens2) {
      qk_block<Ops, 2, Ops::kQkTokens2, true>(qt, ld, kv + t * kHeadDimQK, s + t * ld, next + t);
    }
    r = 2 * W;
  }
  for (; r + 2 * W <= ld; r += 2 * W) {
    for (int t = 0; t < ntok; t += Ops::kQkTokens2) {
      qk_block<Ops, 2, Ops::kQkTokens2, false>(qt + r, ld, kv + t * kHeadDimQK, s + t * ld + r,
                                               nullptr);
    }
  }
  if (r < ld) {
    for (int t = 0; t < ntok; t += Ops::kQkTokens1) {
      if (r == 0) {
        qk_block<Ops, 1, Ops::kQkTokens1, true>(qt, ld, kv + t * kHeadDimQK, s + t * ld, next + t);
      } else {
        qk_block<Ops, 1, Ops::kQkTokens1, false>(qt + r, ld, kv + t * kHeadDimQK, s + t * ld + r,
                                                 nullptr);
      }
    }
  }
}

// tile_scores for the AVX512-BF16 path (same blocking, bf16 pair dot products).
template <class Ops>
void tile_scores_bf16(const uint32_t* q2, int64_t ld, const uint16_t* raw, int ntok, float* s,
                      const uint16_t* const* next, float scale) {
  constexpr int W = Ops::kWidth;
  int64_t r = 0;
  if (2 * W <= ld) {
    for (int t = 0; t < ntok; t += Ops::kQkTokens2) {
      qk_block_bf16<Ops, 2, Ops::kQkTokens2, true>(q2, ld, raw + t * kHeadDimQK, s + t * ld,
                                                   next + t, scale);
    }
    r = 2 * W;
  }
  for (; r + 2 * W <= ld; r += 2 * W) {
    for (int t = 0; t < ntok; t += Ops::kQkTokens2) {
      qk_block_bf16<Ops, 2, Ops::kQkTokens2, false>(q2 + r, ld, raw + t * kHeadDimQK,
                                                    s + t * ld + r, nullptr, scale);
    }
  }
  if (r < ld) {
    for (int t = 0; t < ntok; t += Ops::kQkTokens1) {
      if (r == 0) {
        qk_block_bf16<Ops, 1, Ops::kQkTokens1, true>(q2, ld, raw + t * kHeadDimQK, s + t * ld,
                                                     next + t, scale);
      } else {
        qk_block_bf16<Ops, 1, Ops::kQkTokens1, false>(q2 + r, ld, raw + t * kHeadDimQK,
                                                      s + t * ld + r, nullptr, scale);
      }
    }
  }
}

template <class Ops, int RV, int NC>
void pv_columns(const float* p, int64_t ld, const float* kv, int ntok, float* ot,
                const float* alpha) {
  int c = 0;
  for (; c + NC <= kHeadDimV; c += NC) {
    pv_block<Ops, RV, NC>(p, ld, kv + c, ntok, ot + c * ld, alpha);
  }
  constexpr int kTail = kHeadDimV % NC;
  if constexpr (kTail > 0) pv_block<Ops, RV, kTail>(p, ld, kv + c, ntok, ot + c * ld, alpha);
}

template <class Ops>
void tile_values(const float* p, int64_t ld, const float* kv, int ntok, float* ot,
                 const float* alpha) {
  constexpr int W = Ops::kWidth;
  int64_t r = 0;
  for (; r + 2 * W <= ld; r += 2 * W) {
    pv_columns<Ops, 2, Ops::kPvCols2>(p + r, ld, kv, ntok, ot + r, alpha + r);
  }
  if (r < ld) pv_columns<Ops, 1, Ops::kPvCols1>(p + r, ld, kv, ntok, ot + r, alpha + r);
}

// Online softmax over one tile, per row vector: masks keys t >= lim[r] to -inf, updates the
// running max m and sum l (base 2), leaves P = 2^(S - m) in s and the rescale of the previous
// out^T in alpha. A row that has seen no key keeps m = -inf, l = 0 and gets P = 0.
template <class Ops>
void tile_softmax(float* s, int64_t ld, int ntok, const float* lim, float* m, float* l,
                  float* alpha) {
  using V = typename Ops::V;
  constexpr int W = Ops::kWidth;
  const V neg_inf = Ops::set1(-std::numeric_limits<float>::infinity());
  for (int64_t r = 0; r < ld; r += W) {
    const V limit = Ops::load(lim + r);
    V tile_max = neg_inf;
    for (int t = 0; t < ntok; ++t) {
      const V x =
          Ops::mask_ge(Ops::load(s + t * ld + r), Ops::set1(static_cast<float>(t)), limit, neg_inf);
      Ops::store(s + t * ld + r, x);
      tile_max = Ops::max(tile_max, x);
    }
    const V m_old = Ops::load(m + r);
    const V m_new = Ops::max(m_old, tile_max);
    // All keys so far masked: subtract 0 instead of -inf so that exp2 gives 0, not NaN.
    const V m_use = Ops::mask_eq(m_new, neg_inf, Ops::zero());
    const V a = Ops::exp2(Ops::sub(m_old, m_use));
    V sum = Ops::zero();
    for (int t = 0; t < ntok; ++t) {
      const V e = Ops::exp2(Ops::sub(Ops::load(s + t * ld + r), m_use));
      Ops::store(s + t * ld + r, e);
      sum = Ops::add(sum, e);
    }
    Ops::store(m + r, m_new);
    Ops::store(l + r, Ops::fma(Ops::load(l + r), a, sum));
    Ops::store(alpha + r, a);
  }
}

// One fp8 token (row: its bytes) dequantised into dst[576]: codes become fp16 bit patterns
// (value / 256, exact), the ISA's fp16 conversion makes them fp32, and two multiplications, by
// 256 (exact) and by the scale, give code * scale rounded once, as cpu/elem.h's table does.
template <class Ops>
MLA_ALWAYS_INLINE void load_fp8_token(const DecodeProblem& p, const uint8_t* row, float* dst) {
  alignas(64) uint16_t h[kHeadDimQK];
  const bool ds_mla = p.kv_type == detail::KvType::kFp8DsMla;
  const int n = ds_mla ? kHeadDimV : kHeadDimQK;
  for (int d = 0; d < n; ++d) h[d] = detail::fp8_e4m3_to_fp16_bits_div256(row[d]);
  Ops::load_halves(h, dst, n, detail::ElemType::kFloat16);
  if (!ds_mla) {
    const float scale = p.kv_scale;
    for (int d = 0; d < kHeadDimQK; ++d) dst[d] = dst[d] * 256.0f * scale;
    return;
  }
  float scales[kHeadDimV / detail::kDsMlaBlock];
  std::memcpy(scales, row + detail::kDsMlaScaleOffset, sizeof scales);
  for (int blk = 0; blk < kHeadDimV / detail::kDsMlaBlock; ++blk) {
    float* v = dst + blk * detail::kDsMlaBlock;
    for (int d = 0; d < detail::kDsMlaBlock; ++d) v[d] = v[d] * 256.0f * scales[blk];
  }
  std::memcpy(h, row + detail::kDsMlaRopeOffset, sizeof(uint16_t) * kHeadDimRope);
  Ops::load_halves(h, dst + kHeadDimV, kHeadDimRope, detail::ElemType::kBFloat16);
}

// kBf16Dot: scores by vdpbf16ps from raw bf16 (only instantiated for Ops that have it, and
// only called for bf16 data).
template <class Ops, bool kBf16Dot>
void run_piece(const DecodeProblem& p, const Piece& pc, float* scratch) {
  constexpr int W = Ops::kWidth;
  // Scratch layout of kernel.h; the leading dimension of every [..][rows] array is ld.
  const int64_t cap = tile_capacity(p.rows());
  const int64_t ld = round_up(pc.nrows, W);
  float* qt = scratch;                   // [576][ld]
  float* s = qt + kHeadDimQK * cap;      // [kKvTile][ld]
  float* ot = s + kKvTile * cap;         // [512][ld]
  float* kv = ot + kHeadDimV * cap;      // [kKvTile][576]
  float* m = kv + kKvTile * kHeadDimQK;  // [ld]
  float* l = m + cap;                    // [ld]
  float* alpha = l + cap;                // [ld]
  float* lim = alpha + cap;              // [ld]
  // AVX512-BF16 path: q^T as bf16 pairs in place of the fp32 q^T, and the raw bf16 tile.
  uint32_t* q2 = reinterpret_cast<uint32_t*>(qt);          // [288][ld]
  uint16_t* raw = reinterpret_cast<uint16_t*>(lim + cap);  // [kKvTile][576]
  alignas(64) float row[kHeadDimQK];
  const uint16_t* next[kKvTile];

  // 1. q^T, scaled into the base-2 domain (bf16-dot path: raw pairs, scaled after the dot);
  //    padding rows are 0 and fully masked below.
  const float qscale = p.scale * kLog2e;
  int64_t visible[kMaxTileRows];
  const int64_t seq_len = p.seq_lens[pc.b * p.seq_lens_stride];
  for (int64_t r = 0; r < ld; ++r) {
    if (r < pc.nrows) {
      const int32_t s_idx = (pc.row0 + static_cast<int32_t>(r)) / p.h_q;
      const int32_t h = (pc.row0 + static_cast<int32_t>(r)) % p.h_q;
      visible[r] = detail::visible_keys(seq_len, s_idx, p.s_q, p.causal);
      const uint16_t* qn = static_cast<const uint16_t*>(p.q_nope) + pc.b * p.q_nope_stride_b +
                           s_idx * p.q_nope_stride_s + h * p.q_nope_stride_h;
      const uint16_t* qp = static_cast<const uint16_t*>(p.q_pe) + pc.b * p.q_pe_stride_b +
                           s_idx * p.q_pe_stride_s + h * p.q_pe_stride_h;
      if constexpr (kBf16Dot) {
        for (int d = 0; d < kHeadDimV; d += 2) {
          q2[(d / 2) * ld + r] = qn[d] | static_cast<uint32_t>(qn[d + 1]) << 16;
        }
        for (int d = 0; d < kHeadDimRope; d += 2) {
          q2[((kHeadDimV + d) / 2) * ld + r] = qp[d] | static_cast<uint32_t>(qp[d + 1]) << 16;
        }
      } else {
        Ops::load_halves(qn, row, kHeadDimV, p.dtype);
        Ops::load_halves(qp, row + kHeadDimV, kHeadDimRope, p.dtype);
        for (int d = 0; d < kHeadDimQK; ++d) qt[d * ld + r] = row[d] * qscale;
      }
    } else if constexpr (kBf16Dot) {
      for (int d = 0; d < kHeadDimQK / 2; ++d) q2[d * ld + r] = 0;
    } else {
      for (int d = 0; d < kHeadDimQK; ++d) qt[d * ld + r] = 0.0f;
    }
    m[r] = -std::numeric_limits<float>::infinity();
    l[r] = 0.0f;
  }
  std::memset(ot, 0, sizeof(float) * kHeadDimV * ld);

  // 2. KV tiles.
  // Token addresses are computed in bytes (strides are in elements of the cache's type: 2 bytes
  // for bf16/fp16, 1 for fp8) and kept as uint16_t pointers for the bf16/fp16 loads; an fp8 row
  // is only dereferenced as bytes by dequantize_token. Prefetching always covers 1152 bytes from
  // a row's start: for fp8 rows that reaches into the following row, a harmless hint.
  const char* cache = static_cast<const char*>(p.kv);
  const int64_t kv_bytes = p.kv_type == detail::KvType::kHalf ? 2 : 1;
  const int32_t* pages = p.block_table + pc.b * p.block_table_stride;
  const int64_t in_page = p.page_size - 1;
  auto token_offset = [&](int64_t j) {
    return static_cast<int64_t>(pages[j >> p.page_shift]) * p.kv_stride_page +
           (j & in_page) * p.kv_stride_row;
  };
  auto token = [&](int64_t j) {
    return reinterpret_cast<const uint16_t*>(cache + token_offset(j) * kv_bytes);
  };
  for (int64_t t0 = pc.k0; t0 < pc.k1; t0 += kKvTile) {
    const int n = static_cast<int>(pc.k1 - t0 < kKvTile ? pc.k1 - t0 : kKvTile);
    const int ntok = static_cast<int>(round_up(n, kTokenAlign));
    for (int t = 0; t < n; ++t) {
      if constexpr (kBf16Dot) {
        std::memcpy(raw + t * kHeadDimQK, token(t0 + t), sizeof(uint16_t) * kHeadDimQK);
        Ops::load_halves(raw + t * kHeadDimQK, kv + t * kHeadDimQK, kHeadDimV, p.dtype);
      } else if (p.kv_type == detail::KvType::kHalf) {
        Ops::load_halves(token(t0 + t), kv + t * kHeadDimQK, kHeadDimQK, p.dtype);
      } else {
        load_fp8_token<Ops>(p, static_cast<const uint8_t*>(p.kv) + token_offset(t0 + t),
                            kv + t * kHeadDimQK);
      }
    }
    if constexpr (kBf16Dot) {
      std::memset(raw + n * kHeadDimQK, 0, sizeof(uint16_t) * (ntok - n) * kHeadDimQK);
    }
    // Tokens of the next tile, for tile_scores to prefetch; beyond the piece's keys, a token
    // of this tile (already cached) so that dead pages are never touched.
    for (int t = 0; t < ntok; ++t) {
      const int64_t j = t0 + kKvTile + t;
      next[t] = token(j < pc.k1 ? j : t0);
    }
    std::memset(kv + n * kHeadDimQK, 0, sizeof(float) * (ntok - n) * kHeadDimQK);
    // Keys of this tile visible to each row: [0, lim) (causal rows see fewer; padding none).
    for (int64_t r = 0; r < ld; ++r) {
      const int64_t v = r < pc.nrows ? visible[r] - t0 : 0;
      lim[r] = static_cast<float>(v < 0 ? 0 : (v > n ? n : v));
    }
    if constexpr (kBf16Dot) {
      tile_scores_bf16<Ops>(q2, ld, raw, ntok, s, next, qscale);
    } else {
      tile_scores<Ops>(qt, ld, kv, ntok, s, next);
    }
    tile_softmax<Ops>(s, ld, ntok, lim, m, l, alpha);
    tile_values<Ops>(s, ld, kv, ntok, ot, alpha);
  }

  // 3. Normalise. Rows that saw no key (l == 0) have out^T == 0: out = 0, lse = -inf.
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < pc.nrows; ++r) {
    const bool empty = !(l[r] > 0.0f);
    const float inv = empty ? 0.0f : 1.0f / l[r];
    const float lse2 = empty ? neg_inf : m[r] + std::log2(l[r]);
    if (pc.partial != nullptr) {
      float* dst = pc.partial + r * kHeadDimV;
      for (int c = 0; c < kHeadDimV; ++c) dst[c] = ot[c * ld + r] * inv;
      pc.partial[cap * kHeadDimV + r] = lse2;
      continue;
    }
    for (int c = 0; c < kHeadDimV; ++c) row[c] = ot[c * ld + r] * inv;
    const int32_t s_idx = (pc.row0 + static_cast<int32_t>(r)) / p.h_q;
    const int32_t h = (pc.row0 + static_cast<int32_t>(r)) % p.h_q;
    uint16_t* out = static_cast<uint16_t*>(p.out) + pc.b * p.out_stride_b + s_idx * p.out_stride_s +
                    h * p.out_stride_h;
    Ops::store_halves(row, out, kHeadDimV, p.dtype);
    if (p.lse != nullptr) {
      p.lse[pc.b * p.lse_stride_b + s_idx * p.lse_stride_s + h * p.lse_stride_h] =
          empty ? neg_inf : lse2 * kLn2;
    }
  }
}

}  // namespace
}  // namespace mla::cpu::fast
