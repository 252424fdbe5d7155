// The portable split-KV decode kernel (mma.sync m16n8k16, cp.async), sm_80 and newer.
//
// Grid: (num_parts, row_tiles). CTA (p, t) serves query rows [t * kRows, (t + 1) * kRows) of
// every request and the work items of partition p (decode_io::for_each_item): an item that covers
// a whole request writes `out` / `lse` directly; a cut one writes an fp32 partial to its slot for
// the combine kernel.
//
// Within an item, per kBlockN-token KV tile (barriers A, B, C):
//   A  tile t has landed (cp.async.wait_group + barrier); issue tile t + kStages - 1 into the
//      slot tile t - 1 used, which every warp finished reading before arriving here, and load
//      the page ids of the tile after it.
//      S = Q K^T per warp, scaled to the log2 domain and masked (dead tokens -> -inf).
//      Per-warp row maxima -> shared memory.
//   B  every warp of a row band combines the maxima, computes P = exp2(S - m) and writes it to
//      shared memory; group 0 writes each row's rescale factor alpha.
//   C  every warp rescales its output columns by alpha and accumulates P V.
// Shared memory rows are 16-byte-chunk XOR-swizzled (chunk ^ (row & 7)) so that ldmatrix reads of
// eight rows hit eight different bank groups.
//
// fp8 caches (Cfg::kFp8) add one step after A: the raw tile t is dequantised into the single
// 16-bit tile (which every warp finished reading in tile t - 1's C phase before arriving at A),
// then barrier A' makes it visible. The ring issued at A holds raw bytes, and its slot of tile
// t - 1 was last read by tile t - 1's dequantisation, before A'. fp8_e4m3's per-tensor scale is
// folded into the logit scale and the output normaliser (the tile holds exact e4m3 values); a
// device-side scale that is not finite and > 0 makes the request's rows NaN and records
// kBadKvScale.
#pragma once

#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>

#include "core/problem.h"
#include "cuda/common/decode_io.cuh"
#include "cuda/common/elem.cuh"
#include "cuda/common/fp8.cuh"
#include "cuda/common/launch.h"
#include "cuda/common/ptx.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/sm80/config.h"
#include "cuda/workspace.h"

namespace mla::cuda::sm80 {

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled 576-wide tile.
__device__ __forceinline__ uint32_t row_chunk_offset(int row, int chunk) {
  return static_cast<uint32_t>(row * (kHeadDimQK * 2) + ((chunk ^ (row & 7)) << 4));
}

// Same for the P tile, whose rows are kPChunks chunks long (64 or 128 bytes). For 64-byte rows two
// rows share a 128-byte bank line, so the XOR uses row bits 1..2.
template <int kPChunks>
__device__ __forceinline__ uint32_t p_chunk_offset(int row, int chunk) {
  const int swz = kPChunks == 8 ? (row & 7) : ((row >> 1) & 3);
  return static_cast<uint32_t>(row * kPChunks * 16 + ((chunk ^ swz) << 4));
}

template <typename Cfg, typename Traits>
struct DecodeCta {
  using Elem = typename Traits::T;

  const detail::DecodeProblem& p;
  const ScheduleView& s;
  uint8_t* smem;
  int warp, lane;
  int row0;  // first packed row of this CTA's row tile
  int rows;  // s_q * h_q

  using Smem = typename Cfg::Smem;
  __device__ Smem& sm() const { return *reinterpret_cast<Smem*>(smem); }
  __device__ uint32_t q_addr() const { return ptx::smem_addr(sm().q); }
  __device__ uint32_t kv_addr(int slot) const { return ptx::smem_addr(sm().kv[slot]); }
  __device__ uint32_t p_addr() const { return ptx::smem_addr(sm().p); }
  __device__ float* red_max() const { return &sm().red_max[0][0]; }
  __device__ float* alpha() const { return sm().alpha; }
  __device__ float* red_sum() const { return &sm().red_sum[0][0]; }
  __device__ float* row_max() const { return sm().row_max; }

