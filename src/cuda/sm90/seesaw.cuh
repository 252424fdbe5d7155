// The second-generation Hopper decode kernel (sm_90a): a producer warpgroup streams KV tiles into
// a two-slot shared-memory ring that completes on mbarriers, one per 64-column box, and two
// consumer warpgroups work on the tiles in a seesaw, so that one warpgroup's softmax overlaps the
// other's tensor-core work and each half of a slot is refilled as soon as its last reader is done.
// No CTA-wide barrier sits in the loop.
//
// One CTA: 64 packed query rows (row = s * h_q + h) of every request of its partition, 384
// threads: warpgroups 0 and 1 consume, warpgroup 2 produces.
//
// A tile is 64 tokens x 576 columns in nine boxes of 64 columns (one 128-byte-swizzled slab
// each). Its boxes fall in two halves by their last reader: "lo" (boxes 0..3, V columns 0..255,
// read last by warpgroup 0) and "hi" (boxes 4..8, V columns 256..511 and RoPE, read last by
// warpgroup 1). Half h of a slot is freed by warpgroup h alone, on the slot's empty[h] mbarrier.
//
// Producer (warpgroup 2). Tile i of a work item (tokens tok_begin + 64 i ...) goes to slot i % 2.
//   page_size >= 8 and a tensor map: warp 0 issues the lo boxes of every tile, warp 1 the hi
//   boxes, each in tile order, each box (one TMA per page of the tile) on its own "full"
//   mbarrier;
//   smaller pages: each of the four warps cp.asyncs 16 of the 64 tokens once both halves are free
//   (dead tokens and bad pages zero-filled, never read), then arrives on all nine "full"
//   barriers once it has issued its next tile (two tiles in flight), or before it would block on
//   a slot the consumers have not freed.
//
// Consumers: tiles A = 2j (slot 0) and B = 2j + 1 (slot 1) form pair j. Running max m and each
// warpgroup's share of the row sum are in the log2 domain. Warpgroup 0 owns output columns
// 0..255 (O_L), warpgroup 1 columns 256..511 (O_R), 64 x 256 fp32 each (128 registers a thread).
// Both halves of slot 0 are freed as soon as softmax B is done, so that tile A' loads while the
// tensor cores finish pair j's P V_B, and each half of slot 1 as soon as its P V_B is done (v8:
// before, slot 0's hi half waited for the pair's end and slot 1's lo half for the next S_A).
//   WG0: S_A = Q K_A^T box by box as the boxes land (lo first); m_A = max(m, rowmax S_A),
//        a_A = 2^(m - m_A), P_A = 2^(S_A - m_A); publish m_A, a_A [sa_ready];
//        O_L = O_L a_A + P_A V_A[:, 0:256] (P_A from registers), P_A to shared meanwhile
//        [pa_ready]; [wait sb_ready] [slot 0 lo free]; O_L = O_L a_B + P_B V_B[:, 0:256] (P_B
//        from shared) [slot 1 lo free].
//   WG1: [slot 1 hi free: the last pair's P V_B_R is done] S_B = Q K_B^T box by box (hi first)
//        alongside WG0's softmax; [wait sa_ready, pa_ready] O_R = O_R a_A + P_A V_A[:, 256:512]
//        (P_A from shared), alongside its softmax: m_B = max(m_A, rowmax S_B), a_B = 2^(m_A - m_B),
//        P_B = 2^(S_B - m_B); publish m_B, a_B [sb_ready]; [slot 0 hi free];
//        O_R = O_R a_B + P_B V_B[:, 256:512] (P_B from registers), P_B to shared meanwhile
//        [pb_ready].
//   Without a B (an odd last tile) WG1 publishes a_B = 1 and m_B = m_A.
// Each hand-over mbarrier completes once per pair (pb_ready once per pair with a B); every
// shared buffer behind one is rewritten only after its reader is done: P_A and m_A, a_A by WG0
// after S_A' completed, which needs slot 0's hi half, freed by WG1 after its P V_A_R (and its
// read of m_A); P_B by WG1 after S_B', which needs slot 1's lo half, freed by WG0 after P V_B_L;
// m_B, a_B by WG1 after sa_ready of the next pair, on which WG0 arrives after reading them. So no
// "free" barriers are needed.
//
// Q: its 512 latent columns in shared memory (cp.async by the consumers, once per item), its 64
// RoPE columns in registers (the A operand of the S k-steps of box 8): Q (64 KB), the ring
// (144 KB) and the two P tiles (16 KB) fill the 227 KB a block may use.
//
// Masking: logits of tokens past a row's visible range are -inf; TMA tiles past seq_len (the
// tail of the last page, which may hold NaN) have their V rows zeroed, after S and before P V,
// by the warpgroup that computed the tile's S, because 0 * NaN = NaN in P V.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/problem.h"
#include "cuda/common/async_copy.cuh"
#include "cuda/common/decode_io.cuh"
#include "cuda/common/elem.cuh"
#include "cuda/common/ptx.cuh"
#include "cuda/common/softmax.cuh"
#include "cuda/common/wgmma.cuh"
#include "cuda/sm90/config.h"
#include "cuda/workspace.h"

