// The portable sparse decode kernel (mma.sync m16n8k16, cp.async gathers), sm_80 and newer.
//
// Grid: one CTA per (query token bs = b * s_q + s, head tile, split), blockIdx.x =
// (bs * row_tiles + tile) * num_splits + split, so the head tiles and splits of one query token
// run side by side and share its gathered rows in L2. CTA (bs, tile, split) serves heads
// [tile * kRows, +kRows) of query token (b, s) over entries [split * span, +span) of its top-k
// list, cut at n = topk_lengths[b] (or topk); unsplit calls write out / lse directly, split ones
// the CTA's fp32 partial (sparse.h) for the combine kernel.
//
// Per tile of kBlockN entries (barriers A, B, C, as the dense kernel sm80/kernel.cuh):
//   A  tile t has landed; issue the gather of tile t + kStages - 1 into the stage tile t - 1
//      used (every warp finished reading it before arriving here), then load the indices of the
//      tile after it, so an index load never waits in front of its gather.
//      S = Q K^T, scaled to the log2 domain, entries that are not selected tokens -> -inf.
//   B  row maxima combined, P = exp2(S - m) to shared memory, rescale factors alpha.
//   C  O = alpha * O + P V.
// A gather copies only selected tokens: entry -1, entries at or past the split's end and bad
// slots are zero-filled by cp.async without a global read (and masked in S, so they weigh 0). A
// bad slot (below -1 or at or past num_pages * page_size) or a bad topk_lengths[b] makes every
// row of the query token NaN (the split partial's NaN LSE carries it through the combine) and
// records the lowest bad entry of the request in the workspace error key.
#pragma once

#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>

#include "core/sparse_problem.h"
#include "cuda/common/elem.cuh"
#include "cuda/common/ptx.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/sm80/kernel.cuh"  // the swizzles row_chunk_offset / p_chunk_offset
#include "cuda/sparse/config.h"
#include "cuda/sparse/sink.cuh"
#include "cuda/sparse/sparse.h"
#include "cuda/workspace.h"

namespace mla::cuda::sparse {

using sm80::p_chunk_offset;
using sm80::row_chunk_offset;

template <typename Cfg, typename Traits>
struct SparseCta {
  using Elem = typename Traits::T;
  using Smem = typename Cfg::Smem;

  const detail::SparseDecodeProblem& p;
  const View& v;
  uint8_t* smem;
  int warp, lane;

  __device__ Smem& sm() const { return *reinterpret_cast<Smem*>(smem); }
  __device__ uint32_t q_addr() const { return ptx::smem_addr(sm().q); }
  __device__ uint32_t kv_addr(int stage) const { return ptx::smem_addr(sm().kv[stage]); }
  __device__ uint32_t p_addr() const { return ptx::smem_addr(sm().p); }

  // The top-k entries this warp gathers for one tile (tokens warp + i * kWarps), read a tile
  // ahead of their gather; -1 for entries at or past the split's end, which are never read.
  struct Entries {
    int32_t slot[Cfg::kGatherTokens];
  };

  __device__ void load_entries(const int32_t* idx, int64_t first, int64_t end, Entries& e) const {
#pragma unroll
    for (int i = 0; i < Cfg::kGatherTokens; ++i) {
      const int64_t k = first + warp + i * Cfg::kWarps;
      e.slot[i] = k < end ? __ldg(idx + k) : -1;
    }
  }

