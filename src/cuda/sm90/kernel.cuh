// The Hopper split-KV decode kernel (wgmma, cp.async), sm_90a only. Tiles: config.h.
//
// Grid: (num_parts, row_tiles), 256 threads. CTA (p, t) serves packed query rows
// [64 t, 64 t + 64) of every request and the work items of partition p
// (decode_io::for_each_item). Per KV tile t of an item, three CTA barriers:
//   A  tile t has landed (cp.async.wait_group, proxy fence, barrier). Each warpgroup issues the
//      18 k-steps of S for its 32 tokens, then, while they run, the cp.async of tile
//      t + kStages - 1 into the slot tile t - 1 used (both warpgroups waited for their reads of
//      it before A) and the page-id loads of the tile after it, so no page-table read is waited
//      for in the loop. S is scaled to the log2 domain and masked; row maxima to shared memory.
//   B  both maxima known: rescale O and the row sum, P = exp2(S - m) of its tokens to shared
//      memory (proxy fence).
//   C  P complete: 4 k-steps of O += P V over the tile's 64 tokens, then wait.
// The P tile and the maxima are rewritten only after the next A, which both warpgroups reach
// after their P V reads completed.
#pragma once

#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>
#include <type_traits>

#include "core/problem.h"
#include "cuda/common/decode_io.cuh"
#include "cuda/common/elem.cuh"
#include "cuda/common/ptx.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/common/wgmma.cuh"
#include "cuda/sm90/config.h"
#include "cuda/workspace.h"

namespace mla::cuda::sm90 {

// Shared address of 16-byte chunk `chunk` (0..71) of row `row` in a swizzled tile of
// `slab_bytes / 128` rows at `base` (config.h).
__device__ __forceinline__ uint32_t chunk_addr(uint32_t base, uint32_t slab_bytes, int row,
                                               int chunk) {
  return base + (chunk >> 3) * slab_bytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
}

template <typename Cfg, typename Traits>
struct DecodeCta {
  using Elem = typename Traits::T;
  static constexpr int kSTokens = Cfg::kBlockN / 2;  // S columns per warpgroup
  static constexpr int kSRegs = kSTokens / 2;        // S accumulator registers per thread
  static constexpr int kORegs = Cfg::kOCols / 2;     // O accumulator registers per thread

  const detail::DecodeProblem& p;
  const ScheduleView& s;
  uint32_t smem;      // shared address, 1024-byte aligned
  uint8_t* smem_ptr;  // the same, generic
  int warp, lane;
  int row0;  // first packed row of this CTA's row tile

  __device__ uint32_t kv_base(int slot) const {
    return smem + static_cast<uint32_t>(Cfg::kKvOffset + slot * Cfg::kStageBytes);
  }
  __device__ float* red_max() const { return reinterpret_cast<float*>(smem_ptr + Cfg::kMaxOffset); }
  __device__ float* red_sum() const { return reinterpret_cast<float*>(smem_ptr + Cfg::kSumOffset); }