namespace mla::cuda::sm90 {

// Register reallocation between warpgroups (sm_90a): every thread of a warpgroup executes it.
// https://docs.nvidia.com/cuda/parallel-thread-execution/#miscellaneous-instructions-setmaxnreg
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// Shared address of 16-byte chunk `chunk` of row `row` in swizzled slabs of `slab_bytes`.
__device__ __forceinline__ uint32_t swizzled(uint32_t base, uint32_t slab_bytes, int row,
                                             int chunk) {
  return base + (chunk >> 3) * slab_bytes + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
}

// Where the KV tiles come from: a tensor map of the cache (page_size >= kMinTmaPageSize) or plain
// addresses (cp.async).
struct KvSource {
  CUtensorMap map;  // 3-D (576 columns, page_size tokens, num_pages), 64 x 64 boxes, 128B swizzle
  int32_t use_tma;
  int32_t evict_first;  // the cache is read by one row tile only: stream it through L2
};

template <typename Traits>
struct SeesawCta {
  using Cfg = SeesawConfig;
  using Elem = typename Traits::T;
  using Smem = Cfg::Smem;
  static constexpr int kORegs = Cfg::kOCols / 2;

  const detail::DecodeProblem& p;
  const ScheduleView& s;
  const KvSource& src;
  Smem& sm;
  uint32_t base;  // shared address of sm
  int row0;
  // Phase parities, a bit mask rather than an array, which a run-time index would put in local
  // memory: bit i of slot i's "full" barriers (consumers), bit empty_bit(slot, half) of its
  // "empty" barriers (producer).
  uint32_t phases = 0;
  // Pairs this CTA has processed, and those with a tile B: the phases of the hand-over
  // mbarriers (each completes once per pair, or once per pair with a B).
  uint32_t pairs = 0, pairs_b = 0;
  uint32_t items = 0;  // work items consumed: the phase of q_ready and sums_ready

  template <typename T>
  __device__ uint32_t addr(const T& member) const {
    return base + static_cast<uint32_t>(reinterpret_cast<const uint8_t*>(&member) -
                                        reinterpret_cast<const uint8_t*>(&sm));
  }

  // ------------------------------------------------------------------------------------------
  // Producer
  // ------------------------------------------------------------------------------------------

  // Bit of `phases` that tracks slot `slot`'s empty[half] barrier (producer side).
  __device__ static constexpr int empty_bit(int slot, int half) { return 2 + 2 * slot + half; }

  // Waits until half `half` of `slot` is free (both halves with half < 0).
  __device__ void wait_free(int slot, int half) {
    for (int h = half < 0 ? 0 : half; h <= (half < 0 ? 1 : half); ++h) {
      const int bit = empty_bit(slot, h);
      async_copy::mbarrier_wait(addr(sm.empty[slot][h]), ((phases >> bit) & 1) ^ 1);
      phases ^= 1u << bit;
    }
  }

  __device__ bool is_free(int slot) const {
    return async_copy::mbarrier_test(addr(sm.empty[slot][0]),
                                     ((phases >> empty_bit(slot, 0)) & 1) ^ 1) &&
           async_copy::mbarrier_test(addr(sm.empty[slot][1]),
                                     ((phases >> empty_bit(slot, 1)) & 1) ^ 1);
  }