  // cp.async of the tile whose entries start at `first` into ring stage `stage`: one warp per
  // token, 32 lanes copying 512 contiguous bytes per instruction. Marks each entry's liveness
  // for the S phase; a bad slot sets `bad` and records the request's error.
  __device__ void gather(int32_t b, int32_t s, int64_t first, int stage, const Entries& e,
                         bool& bad) const {
    const Elem* kv = static_cast<const Elem*>(p.kv);
    const int64_t capacity = static_cast<int64_t>(p.num_pages) << p.page_shift;
    const uint32_t base = kv_addr(stage);
#pragma unroll
    for (int i = 0; i < Cfg::kGatherTokens; ++i) {
      const int t = warp + i * Cfg::kWarps;
      const int32_t slot = e.slot[i];
      const bool valid = slot >= 0 && slot < capacity;
      if (slot < -1 || slot >= capacity) {
        if (!bad && lane == 0) {
          atomicMin(&v.header->error_key,
                    error_key(b, DataError::kBadIndex,
                              sparse_index_position(s, static_cast<int32_t>(first + t))));
        }
        bad = true;
      }
      const Elem* src = valid
                            ? kv + (static_cast<int64_t>(slot) >> p.page_shift) * p.kv_stride_page +
                                  (slot & (p.page_size - 1)) * p.kv_stride_row
                            : kv;
      ptx::cp_async_16(base + row_chunk_offset(t, lane), src + lane * 8, valid);
      ptx::cp_async_16(base + row_chunk_offset(t, lane + 32), src + (lane + 32) * 8, valid);
      if (lane < 8) {
        ptx::cp_async_16(base + row_chunk_offset(t, 64 + lane), src + (64 + lane) * 8, valid);
      }
      if (lane == 0) sm().live[stage][t] = valid ? 1 : 0;
    }
  }

  // cp.async of heads [h0, h0 + kRows) of query token (b, s); heads past h_q are zero-filled.
  // One warp per row, as the gather.
  __device__ void load_q(int32_t b, int32_t s, int h0) const {
    const Elem* q_nope = static_cast<const Elem*>(p.q_nope);
    const Elem* q_pe = static_cast<const Elem*>(p.q_pe);
    const uint32_t base = q_addr();
    for (int rr = warp; rr < Cfg::kRows; rr += Cfg::kWarps) {
      const int h = h0 + rr;
      const bool valid = h < p.h_q;
      const int hh = valid ? h : 0;
      const Elem* nope =
          q_nope + b * p.q_nope_stride_b + s * p.q_nope_stride_s + hh * p.q_nope_stride_h;
      const Elem* pe = q_pe + b * p.q_pe_stride_b + s * p.q_pe_stride_s + hh * p.q_pe_stride_h;
      ptx::cp_async_16(base + row_chunk_offset(rr, lane), nope + lane * 8, valid);
      ptx::cp_async_16(base + row_chunk_offset(rr, lane + 32), nope + (lane + 32) * 8, valid);
      if (lane < 8) ptx::cp_async_16(base + row_chunk_offset(rr, 64 + lane), pe + lane * 8, valid);
    }
  }