  __device__ auto q_chunk() const {
    const uint32_t base = q_addr();
    return [base](int row, int chunk) { return base + row_chunk_offset(row, chunk); };
  }
  __device__ auto kv_chunk(int slot) const {
    const uint32_t base = kv_addr(slot);
    return [base](int row, int chunk) { return base + row_chunk_offset(row, chunk); };
  }
  using Pages = decode_io::KvPages<Cfg::kBlockN, Cfg::kWarps>;
  // Loads a tile into ring slot `slot`: 16-bit rows into the swizzled tile, or fp8 bytes into
  // the raw ring.
  __device__ void issue_kv(int32_t b, int64_t tok, int64_t tok_end, int slot, const Pages& pages,
                           bool& bad) const {
    if constexpr (Cfg::kFp8) {
      fp8::load_kv_raw<Cfg::kBlockN, Cfg::kWarps, Cfg::kRawRowBytes>(
          p, s, b, tok, tok_end, warp, lane, pages,
          ptx::smem_addr(sm().raw) + slot * (Cfg::kBlockN * Cfg::kRawRowBytes), bad);
    } else {
      decode_io::load_kv<Cfg::kBlockN, Cfg::kWarps, Elem>(p, s, b, tok, tok_end, warp, lane, pages,
                                                          kv_chunk(slot), bad);
    }
  }

  // Decodes tokens [tok_begin, tok_end) of request b (tok_begin a multiple of 64) for this CTA's
  // rows and stores them to `sink` (out / lse, or a split's partial slot).
  __device__ void run_item(int32_t b, int32_t len, int64_t tok_begin, int64_t tok_end,
                           const decode_io::RowSink& sink) {
    const int g = lane / 4, c = lane % 4;
    const int band = warp % Cfg::kMTiles, group = warp / Cfg::kMTiles;
    const int num_tiles = static_cast<int>((tok_end - tok_begin + Cfg::kBlockN - 1) / Cfg::kBlockN);
    // fp8_e4m3: the tile holds code values, so the per-tensor scale multiplies the logits and
    // the output; 1 for the other formats.
    const float kv_scale = Cfg::kKv == detail::KvType::kFp8E4M3 ? fp8::kv_scale(p) : 1.0f;
    const float scale_log2 = p.scale * kv_scale * softmax::kLog2e;

    // S-phase rows of this thread: band * 16 + g and + 8.
    int32_t vis[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) vis[i] = decode_io::visible(p, row0 + band * 16 + g + 8 * i, len);

    bool bad = false;
    if (Cfg::kKv == detail::KvType::kFp8E4M3 && !fp8::kv_scale_ok(kv_scale)) {
      if (threadIdx.x == 0) {
        atomicMin(&s.header->error_key, error_key(b, DataError::kBadKvScale, 0));
      }
      bad = true;
    }
    decode_io::load_q<Cfg::kRows, Cfg::kWarps, Elem>(p, b, row0, warp, lane, q_chunk());
    auto tile_tok = [&](int tile) { return tok_begin + static_cast<int64_t>(tile) * Cfg::kBlockN; };
    Pages pages;  // page ids of the next tile to issue, loaded a tile ahead
#pragma unroll
    for (int st = 0; st < Cfg::kStages - 1; ++st) {
      if (st < num_tiles) {
        pages.load(p, b, tile_tok(st), tok_end, warp);
        issue_kv(b, tile_tok(st), tok_end, st, pages, bad);
      }
      ptx::cp_async_commit();
    }
    if (Cfg::kStages - 1 < num_tiles) pages.load(p, b, tile_tok(Cfg::kStages - 1), tok_end, warp);

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
      const int ring_slot = t % Cfg::kStages;
      const int slot = Cfg::kFp8 ? 0 : ring_slot;  // the 16-bit tile the math reads
      ptx::cp_async_wait<Cfg::kStages - 2>();
      __syncthreads();  // A
      {
        const int next = t + Cfg::kStages - 1;
        if (next < num_tiles) issue_kv(b, tile_tok(next), tok_end, next % Cfg::kStages, pages, bad);
        ptx::cp_async_commit();
        if (next + 1 < num_tiles) pages.load(p, b, tile_tok(next + 1), tok_end, warp);
      }
      if constexpr (Cfg::kFp8) {
        fp8::dequantize_tile<Cfg::kKv, Cfg::kBlockN, Cfg::kThreads, Traits>(
            sm().raw + ring_slot * (Cfg::kBlockN * Cfg::kRawRowBytes), sm().kv[0],
            [](int row, int chunk) { return row_chunk_offset(row, chunk); });
        __syncthreads();  // A'
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
        const uint32_t b_base = kv_addr(slot) + b_tok * Cfg::kRowBytes;
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
            float v = part[0][nt][e];
#pragma unroll
            for (int ch = 1; ch < kChains; ++ch) v += part[ch][nt][e];
            sc[nt][e] = v;
          }
      }