  // TMA: loads half `half` (0: boxes 0..3, 1: boxes 4..8) of every tile of item (b, tokens
  // [tok_begin, tok_end)), copy warp `half`, in tile order (the order in which warpgroup `half`
  // frees them). kMultiPage (page_size <
  // 64): a tile is one box of page_size tokens per page holding live tokens and 64-column slab,
  // lane j loading page j's; pages past the live ones are not read. Else one page holds the tile
  // and lane 0 does everything (the producer has 24 registers: the two cases apart do not spill).
  // A bad page loads nothing (the consumers write NaN rows). Page ids are read before waiting for
  // the slot, so that their latency is not on the path from a freed slot to its refill.
  template <bool kMultiPage>
  __device__ void produce_item_tma(int32_t b, int64_t tok_begin, int64_t tok_end, int half,
                                   int lane) {
    // Token positions fit in int32 (seq_len does).
    const int32_t first_tok = static_cast<int32_t>(tok_begin);
    const int32_t end_tok = static_cast<int32_t>(tok_end);
    const int num_tiles = (end_tok - first_tok + Cfg::kBlockN - 1) / Cfg::kBlockN;
    const int32_t* pages = p.block_table + b * p.block_table_stride;
    for (int t = 0; t < num_tiles; ++t) {
      const int slot = t & 1;
      const int32_t tok = first_tok + t * Cfg::kBlockN;
      if constexpr (kMultiPage) {
        // Lane j < live pages holds page j; `bad` the lanes whose page is outside the cache.
        const bool mine = lane * p.page_size < end_tok - tok && lane * p.page_size < Cfg::kBlockN;
        const int32_t my_page = mine ? __ldg(pages + (tok >> p.page_shift) + lane) : 0;
        const unsigned bad =
            __ballot_sync(0xffffffffu, mine && (my_page < 0 || my_page >= p.num_pages));
        const unsigned live = __ballot_sync(0xffffffffu, mine);
        wait_free(slot, half);
        if (lane == 0) {
          if (half == 0) {
            sm.slot_bad[slot][0] = bad != 0;
            if (bad != 0) {
              atomicMin(&s.header->error_key,
                        error_key(b, DataError::kBadPage, (tok >> p.page_shift) + __ffs(bad) - 1));
            }
          }
          // The bytes of every box first, then lane j issues page j's box of each slab.
          for (int box = half == 0 ? 0 : Cfg::kLoBoxes;
               box < (half == 0 ? Cfg::kLoBoxes : Cfg::kSlabs); ++box) {
            if (bad != 0) {
              async_copy::mbarrier_arrive(addr(sm.full[slot][box]));
            } else {
              async_copy::mbarrier_arrive_expect_tx(addr(sm.full[slot][box]),
                                                    __popc(live) * p.page_size * 128);
            }
          }
        }
        __syncwarp();
        if (bad == 0 && mine) {
          for (int box = half == 0 ? 0 : Cfg::kLoBoxes;
               box < (half == 0 ? Cfg::kLoBoxes : Cfg::kSlabs); ++box) {
            async_copy::tma_load_3d(addr(sm.kv[slot][box]) + lane * p.page_size * 128, &src.map,
                                    box * 64, 0, my_page, addr(sm.full[slot][box]), policy());
          }
        }
      } else {
        const int32_t page = __ldg(pages + (tok >> p.page_shift));
        wait_free(slot, half);
        if (lane == 0) {
          const bool bad = page < 0 || page >= p.num_pages;
          if (half == 0) {
            sm.slot_bad[slot][0] = bad;
            if (bad) {
              atomicMin(&s.header->error_key,
                        error_key(b, DataError::kBadPage, tok >> p.page_shift));
            }
          }
          const int32_t row_in_page = tok & (p.page_size - 1);
          for (int box = half == 0 ? 0 : Cfg::kLoBoxes;
               box < (half == 0 ? Cfg::kLoBoxes : Cfg::kSlabs); ++box) {
            const uint32_t full = addr(sm.full[slot][box]);
            if (bad) {
              async_copy::mbarrier_arrive(full);
            } else {
              async_copy::mbarrier_arrive_expect_tx(full, Cfg::kSlabBytes);
              async_copy::tma_load_3d(addr(sm.kv[slot][box]), &src.map, box * 64, row_in_page, page,
                                      full, policy());
            }
          }
        }
      }
      __syncwarp();
    }
  }

  // L2 policy of the KV loads: evict first when one row tile reads the cache (launch.cu), normal
  // when the request's other row tiles read the same pages soon after.
  __device__ uint64_t policy() const {
    return src.evict_first ? async_copy::policy_evict_first() : async_copy::policy_evict_normal();
  }

  // cp.async (pages below kMinTmaPageSize or a cache without a tensor map): copy warp `cw`
  // (0..3) copies tile tokens cw, cw + 4, ... of every tile of the item, both halves, once both
  // are free (dead tokens and bad pages zero-filled, never read).
  __device__ void produce_item_cp_async(int32_t b, int64_t tok_begin, int64_t tok_end, int cw,
                                        int lane, int& pending_slot) {
    const int num_tiles = static_cast<int>((tok_end - tok_begin + Cfg::kBlockN - 1) / Cfg::kBlockN);
    const int32_t* pages = p.block_table + b * p.block_table_stride;
    const Elem* kv = static_cast<const Elem*>(p.kv);
    for (int t = 0; t < num_tiles; ++t) {
      const int slot = t & 1;
      const int64_t tok = tok_begin + static_cast<int64_t>(t) * Cfg::kBlockN;
      // Lane l < 16 loads the page id of this warp's l-th token; dead tokens read entry 0.
      constexpr int kTokens = Cfg::kBlockN / Cfg::kCopyWarps;
      const int64_t jl = tok + cw + Cfg::kCopyWarps * (lane % kTokens);
      const int32_t page_id = __ldg(pages + (jl < tok_end ? (jl >> p.page_shift) : 0));
      const bool lane_bad =
          lane < kTokens && jl < tok_end && (page_id < 0 || page_id >= p.num_pages);
      // The consumers may need the pending tile before they free this slot: publish it before
      // blocking, else two tiles stay in flight.
      if (pending_slot >= 0 && !is_free(slot)) {
        publish_cp_async<0>(pending_slot, lane);
        pending_slot = -1;
      }
      wait_free(slot, -1);
      const uint32_t tile = addr(sm.kv[slot][0][0]);
#pragma unroll 4
      for (int i = 0; i < kTokens; ++i) {
        const int r = cw + Cfg::kCopyWarps * i;
        const int32_t page = __shfl_sync(0xffffffffu, page_id, i);
        const int64_t j = tok + r;
        const bool valid = j < tok_end && page >= 0 && page < p.num_pages;
        const Elem* row =
            valid ? kv + page * p.kv_stride_page + (j & (p.page_size - 1)) * p.kv_stride_row : kv;
        ptx::cp_async_16(swizzled(tile, Cfg::kSlabBytes, r, lane), row + lane * 8, valid);
        ptx::cp_async_16(swizzled(tile, Cfg::kSlabBytes, r, lane + 32), row + (lane + 32) * 8,
                         valid);
        if (lane < 8) {
          ptx::cp_async_16(swizzled(tile, Cfg::kSlabBytes, r, lane + 64), row + (lane + 64) * 8,
                           valid);
        }
      }
      ptx::cp_async_commit();
      const unsigned bad = __ballot_sync(0xffffffffu, lane_bad);
      if (lane == 0) {
        sm.slot_bad[slot][cw] = bad != 0;
        if (bad != 0) {
          // The lowest bad block-table position of this warp's tokens.
          const int64_t j = tok + cw + Cfg::kCopyWarps * (__ffs(bad) - 1);
          atomicMin(&s.header->error_key,
                    error_key(b, DataError::kBadPage, static_cast<int32_t>(j >> p.page_shift)));
        }
      }
      // The previous tile's copies have landed: publish them.
      if (pending_slot >= 0) publish_cp_async<1>(pending_slot, lane);
      pending_slot = slot;
    }
  }