  // Decodes tokens [tok_begin, tok_end) of request b (tok_begin a multiple of 64) for this CTA's
  // rows and stores them to `sink`.
  __device__ void run_item(int32_t b, int32_t len, int64_t tok_begin, int64_t tok_end,
                           const decode_io::RowSink& sink) {
    const int wg = warp / 4;
    const int g = lane / 4, c = lane % 4;
    const int num_tiles = static_cast<int>((tok_end - tok_begin + Cfg::kBlockN - 1) / Cfg::kBlockN);
    const float scale_log2 = p.scale * softmax::kLog2e;
    const int rows = p.s_q * p.h_q;
    const int band = 16 * (warp % 4);  // this warp's 16 rows of the tile
    const uint32_t q = smem;
    const uint32_t p_tile = smem + static_cast<uint32_t>(Cfg::kPOffset);

    int32_t vis[2];  // keys visible to this thread's rows band + g and band + g + 8
#pragma unroll
    for (int i = 0; i < 2; ++i) vis[i] = decode_io::visible(p, row0 + band + g + 8 * i, len);

    // KV tile `tile` into its ring slot, with page ids loaded earlier into `pages`.
    using Pages = decode_io::KvPages<Cfg::kBlockN, Cfg::kWarps>;
    auto tile_tok = [&](int tile) { return tok_begin + static_cast<int64_t>(tile) * Cfg::kBlockN; };
    auto issue_kv = [&](int tile, const Pages& pages, bool& bad_page) {
      const uint32_t base = kv_base(tile % Cfg::kStages);
      decode_io::load_kv<Cfg::kBlockN, Cfg::kWarps, Elem>(
          p, s, b, tile_tok(tile), tok_end, warp, lane, pages,
          [base](int row, int chunk) { return chunk_addr(base, Cfg::kKvSlabBytes, row, chunk); },
          bad_page);
    };

    bool bad = false;
    decode_io::load_q<Cfg::kRows, Cfg::kWarps, Elem>(
        p, b, row0, warp, lane,
        [q](int row, int chunk) { return chunk_addr(q, Cfg::kQSlabBytes, row, chunk); });
    Pages pages;  // page ids of the next tile to issue
#pragma unroll
    for (int st = 0; st < Cfg::kStages - 1; ++st) {
      if (st < num_tiles) {
        pages.load(p, b, tile_tok(st), tok_end, warp);
        issue_kv(st, pages, bad);
      }
      ptx::cp_async_commit();
    }
    if (Cfg::kStages - 1 < num_tiles) pages.load(p, b, tile_tok(Cfg::kStages - 1), tok_end, warp);

    float m[2] = {-CUDART_INF_F, -CUDART_INF_F};  // running row max, log2 domain
    float l[2] = {0.0f, 0.0f};                    // this thread's share of the row sums
    float o[kORegs];
#pragma unroll
    for (int i = 0; i < kORegs; ++i) o[i] = 0.0f;

    for (int t = 0; t < num_tiles; ++t) {
      const int slot = t % Cfg::kStages;
      ptx::cp_async_wait<Cfg::kStages - 2>();
      wgmma::fence_proxy_async();
      __syncthreads();  // A

      // ---- S = Q K^T for tokens [32 wg, 32 wg + 32): k-step ks reads 16 columns at byte
      // 32 * (ks % 4) of slab ks / 4; this warpgroup's tokens start 32 rows into each slab ----
      float sc[kSRegs];
      const uint32_t kv = kv_base(slot);
      // Descriptors of k-step 0; k-step ks adds a compile-time byte offset (in 16-byte units),
      // so the MMAs issue back to back instead of waiting for descriptor arithmetic.
      const uint64_t dq0 = wgmma::desc_sw128(q, 16, 1024);
      const uint64_t dk0 = wgmma::desc_sw128(kv + wg * kSTokens * 128, 16, 1024);
      wgmma::fence();
#pragma unroll
      for (int ks = 0; ks < kHeadDimQK / 16; ++ks) {
        const uint32_t col = (ks % 4) * 32;
        wgmma::wgmma_m64n32k16_ss<Traits::kIsBf16>(
            sc, wgmma::desc_add(dq0, (ks / 4) * Cfg::kQSlabBytes + col),
            wgmma::desc_add(dk0, (ks / 4) * Cfg::kKvSlabBytes + col), ks > 0);
      }
      wgmma::commit_group();
      // While S runs: the next tile's loads, and the page ids of the one after.
      if (t + Cfg::kStages - 1 < num_tiles) issue_kv(t + Cfg::kStages - 1, pages, bad);
      ptx::cp_async_commit();
      if (t + Cfg::kStages < num_tiles) pages.load(p, b, tile_tok(t + Cfg::kStages), tok_end, warp);
      wgmma::wait_group<0>();
      wgmma::fence_operands(sc);

      // ---- scale, mask, row maxima of this warpgroup's tokens ----
      int lim[2];  // this thread's rows see tile columns [0, lim) of the warpgroup's 32
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        lim[i] = static_cast<int>(
            max(int64_t{0}, min(int64_t{Cfg::kBlockN}, vis[i] - tile_tok(t))) - wg * kSTokens);
      }
      // Most tiles are visible in full to every row of the warp: then no per-element compare.
      auto scale_and_max = [&](auto masked) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          float tile_max = -CUDART_INF_F;
#pragma unroll
          for (int nt = 0; nt < kSTokens / 8; ++nt) {
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              float& v = sc[4 * nt + 2 * i + j];
              if constexpr (decltype(masked)::value) {
                v = nt * 8 + 2 * c + j < lim[i] ? v * scale_log2 : -CUDART_INF_F;
              } else {
                v *= scale_log2;
              }
              tile_max = fmaxf(tile_max, v);
            }
          }
          tile_max = softmax::quad_max(tile_max);
          if (c == 0) red_max()[wg * Cfg::kRows + band + g + 8 * i] = tile_max;
        }
      };
      if (__all_sync(0xffffffffu, min(lim[0], lim[1]) >= kSTokens)) {
        scale_and_max(std::false_type{});
      } else {
        scale_and_max(std::true_type{});
      }
      __syncthreads();  // B

      // ---- online softmax; P of this warpgroup's tokens to the shared P tile ----
      float base[2], alpha[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int rr = band + g + 8 * i;
        const float m_new = fmaxf(m[i], fmaxf(red_max()[rr], red_max()[Cfg::kRows + rr]));
        base[i] = softmax::exp_base(m_new);
        alpha[i] = softmax::exp2(m[i] - base[i]);
        m[i] = m_new;
        l[i] *= alpha[i];
      }
      // Once the row maxima settle, alpha is exactly 1 for every row of the warp: skip the 128
      // multiplies (a warp-uniform branch).
      if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
        for (int nt = 0; nt < Cfg::kOCols / 8; ++nt) {
          o[4 * nt] *= alpha[0];
          o[4 * nt + 1] *= alpha[0];
          o[4 * nt + 2] *= alpha[1];
          o[4 * nt + 3] *= alpha[1];
        }
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int rr = band + g + 8 * i;
#pragma unroll
        for (int nt = 0; nt < kSTokens / 8; ++nt) {
          const float p0 = softmax::exp2(sc[4 * nt + 2 * i] - base[i]);
          const float p1 = softmax::exp2(sc[4 * nt + 2 * i + 1] - base[i]);
          l[i] += p0 + p1;
          const int tok = wg * kSTokens + nt * 8 + 2 * c;  // chunk tok / 8, element tok % 8
          ptx::st_shared_u32(p_tile + rr * 128 + (((tok >> 3) ^ (rr & 7)) << 4) + (tok & 7) * 2,
                             Traits::pack(p0, p1));
        }
      }
      wgmma::fence_proxy_async();
      __syncthreads();  // C

      // ---- O += P V: P is K-major (one slab); V is MN-major (tokens = K rows of 128 bytes,
      // 8-row groups 1024 apart, 64-column slabs kKvSlabBytes apart); warpgroup wg starts at
      // slab 4 wg ----
      const uint64_t dp0 = wgmma::desc_sw128(p_tile, 16, 1024);
      const uint64_t dv0 =
          wgmma::desc_sw128(kv + 4 * wg * Cfg::kKvSlabBytes, Cfg::kKvSlabBytes, 1024);
      wgmma::fence();