  __device__ void run(int32_t b, int32_t s, int h0, int split) {
    const int g = lane / 4, c = lane % 4;
    const int band = warp % Cfg::kMTiles, group = warp / Cfg::kMTiles;
    const float scale_log2 = p.scale * softmax::kLog2e;
    const bool split_mode = v.num_splits > 1;

    // The entries that count: the first n of the list (a bad topk_lengths[b]: none, NaN rows).
    bool bad = false;
    int32_t n = p.topk;
    if (p.topk_lengths != nullptr) {
      n = p.topk_lengths[b * p.topk_lengths_stride];
      if (n < 0 || n > p.topk) {
        if (threadIdx.x == 0) {
          atomicMin(&v.header->error_key, error_key(b, DataError::kBadTopkLength, n));
        }
        bad = true;
        n = 0;
      }
    }
    const int64_t k_begin = static_cast<int64_t>(split) * v.span;
    const int64_t k_end = min(k_begin + v.span, static_cast<int64_t>(n));
    const int num_tiles =
        k_end > k_begin ? static_cast<int>((k_end - k_begin + Cfg::kBlockN - 1) / Cfg::kBlockN) : 0;
    const int32_t* idx = p.indices + b * p.indices_stride_b + s * p.indices_stride_s;
    auto tile_first = [&](int tile) { return k_begin + static_cast<int64_t>(tile) * Cfg::kBlockN; };

    if (num_tiles > 0) load_q(b, s, h0);  // an empty range never reads q
    Entries entries;                      // of the next tile to gather
#pragma unroll
    for (int st = 0; st < Cfg::kStages - 1; ++st) {
      if (st < num_tiles) {
        load_entries(idx, tile_first(st), k_end, entries);
        gather(b, s, tile_first(st), st, entries, bad);
      }
      ptx::cp_async_commit();
    }
    if (Cfg::kStages - 1 < num_tiles) {
      load_entries(idx, tile_first(Cfg::kStages - 1), k_end, entries);
    }

    float m[2] = {-CUDART_INF_F, -CUDART_INF_F};  // running row max, log2 domain
    float l[2] = {0.0f, 0.0f};                    // this thread's share of the row sums
    float acc[Cfg::kMTiles][Cfg::kONTiles][4];
#pragma unroll
    for (int mt = 0; mt < Cfg::kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < Cfg::kONTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;

    for (int t = 0; t < num_tiles; ++t) {
      const int stage = t % Cfg::kStages;
      ptx::cp_async_wait<Cfg::kStages - 2>();
      __syncthreads();  // A
      {
        const int next = t + Cfg::kStages - 1;
        if (next < num_tiles) {
          gather(b, s, tile_first(next), next % Cfg::kStages, entries, bad);
        }
        ptx::cp_async_commit();
        if (next + 1 < num_tiles) load_entries(idx, tile_first(next + 1), k_end, entries);
      }

      // ---- S = Q K^T for rows band*16.., tokens group*kSTokens.. ----
      // kChains independent accumulators per n-tile (k-steps round robin) shorten the chain of
      // dependent MMAs when a warp has few n-tiles.
      constexpr int kChains = Cfg::kSNTiles >= 4 ? 1 : 4 / Cfg::kSNTiles;
      float sc[Cfg::kSNTiles][4];
      {
        float part[kChains][Cfg::kSNTiles][4];
#pragma unroll
        for (int ch = 0; ch < kChains; ++ch)
#pragma unroll
          for (int nt = 0; nt < Cfg::kSNTiles; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) part[ch][nt][e] = 0.0f;
        const int a_row = band * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const uint32_t a_base = q_addr() + a_row * Cfg::kRowBytes;
        const int b_tok = group * Cfg::kSTokens + (lane & 7) + ((lane >> 4) << 3);
        const uint32_t b_base = kv_addr(stage) + b_tok * Cfg::kRowBytes;
        const int swz = lane & 7;  // row & 7 for every row these lanes address
#pragma unroll
        for (int ks = 0; ks < kHeadDimQK / 16; ++ks) {
          float(&acc_s)[Cfg::kSNTiles][4] = part[ks % kChains];
          uint32_t a[4];
          ptx::ldmatrix_x4(a, a_base + (((2 * ks + (lane >> 4)) ^ swz) << 4));
          if constexpr (Cfg::kSNTiles == 1) {
            uint32_t bf[2];
            ptx::ldmatrix_x2(bf, b_base + (((2 * ks + ((lane >> 3) & 1)) ^ swz) << 4));
            ptx::mma_16816<Traits::kIsBf16>(acc_s[0], a, bf[0], bf[1]);
          } else {
#pragma unroll
            for (int np = 0; np < Cfg::kSNTiles / 2; ++np) {
              uint32_t bf[4];
              ptx::ldmatrix_x4(bf, b_base + np * 16 * Cfg::kRowBytes +
                                       (((2 * ks + ((lane >> 3) & 1)) ^ swz) << 4));
              ptx::mma_16816<Traits::kIsBf16>(acc_s[2 * np], a, bf[0], bf[1]);
              ptx::mma_16816<Traits::kIsBf16>(acc_s[2 * np + 1], a, bf[2], bf[3]);
            }
          }
        }
#pragma unroll
        for (int nt = 0; nt < Cfg::kSNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float x = part[0][nt][e];
#pragma unroll
            for (int ch = 1; ch < kChains; ++ch) x += part[ch][nt][e];
            sc[nt][e] = x;
          }
      }

      // ---- scale, mask the entries that are not selected tokens, row max ----
      float tile_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
      for (int nt = 0; nt < Cfg::kSNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e / 2;
          const int col = group * Cfg::kSTokens + nt * 8 + 2 * c + (e & 1);
          const float x = sm().live[stage][col] != 0 ? sc[nt][e] * scale_log2 : -CUDART_INF_F;
          sc[nt][e] = x;
          tile_max[i] = fmaxf(tile_max[i], x);
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        tile_max[i] = softmax::quad_max(tile_max[i]);
        if (c == 0) sm().red_max[group][band * 16 + g + 8 * i] = tile_max[i];
      }
      __syncthreads();  // B

      // ---- online softmax, P -> shared memory ----
      {
        float base[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int rr = band * 16 + g + 8 * i;
          float m_new = m[i];
#pragma unroll
          for (int gi = 0; gi < Cfg::kSGroups; ++gi) m_new = fmaxf(m_new, sm().red_max[gi][rr]);
          base[i] = softmax::exp_base(m_new);
          const float a = softmax::exp2(m[i] - base[i]);
          l[i] *= a;
          m[i] = m_new;
          if (group == 0 && c == 0) sm().alpha[rr] = a;
        }
        uint8_t* p_tile = sm().p;
#pragma unroll
        for (int nt = 0; nt < Cfg::kSNTiles; ++nt) {
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const float p0 = softmax::exp2(sc[nt][2 * i] - base[i]);
            const float p1 = softmax::exp2(sc[nt][2 * i + 1] - base[i]);
            l[i] += p0 + p1;
            const int rr = band * 16 + g + 8 * i;
            const int col = group * Cfg::kSTokens + nt * 8 + 2 * c;
            *reinterpret_cast<uint32_t*>(p_tile + p_chunk_offset<Cfg::kPChunks>(rr, col / 8) +
                                         (col % 8) * 2) = Traits::pack(p0, p1);
          }
        }
      }
      __syncthreads();  // C

      // ---- O = alpha * O + P V for columns [warp * kOCols, +kOCols) ----
#pragma unroll
      for (int mt = 0; mt < Cfg::kMTiles; ++mt) {
        const float a0 = sm().alpha[mt * 16 + g], a1 = sm().alpha[mt * 16 + g + 8];
#pragma unroll
        for (int nt = 0; nt < Cfg::kONTiles; ++nt) {
          acc[mt][nt][0] *= a0;
          acc[mt][nt][1] *= a0;
          acc[mt][nt][2] *= a1;
          acc[mt][nt][3] *= a1;
        }
      }
      {
        const int v_tok = (lane & 7) + ((lane >> 3) & 1) * 8;
        const uint32_t v_base = kv_addr(stage) + v_tok * Cfg::kRowBytes;
        const int p_row = (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int ks = 0; ks < Cfg::kBlockN / 16; ++ks) {
          uint32_t pa[Cfg::kMTiles][4];
#pragma unroll
          for (int mt = 0; mt < Cfg::kMTiles; ++mt) {
            ptx::ldmatrix_x4(pa[mt], p_addr() + p_chunk_offset<Cfg::kPChunks>(
                                                    mt * 16 + p_row, 2 * ks + (lane >> 4)));
          }
#pragma unroll
          for (int np = 0; np < Cfg::kONTiles / 2; ++np) {
            const int chunk = warp * (Cfg::kOCols / 8) + 2 * np + (lane >> 4);
            uint32_t vb[4];
            ptx::ldmatrix_x4_trans(vb,
                                   v_base + ks * 16 * Cfg::kRowBytes + ((chunk ^ (lane & 7)) << 4));
#pragma unroll
            for (int mt = 0; mt < Cfg::kMTiles; ++mt) {
              ptx::mma_16816<Traits::kIsBf16>(acc[mt][2 * np], pa[mt], vb[0], vb[1]);
              ptx::mma_16816<Traits::kIsBf16>(acc[mt][2 * np + 1], pa[mt], vb[2], vb[3]);
            }
          }
        }
      }
    }
    ptx::cp_async_wait<0>();  // only empty groups (and, for no tiles, nothing) remain

    // ---- epilogue: row sums and maxima to shared memory, then each warp writes its columns ----
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float sum = softmax::quad_sum(l[i]);
      const int rr = band * 16 + g + 8 * i;
      if (c == 0) {
        sm().red_sum[group][rr] = sum;
        if (group == 0) sm().row_max[rr] = m[i];
      }
    }
    // Reduces the bad flag over the CTA and orders the writes above before the reads below.
    bad = __syncthreads_or(bad);