  // Waits for all but kPending of this lane's cp.async groups, makes them visible to the async
  // proxy (wgmma) and arrives on every box barrier of the slot for the warp.
  template <int kPending>
  __device__ void publish_cp_async(int slot, int lane) {
    ptx::cp_async_wait<kPending>();
    wgmma::fence_proxy_async();
    __syncwarp();
    if (lane == 0) {
#pragma unroll
      for (int box = 0; box < Cfg::kSlabs; ++box) {
        async_copy::mbarrier_arrive(addr(sm.full[slot][box]));
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // Consumers
  // ------------------------------------------------------------------------------------------

  // Issues the S = Q K^T k-steps of boxes [kFirst, kLast) of the tile in `slot`, each box after
  // its mbarrier completed, one commit group per box. `start`: the first k-step overwrites S.
  // Boxes 0..7 take Q from shared memory, box 8 (RoPE) from registers.
  template <int kFirst, int kLast>
  __device__ void issue_s(float (&sc)[32], int slot, const uint32_t (&q_rope)[Cfg::kRopeSteps][4],
                          bool start) {
    const uint64_t dq0 = wgmma::desc_sw128(addr(sm.q[0][0]), 16, 1024);
    const uint64_t dk0 = wgmma::desc_sw128(addr(sm.kv[slot][0][0]), 16, 1024);
    const uint32_t parity = (phases >> slot) & 1;
#pragma unroll
    for (int box = kFirst; box < kLast; ++box) {
      async_copy::mbarrier_wait(addr(sm.full[slot][box]), parity);
      wgmma::fence();
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const uint32_t off = box * Cfg::kSlabBytes + k * 32;
        if (box < Cfg::kLatentSlabs) {
          wgmma::wgmma_m64n64k16_ss<Traits::kIsBf16>(sc, wgmma::desc_add(dq0, off),
                                                     wgmma::desc_add(dk0, off),
                                                     !(start && box == kFirst && k == 0));
        } else {
          wgmma::wgmma_m64n64k16_rs<Traits::kIsBf16>(sc, q_rope[k], wgmma::desc_add(dk0, off));
        }
      }
      wgmma::commit_group();
    }
  }

  // O += P V for this warpgroup's 256 columns of the tile in `slot`, P from registers.
  __device__ void issue_pv_rs(float (&o)[kORegs], int slot, int wg, const uint32_t (&pa)[16]) {
    const uint64_t dv0 = wgmma::desc_sw128(addr(sm.kv[slot][4 * wg][0]), Cfg::kSlabBytes, 1024);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < Cfg::kBlockN / 16; ++kk) {
      const uint32_t a[4] = {pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3]};
      wgmma::wgmma_m64n256k16_rs_tb<Traits::kIsBf16>(o, a, wgmma::desc_add(dv0, kk * 16 * 128));
    }
    wgmma::commit_group();
  }

  // O += P V, P from the shared tile `which` (0: P_A, 1: P_B).
  __device__ void issue_pv_ss(float (&o)[kORegs], int slot, int wg, int which) {
    const uint64_t dp0 = wgmma::desc_sw128(addr(sm.p[which][0]), 16, 1024);
    const uint64_t dv0 = wgmma::desc_sw128(addr(sm.kv[slot][4 * wg][0]), Cfg::kSlabBytes, 1024);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < Cfg::kBlockN / 16; ++kk) {
      wgmma::wgmma_m64n256k16_ss_tb<Traits::kIsBf16>(o, wgmma::desc_add(dp0, kk * 32),
                                                     wgmma::desc_add(dv0, kk * 16 * 128));
    }
    wgmma::commit_group();
  }