#pragma unroll
      for (int kk = 0; kk < Cfg::kBlockN / 16; ++kk) {
        wgmma::wgmma_m64n256k16_ss_tb<Traits::kIsBf16>(o, wgmma::desc_add(dp0, kk * 32),
                                                       wgmma::desc_add(dv0, kk * 16 * 128));
      }
      wgmma::commit_group();
      wgmma::wait_group<0>();
      wgmma::fence_operands(o);
    }
    ptx::cp_async_wait<0>();  // only empty groups can remain; keep the ring state clean

    // ---- epilogue: row sums of both warpgroups' tokens; each stores its 256 columns ----
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float sum = softmax::quad_sum(l[i]);
      if (c == 0) red_sum()[wg * Cfg::kRows + band + g + 8 * i] = sum;
    }
    bad = __syncthreads_or(bad);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int rr = band + g + 8 * i;
      const float sum = red_sum()[rr] + red_sum()[Cfg::kRows + rr];
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int r = row0 + rr;
      if (r >= rows) continue;
      decode_io::store_row<Cfg::kOCols / 8, Traits>(
          p, s, sink, r, wg * Cfg::kOCols + 2 * c, bad, inv,
          [&](int nt, int j) { return o[4 * nt + 2 * i + j]; });
      if (wg == 0 && c == 0) {
        decode_io::store_lse(p, s, sink, r, bad ? CUDART_NAN_F : softmax::natural_lse(m[i], sum));
      }
    }
    __syncthreads();  // the next item overwrites Q, P and the exchange buffers
  }
};

template <typename Cfg, typename Traits>
__global__ void __launch_bounds__(Cfg::kThreads, 1)
    decode_kernel(const __grid_constant__ detail::DecodeProblem p,
                  const __grid_constant__ ScheduleView s) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // Launched as a programmatic dependent of the scheduler: nothing of the schedule or the inputs
  // is read before the previous grid has completed.
  ptx::grid_dependency_wait();
  ptx::launch_dependents();
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t pad = ((raw + 1023u) & ~1023u) - raw;
  DecodeCta<Cfg, Traits> cta{p,
                             s,
                             raw + pad,
                             smem_raw + pad,
                             static_cast<int>(threadIdx.x / 32),
                             static_cast<int>(threadIdx.x % 32),
                             static_cast<int>(blockIdx.y) * Cfg::kRows};
  decode_io::run_partition<Cfg::kRows, Cfg::kThreads, Traits>(p, s, blockIdx.x, cta.row0, cta);
}

}  // namespace mla::cuda::sm90