      // ---- scale, mask, row max ----
      // Row i sees tile columns [0, lim[i]).
      int lim[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        lim[i] =
            static_cast<int>(max(int64_t{0}, min(int64_t{Cfg::kBlockN}, vis[i] - tile_tok(t))));
      }
      float tile_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
      for (int nt = 0; nt < Cfg::kSNTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = e / 2;
          const int col = group * Cfg::kSTokens + nt * 8 + 2 * c + (e & 1);
          const float v = col < lim[i] ? sc[nt][e] * scale_log2 : -CUDART_INF_F;
          sc[nt][e] = v;
          tile_max[i] = fmaxf(tile_max[i], v);
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        tile_max[i] = softmax::quad_max(tile_max[i]);
        if (c == 0) red_max()[group * Cfg::kRows + band * 16 + g + 8 * i] = tile_max[i];
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
          for (int gi = 0; gi < Cfg::kSGroups; ++gi)
            m_new = fmaxf(m_new, red_max()[gi * Cfg::kRows + rr]);
          base[i] = softmax::exp_base(m_new);
          const float a = softmax::exp2(m[i] - base[i]);
          l[i] *= a;
          m[i] = m_new;
          if (group == 0 && c == 0) alpha()[rr] = a;
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
        const float a0 = alpha()[mt * 16 + g], a1 = alpha()[mt * 16 + g + 8];
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
        const uint32_t v_base = kv_addr(slot) + v_tok * Cfg::kRowBytes;
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
            ptx::ldmatrix_x4_trans(
                vb, v_base + ks * 16 * Cfg::kRowBytes + (((chunk) ^ (lane & 7)) << 4));
#pragma unroll
            for (int mt = 0; mt < Cfg::kMTiles; ++mt) {
              ptx::mma_16816<Traits::kIsBf16>(acc[mt][2 * np], pa[mt], vb[0], vb[1]);
              ptx::mma_16816<Traits::kIsBf16>(acc[mt][2 * np + 1], pa[mt], vb[2], vb[3]);
            }
          }
        }
      }
    }
    ptx::cp_async_wait<0>();  // only empty groups can remain; keep the ring state clean

    // ---- epilogue: row sums and maxima to shared memory, then each warp writes its columns ----
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float sum = softmax::quad_sum(l[i]);
      const int rr = band * 16 + g + 8 * i;
      if (c == 0) {
        red_sum()[group * Cfg::kRows + rr] = sum;
        if (group == 0) row_max()[rr] = m[i];
      }
    }
    // Reduces the bad-page flag over the CTA and orders the writes above before the reads below.
    bad = __syncthreads_or(bad);

#pragma unroll
    for (int mt = 0; mt < Cfg::kMTiles; ++mt) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int rr = mt * 16 + g + 8 * i;
        const int r = row0 + rr;
        float sum = 0.0f;
#pragma unroll
        for (int gi = 0; gi < Cfg::kSGroups; ++gi) sum += red_sum()[gi * Cfg::kRows + rr];
        const float inv = sum > 0.0f ? kv_scale / sum : 0.0f;
        const float lse = bad ? CUDART_NAN_F : softmax::natural_lse(row_max()[rr], sum);
        if (r >= rows) continue;
        decode_io::store_row<Cfg::kONTiles, Traits>(
            p, s, sink, r, warp * Cfg::kOCols + 2 * c, bad, inv,
            [&](int nt, int j) { return acc[mt][nt][2 * i + j]; });
        if (warp == 0 && c == 0) decode_io::store_lse(p, s, sink, r, lse);
      }
    }
    __syncthreads();  // the next item overwrites Q, P and the exchange buffers
  }
};

template <typename Cfg, typename Traits>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    decode_kernel(const __grid_constant__ detail::DecodeProblem p,
                  const __grid_constant__ ScheduleView s) {
  extern __shared__ __align__(128) uint8_t smem[];
  // Launched as a programmatic dependent of the scheduler (or the previous combine) on Hopper:
  // nothing of the schedule or the inputs is read before the previous grid has completed.
  ptx::grid_dependency_wait();
  ptx::launch_dependents();
  DecodeCta<Cfg, Traits> cta{p,
                             s,
                             smem,
                             static_cast<int>(threadIdx.x / 32),
                             static_cast<int>(threadIdx.x % 32),
                             static_cast<int>(blockIdx.y) * Cfg::kRows,
                             p.s_q * p.h_q};
  decode_io::run_partition<Cfg::kRows, Cfg::kThreads, Traits>(p, s, blockIdx.x, cta.row0, cta);
}

// The kernel of configuration Cfg, for launch_decode (common/launch.h).
template <int kM, int kN, int kS, int kW, detail::KvType kKv, typename Traits>
constexpr DecodeKernel kernel_of(Config<kM, kN, kS, kW, kKv>, Traits) {
  return &decode_kernel<Config<kM, kN, kS, kW, kKv>, Traits>;
}

}  // namespace mla::cuda::sm80