  // After S of the tile in `slot` (all its boxes waited for): flips the slot's phase, returns its
  // bad-page flag and, for a TMA tile past seq_len, zeroes the V rows of tokens [len - tile_tok,
  // 64) (page tail) and makes the zeros visible to wgmma for the whole warpgroup.
  __device__ bool finish_s(int slot, int64_t tile_tok, int32_t len, int wg_thread, int wg) {
    phases ^= 1u << slot;
    bool bad = false;
#pragma unroll
    for (int w = 0; w < Cfg::kCopyWarps; ++w) bad |= sm.slot_bad[slot][w] != 0;
    if (src.use_tma && tile_tok + Cfg::kBlockN > len) {
      const int first_dead = static_cast<int>(len - tile_tok);
      const int chunks = (Cfg::kBlockN - first_dead) * Cfg::kLatentSlabs * 8;
      for (int i = wg_thread; i < chunks; i += 128) {
        const int row = first_dead + i / (Cfg::kLatentSlabs * 8);
        const int chunk = i % (Cfg::kLatentSlabs * 8);
        const uint32_t a = swizzled(addr(sm.kv[slot][0][0]), Cfg::kSlabBytes, row, chunk);
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(a), "r"(0u) : "memory");
      }
      wgmma::fence_proxy_async();
      async_copy::named_sync(Cfg::kBarWarpGroup0 + wg, 128);
    }
    return bad;
  }

  // This warpgroup is done reading half `half` of `slot`.
  __device__ void release_half(int slot, int half) {
    async_copy::mbarrier_arrive(addr(sm.empty[slot][half]));
  }

  // Scales S to the log2 domain and masks tokens at or past lim[i] (rows g and g + 8); returns
  // the two row maxima of this thread's quad.
  template <bool kMasked>
  __device__ static void scale_mask_max(float (&sc)[32], const int (&lim)[2], int c,
                                        float scale_log2, float (&tile_max)[2]) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -CUDART_INF_F;
#pragma unroll
      for (int nt = 0; nt < Cfg::kBlockN / 8; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          float& v = sc[4 * nt + 2 * i + j];
          if constexpr (kMasked) {
            v = nt * 8 + 2 * c + j < lim[i] ? v * scale_log2 : -CUDART_INF_F;
          } else {
            v *= scale_log2;
          }
          mx = fmaxf(mx, v);
        }
      }
      tile_max[i] = softmax::quad_max(mx);
    }
  }

  __device__ static void tile_max_of(float (&sc)[32], const int (&lim)[2], int c, float scale_log2,
                                     float (&tile_max)[2]) {
    if (__all_sync(0xffffffffu, min(lim[0], lim[1]) >= Cfg::kBlockN)) {
      scale_mask_max<false>(sc, lim, c, scale_log2, tile_max);
    } else {
      scale_mask_max<true>(sc, lim, c, scale_log2, tile_max);
    }
  }

  // P = 2^(S - base) in place, its row sums (this thread's part) added to l.
  __device__ static void exp_rows(float (&sc)[32], const float (&base_)[2], float (&l)[2]) {
#pragma unroll
    for (int nt = 0; nt < Cfg::kBlockN / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        sc[4 * nt + 2 * i] = softmax::exp2(sc[4 * nt + 2 * i] - base_[i]);
        sc[4 * nt + 2 * i + 1] = softmax::exp2(sc[4 * nt + 2 * i + 1] - base_[i]);
        l[i] += sc[4 * nt + 2 * i] + sc[4 * nt + 2 * i + 1];
      }
    }
  }

  // P packed to the A-operand fragments of P V (register 2 nt + i: rows g + 8 i, tokens 8 nt +
  // 2 c, + 1).
  __device__ static void pack_p(const float (&sc)[32], uint32_t (&pa)[16]) {
#pragma unroll
    for (int nt = 0; nt < Cfg::kBlockN / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        pa[2 * nt + i] = Traits::pack(sc[4 * nt + 2 * i], sc[4 * nt + 2 * i + 1]);
      }
    }
  }

  // Packed P to the shared tile `which` (one swizzled slab: row rr, token tok).
  __device__ void store_p(const uint32_t (&pa)[16], int which, int band, int g, int c) {
#pragma unroll
    for (int nt = 0; nt < Cfg::kBlockN / 8; ++nt) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int rr = band + g + 8 * i;
        const int tok = nt * 8 + 2 * c;
        ptx::st_shared_u32(
            addr(sm.p[which][0]) + rr * 128 + (((tok >> 3) ^ (rr & 7)) << 4) + (tok & 7) * 2,
            pa[2 * nt + i]);
      }
    }
  }

  __device__ static void rescale(float (&o)[kORegs], const float (&a)[2]) {
    if (__any_sync(0xffffffffu, a[0] != 1.0f || a[1] != 1.0f)) {
#pragma unroll
      for (int nt = 0; nt < kORegs / 4; ++nt) {
        o[4 * nt] *= a[0];
        o[4 * nt + 1] *= a[0];
        o[4 * nt + 2] *= a[1];
        o[4 * nt + 3] *= a[1];
      }
    }
  }

  // WG1, rows `row` and `row` + 8: waits for m_A, a_A [sa_ready]; m = m_A, l *= a_A.
  __device__ void wg1_take_a(int row, float (&m)[2], float (&l)[2], float (&alpha_a)[2]) {
    async_copy::mbarrier_wait(addr(sm.sa_ready), pairs & 1);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      alpha_a[i] = sm.row_scale[0][row + 8 * i];
      m[i] = sm.row_max[0][row + 8 * i];
      l[i] *= alpha_a[i];
    }
  }

  // WG1, rows `row` and `row` + 8: publishes m_B, a_B [sb_ready].
  __device__ void wg1_publish_b(int row, int c, const float (&m)[2], const float (&alpha_b)[2]) {
    if (c == 0) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        sm.row_max[1][row + 8 * i] = m[i];
        sm.row_scale[1][row + 8 * i] = alpha_b[i];
      }
    }
    async_copy::mbarrier_arrive(addr(sm.sb_ready));
  }

  // Decodes tokens [tok_begin, tok_end) of request b (tok_begin a multiple of 64) for this CTA's
  // rows and stores them to `sink`. Consumer threads only.
  __device__ void consume_item(int32_t b, int32_t len, int64_t tok_begin, int64_t tok_end,
                               const decode_io::RowSink& sink) {
    const int tid = threadIdx.x;
    const int wg = tid / 128, wg_thread = tid % 128;
    const int warp = tid / 32, lane = tid % 32;
    const int g = lane / 4, c = lane % 4;
    const int band = 16 * (warp % 4);
    const int rows = p.s_q * p.h_q;
    const int num_tiles = static_cast<int>((tok_end - tok_begin + Cfg::kBlockN - 1) / Cfg::kBlockN);
    const float scale_log2 = p.scale * softmax::kLog2e;

    // Q: latent columns to shared memory (cp.async), RoPE columns to registers.
    {
      const Elem* q_nope = static_cast<const Elem*>(p.q_nope);
      for (int i = tid; i < Cfg::kRows * Cfg::kLatentSlabs * 8; i += Cfg::kConsumerThreads) {
        const int rr = i / (Cfg::kLatentSlabs * 8), chunk = i % (Cfg::kLatentSlabs * 8);
        const int r = row0 + rr;
        const bool valid = r < rows;
        const int sq = valid ? r / p.h_q : 0, h = valid ? r - sq * p.h_q : 0;
        const Elem* src_row =
            q_nope + b * p.q_nope_stride_b + sq * p.q_nope_stride_s + h * p.q_nope_stride_h;
        ptx::cp_async_16(swizzled(addr(sm.q[0][0]), Cfg::kSlabBytes, rr, chunk),
                         src_row + chunk * 8, valid);
      }
      ptx::cp_async_commit();
    }
    uint32_t q_rope[Cfg::kRopeSteps][4];
    {
      const Elem* q_pe = static_cast<const Elem*>(p.q_pe);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = row0 + band + g + 8 * i;
        const bool valid = r < rows;
        const int sq = valid ? r / p.h_q : 0, h = valid ? r - sq * p.h_q : 0;
        const uint32_t* pe = reinterpret_cast<const uint32_t*>(
            q_pe + b * p.q_pe_stride_b + sq * p.q_pe_stride_s + h * p.q_pe_stride_h);
#pragma unroll
        for (int kr = 0; kr < Cfg::kRopeSteps; ++kr) {
          q_rope[kr][i] = valid ? __ldg(pe + kr * 8 + c) : 0u;
          q_rope[kr][2 + i] = valid ? __ldg(pe + kr * 8 + 4 + c) : 0u;
        }
      }
    }
    ptx::cp_async_wait<0>();
    wgmma::fence_proxy_async();
    // Both warpgroups have loaded Q and are done with the last item's Q and row sums.
    async_copy::mbarrier_arrive(addr(sm.q_ready));
    async_copy::mbarrier_wait(addr(sm.q_ready), items & 1);

    int32_t vis[2];  // keys visible to rows band + g and band + g + 8