    const int64_t bs = static_cast<int64_t>(b) * p.s_q + s;
    const int col0 = warp * Cfg::kOCols + 2 * c;
#pragma unroll
    for (int mt = 0; mt < Cfg::kMTiles; ++mt) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int rr = mt * 16 + g + 8 * i;
        const int h = h0 + rr;
        if (h >= p.h_q) continue;
        float sum = 0.0f;
#pragma unroll
        for (int gi = 0; gi < Cfg::kSGroups; ++gi) sum += sm().red_sum[gi][rr];
        float factor = sum > 0.0f ? 1.0f / sum : 0.0f;
        float lse = softmax::natural_lse(sm().row_max[rr], sum);
        // The sink enters once per row: here when the row is whole, else in the combine.
        if (p.attn_sink != nullptr && !split_mode) {
          add_sink(p.attn_sink[h * p.attn_sink_stride], lse, factor);
        }
        if (bad) lse = CUDART_NAN_F;
        if (split_mode) {
          const int64_t prow = (bs * v.num_splits + split) * p.h_q + h;
          float* dst = v.partial_out + prow * kHeadDimV + col0;
#pragma unroll
          for (int nt = 0; nt < Cfg::kONTiles; ++nt) {
            const float v0 = bad ? CUDART_NAN_F : acc[mt][nt][2 * i] * factor;
            const float v1 = bad ? CUDART_NAN_F : acc[mt][nt][2 * i + 1] * factor;
            *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(v0, v1);
          }
          if (warp == 0 && c == 0) v.partial_lse[prow] = lse;
        } else {
          Elem* dst = static_cast<Elem*>(p.out) + b * p.out_stride_b + s * p.out_stride_s +
                      h * p.out_stride_h + col0;
#pragma unroll
          for (int nt = 0; nt < Cfg::kONTiles; ++nt) {
            const float v0 = bad ? CUDART_NAN_F : acc[mt][nt][2 * i] * factor;
            const float v1 = bad ? CUDART_NAN_F : acc[mt][nt][2 * i + 1] * factor;
            *reinterpret_cast<uint32_t*>(dst + nt * 8) = Traits::pack(v0, v1);
          }
          if (warp == 0 && c == 0 && p.lse != nullptr) {
            p.lse[b * p.lse_stride_b + s * p.lse_stride_s + h * p.lse_stride_h] = lse;
          }
        }
      }
    }
  }
};

template <typename Cfg, typename Traits>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    sparse_kernel(const __grid_constant__ detail::SparseDecodeProblem p,
                  const __grid_constant__ View v) {
  extern __shared__ __align__(128) uint8_t smem[];
  // A programmatic dependent of the reset kernel on Hopper: the error key is reset, and the
  // previous call's combine has finished reading the partials, before anything here runs.
  ptx::grid_dependency_wait();
  ptx::launch_dependents();
  const int64_t x = blockIdx.x;
  const int split = static_cast<int>(x % v.num_splits);
  const int64_t rest = x / v.num_splits;
  const int tile = static_cast<int>(rest % v.row_tiles);
  const int64_t bs = rest / v.row_tiles;
  const int32_t b = static_cast<int32_t>(bs / p.s_q);
  const int32_t s = static_cast<int32_t>(bs - static_cast<int64_t>(b) * p.s_q);
  SparseCta<Cfg, Traits> cta{p, v, smem, static_cast<int>(threadIdx.x / 32),
                             static_cast<int>(threadIdx.x % 32)};
  cta.run(b, s, tile * Cfg::kRows, split);
}

}  // namespace mla::cuda::sparse