#pragma unroll
    for (int i = 0; i < 2; ++i) vis[i] = decode_io::visible(p, row0 + band + g + 8 * i, len);

    float m[2] = {-CUDART_INF_F, -CUDART_INF_F};
    float l[2] = {0.0f, 0.0f};
    float o[kORegs];
#pragma unroll
    for (int i = 0; i < kORegs; ++i) o[i] = 0.0f;
    bool bad = false;
    // WG1: its P V_B_R of the last pair still reads slot 1's hi half, freed once it completes.
    bool release_b = false;

    for (int t = 0; t < num_tiles; t += 2) {
      const bool has_b = t + 1 < num_tiles;
      const int64_t own_tok = tok_begin + static_cast<int64_t>(t + wg) * Cfg::kBlockN;
      int lim[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        lim[i] = static_cast<int>(max(int64_t{0}, min(int64_t{Cfg::kBlockN}, vis[i] - own_tok)));
      }
      float sc[32];
      uint32_t pa[16];
      if (wg == 0) {
        // ---- WG0: S_A, softmax, P_A V_A_L, then P_B V_B_L ----
        issue_s<0, Cfg::kLoBoxes>(sc, 0, q_rope, true);
        issue_s<Cfg::kLoBoxes, Cfg::kSlabs>(sc, 0, q_rope, false);
        wgmma::wait_group<0>();
        wgmma::fence_operands(sc);
        bad |= finish_s(0, own_tok, len, wg_thread, wg);
        float tile_max[2], base_[2], alpha[2];
        tile_max_of(sc, lim, c, scale_log2, tile_max);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const float m_new = fmaxf(m[i], tile_max[i]);
          base_[i] = softmax::exp_base(m_new);
          alpha[i] = softmax::exp2(m[i] - base_[i]);
          m[i] = m_new;
          l[i] *= alpha[i];
        }
        exp_rows(sc, base_, l);
        if (c == 0) {
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            sm.row_max[0][band + g + 8 * i] = m[i];
            sm.row_scale[0][band + g + 8 * i] = alpha[i];
          }
        }
        async_copy::mbarrier_arrive(addr(sm.sa_ready));
        pack_p(sc, pa);
        rescale(o, alpha);
        issue_pv_rs(o, 0, 0, pa);
        // P_A (at the scale of m_A) for WG1's P V_A_R, stored while P V_A_L runs.
        store_p(pa, 0, band, g, c);
        wgmma::fence_proxy_async();
        async_copy::mbarrier_arrive(addr(sm.pa_ready));
        // m_B and a_B (1 without a B).
        async_copy::mbarrier_wait(addr(sm.sb_ready), pairs & 1);
        float alpha_b[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          alpha_b[i] = sm.row_scale[1][band + g + 8 * i];
          m[i] = sm.row_max[1][band + g + 8 * i];
          l[i] *= alpha_b[i];
        }
        wgmma::wait_group<0>();
        wgmma::fence_operands(o);
        release_half(0, 0);
        if (has_b) {
          rescale(o, alpha_b);
          async_copy::mbarrier_wait(addr(sm.pb_ready), pairs_b & 1);
          // Waited for at once, not behind the next S_A (whose boxes may land late), so that
          // tile B' starts loading as early as it can (v8: 4% less time at h_q <= 64).
          issue_pv_ss(o, 1, 0, 1);
          wgmma::wait_group<0>();
          wgmma::fence_operands(o);
          release_half(1, 0);
        }
      } else {
        // ---- WG1: S_B (hi boxes first) alongside WG0's softmax; P_A V_A_R alongside its own ----
        // The pair with a B and the one without are apart, each with its own waits: ptxas
        // serialises every wgmma when a wait sits in a branch it cannot match to the branch that
        // issued (or when S's registers are written while a P V runs on a path without S).
        wgmma::wait_group<0>();  // the last pair's P V_B_R
        wgmma::fence_operands(o);
        if (release_b) {
          release_half(1, 1);
          release_b = false;
        }
        if (has_b) {
          issue_s<Cfg::kLoBoxes, Cfg::kSlabs>(sc, 1, q_rope, true);
          issue_s<0, Cfg::kLoBoxes>(sc, 1, q_rope, false);
          float alpha_a[2];
          wg1_take_a(band + g, m, l, alpha_a);
          wgmma::wait_group<0>();  // S_B
          wgmma::fence_operands(sc);
          rescale(o, alpha_a);
          async_copy::mbarrier_wait(addr(sm.pa_ready), pairs & 1);
          issue_pv_ss(o, 0, 1, 0);
          bad |= finish_s(1, own_tok, len, wg_thread, wg);
          float tile_max[2], base_[2], alpha_b[2];
          tile_max_of(sc, lim, c, scale_log2, tile_max);
#pragma unroll
          for (int i = 0; i < 2; ++i) {
            const float m_new = fmaxf(m[i], tile_max[i]);
            base_[i] = softmax::exp_base(m_new);
            alpha_b[i] = softmax::exp2(m[i] - base_[i]);
            m[i] = m_new;
            l[i] *= alpha_b[i];
          }
          exp_rows(sc, base_, l);
          wg1_publish_b(band + g, c, m, alpha_b);
          pack_p(sc, pa);
          wgmma::wait_group<0>();  // P V_A_R
          wgmma::fence_operands(o);
          release_half(0, 1);
          rescale(o, alpha_b);
          issue_pv_rs(o, 1, 1, pa);
          store_p(pa, 1, band, g, c);
          wgmma::fence_proxy_async();
          async_copy::mbarrier_arrive(addr(sm.pb_ready));
          release_b = true;
        } else {
          float alpha_a[2];
          wg1_take_a(band + g, m, l, alpha_a);
          rescale(o, alpha_a);
          async_copy::mbarrier_wait(addr(sm.pa_ready), pairs & 1);
          issue_pv_ss(o, 0, 1, 0);
          wg1_publish_b(band + g, c, m, {1.0f, 1.0f});
          wgmma::wait_group<0>();  // P V_A_R
          wgmma::fence_operands(o);
          release_half(0, 1);
        }
      }
      // The hand-over mbarriers complete once per pair (pb_ready once per pair with a B).
      ++pairs;
      if (has_b) ++pairs_b;
    }
    wgmma::wait_group<0>();
    wgmma::fence_operands(o);
    if (release_b) release_half(1, 1);

      // ---- epilogue: row sums of both warpgroups; each stores its 256 columns. A bad page seen by
      // either warpgroup travels as a NaN row sum (a NaN sum from NaN inputs gives NaN rows
      // anyway).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float sum = softmax::quad_sum(l[i]);
      if (c == 0) sm.row_sum[wg][band + g + 8 * i] = bad ? CUDART_NAN_F : sum;
    }
    async_copy::mbarrier_arrive(addr(sm.sums_ready));
    async_copy::mbarrier_wait(addr(sm.sums_ready), items & 1);
    ++items;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int rr = band + g + 8 * i;
      const float sum = sm.row_sum[0][rr] + sm.row_sum[1][rr];
      const bool bad_row = isnan(sum);
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int r = row0 + rr;
      if (r >= rows) continue;
      decode_io::store_row<Cfg::kOCols / 8, Traits>(
          p, s, sink, r, wg * Cfg::kOCols + 2 * c, bad_row, inv,
          [&](int nt, int j) { return o[4 * nt + 2 * i + j]; });
      if (wg == 0 && c == 0) {
        decode_io::store_lse(p, s, sink, r,
                             bad_row ? CUDART_NAN_F : softmax::natural_lse(m[i], sum));
      }
    }
    // The next item's Q load ends on q_ready, which both warpgroups reach only after these reads.
  }
};

// kSmallPages: page_size < 64, where a TMA tile is one box per page (its own instance, so that
// the extra producer state does not make the 24-register producer of larger pages spill).
template <typename Traits, bool kSmallPages>
__global__ void __launch_bounds__(SeesawConfig::kThreads, 1)
    seesaw_kernel(const __grid_constant__ detail::DecodeProblem p,
                  const __grid_constant__ ScheduleView s, const __grid_constant__ KvSource src) {
#if MLA_HAS_WGMMA
  using Cfg = SeesawConfig;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t pad = ((raw + 1023u) & ~1023u) - raw;
  auto& sm = *reinterpret_cast<Cfg::Smem*>(smem_raw + pad);
  SeesawCta<Traits> cta{p, s, src, sm, raw + pad, static_cast<int>(blockIdx.y) * Cfg::kRows};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int i = 0; i < Cfg::kSlots; ++i) {
#pragma unroll
      for (int box = 0; box < Cfg::kSlabs; ++box) {
        async_copy::mbarrier_init(cta.addr(sm.full[i][box]), src.use_tma ? 1 : Cfg::kCopyWarps);
      }
      async_copy::mbarrier_init(cta.addr(sm.empty[i][0]), 128);
      async_copy::mbarrier_init(cta.addr(sm.empty[i][1]), 128);
#pragma unroll
      for (int w = 0; w < Cfg::kCopyWarps; ++w) sm.slot_bad[i][w] = 0;
    }
    for (uint64_t* bar : {&sm.sa_ready, &sm.sb_ready, &sm.pa_ready, &sm.pb_ready}) {
      async_copy::mbarrier_init(cta.addr(*bar), 128);
    }
    async_copy::mbarrier_init(cta.addr(sm.q_ready), Cfg::kConsumerThreads);
    async_copy::mbarrier_init(cta.addr(sm.sums_ready), Cfg::kConsumerThreads);
    async_copy::mbarrier_init_fence();
  }
  if (warp == Cfg::kProducerWarp && src.use_tma && lane == 0) {
    async_copy::prefetch_tensor_map(&src.map);
  }
  __syncthreads();
  // Launched as a programmatic dependent of the scheduler: nothing of the schedule or the inputs
  // is read before the previous grid has completed.
  ptx::grid_dependency_wait();
  ptx::launch_dependents();
  // Without a matching plan() the consumers write this CTA's rows of requests part,
  // part + num_parts, ... as NaN (decode_io::run_partition) and nothing is loaded.
  if (const unsigned long long key = decode_io::check_plan(p, s); key != kNoError) {
    if (warp >= Cfg::kProducerWarp) return;
    if (threadIdx.x == 0) decode_io::record_plan_error(s, key);
    for (int32_t b = blockIdx.x; b < p.batch; b += s.num_parts) {
      decode_io::write_empty<Cfg::kRows, Cfg::kConsumerThreads, Traits>(p, b, cta.row0, true);
    }
    return;
  }

  if (warp >= Cfg::kProducerWarp) {
    setmaxnreg_dec<Cfg::kProducerRegs>();
    const int cw = warp - Cfg::kProducerWarp;  // copy warp
    if (src.use_tma) {
      // Warp 0 loads the lo half of every tile, warp 1 the hi half.
      if (cw > 1) return;
      decode_io::for_each_item(
          p, s, blockIdx.x, [](int32_t, bool) {},
          [&](int32_t b, int32_t, int64_t tok_begin, int64_t tok_end, const decode_io::RowSink&) {
            cta.template produce_item_tma<kSmallPages>(b, tok_begin, tok_end, cw, lane);
          });
      return;
    }
    int pending_slot = -1;
    decode_io::for_each_item(
        p, s, blockIdx.x, [](int32_t, bool) {},
        [&](int32_t b, int32_t, int64_t tok_begin, int64_t tok_end, const decode_io::RowSink&) {
          cta.produce_item_cp_async(b, tok_begin, tok_end, cw, lane, pending_slot);
        });
    if (pending_slot >= 0) cta.template publish_cp_async<0>(pending_slot, lane);
    return;
  }
  setmaxnreg_inc<Cfg::kConsumerRegs>();
  decode_io::for_each_item(
      p, s, blockIdx.x,
      [&](int32_t b, bool bad) {
        decode_io::write_empty<Cfg::kRows, Cfg::kConsumerThreads, Traits>(p, b, cta.row0, bad);
      },
      [&](int32_t b, int32_t len, int64_t tok_begin, int64_t tok_end,
          const decode_io::RowSink& sink) { cta.consume_item(b, len, tok_begin, tok_end, sink); });
#endif
}

}  // namespace mla::cuda::sm90
