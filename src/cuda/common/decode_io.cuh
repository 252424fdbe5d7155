// What every decode kernel shares, whatever its math: the packed-row mapping (row = s * h_q + h),
// cp.async loads of Q rows and KV tokens into any 16-byte-chunk shared-memory layout, the rows of
// requests with no keys, the stores of finished rows (to out / lse, or to a split's fp32 partial)
// and the walk over the work items the scheduler gave a partition.
//
// The shared-memory layout is the caller's: `chunk_addr(row, chunk)` returns the shared address
// of 16-byte chunk `chunk` (0..71) of tile row `row`.
#pragma once

#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>

#include "core/problem.h"
#include "cuda/common/ptx.cuh"
#include "cuda/workspace.h"

namespace mla::cuda::decode_io {

// Keys visible to packed row r of a request with `len` cached tokens; 0 for padding rows past
// s_q * h_q.
__device__ __forceinline__ int32_t visible(const detail::DecodeProblem& p, int r, int32_t len) {
  if (r >= p.s_q * p.h_q) return 0;
  const int32_t sq = r / p.h_q;
  return p.causal ? len - (p.s_q - 1 - sq) : len;
}

// cp.async of packed rows [row0, row0 + kRows) of request b's queries; rows past s_q * h_q are
// zero-filled. One warp per row: 32 lanes copy 512 contiguous bytes per instruction.
template <int kRows, int kWarps, typename Elem, typename ChunkAddr>
__device__ __forceinline__ void load_q(const detail::DecodeProblem& p, int32_t b, int row0,
                                       int warp, int lane, ChunkAddr chunk_addr) {
  const Elem* q_nope = static_cast<const Elem*>(p.q_nope);
  const Elem* q_pe = static_cast<const Elem*>(p.q_pe);
  const int rows = p.s_q * p.h_q;
  for (int rr = warp; rr < kRows; rr += kWarps) {
    const int r = row0 + rr;
    const bool valid = r < rows;
    const int sq = valid ? r / p.h_q : 0;
    const int h = valid ? r - sq * p.h_q : 0;
    const Elem* nope =
        q_nope + b * p.q_nope_stride_b + sq * p.q_nope_stride_s + h * p.q_nope_stride_h;
    const Elem* pe = q_pe + b * p.q_pe_stride_b + sq * p.q_pe_stride_s + h * p.q_pe_stride_h;
    ptx::cp_async_16(chunk_addr(rr, lane), nope + lane * 8, valid);
    ptx::cp_async_16(chunk_addr(rr, lane + 32), nope + (lane + 32) * 8, valid);
    if (lane < 8) ptx::cp_async_16(chunk_addr(rr, 64 + lane), pe + lane * 8, valid);
  }
}

// Page ids of the KV tokens a warp loads for tile [tok, tok + kBlockN) of request b: tokens
// warp + i * kWarps. Dead tokens (at or past tok_end) read entry 0, which every request with work
// has, so the loads are unconditional and their latencies overlap. Kernels load them a tile ahead
// of load_kv, so the page-table read is off the critical path.
template <int kBlockN, int kWarps>
struct KvPages {
  static_assert(kBlockN % kWarps == 0, "every warp loads the same number of tokens");
  static constexpr int kTokens = kBlockN / kWarps;
  int32_t page[kTokens];

  __device__ __forceinline__ void load(const detail::DecodeProblem& p, int32_t b, int64_t tok,
                                       int64_t tok_end, int warp) {
    const int32_t* pages = p.block_table + b * p.block_table_stride;
#pragma unroll
    for (int i = 0; i < kTokens; ++i) {
      const int64_t j = tok + warp + i * kWarps;
      page[i] = __ldg(pages + (j < tok_end ? (j >> p.page_shift) : 0));
    }
  }
};

// cp.async of KV tokens [tok, tok + kBlockN) of request b into tile rows 0..kBlockN-1, with the
// page ids `pages` loaded for the same tile. One warp per token row: 32 lanes copy 512 contiguous
// bytes per instruction. Tokens at or past `tok_end` and tokens on an out-of-range page are
// zero-filled without reading; the latter set `bad` and record the request in the workspace
// error key.
template <int kBlockN, int kWarps, typename Elem, typename ChunkAddr>
__device__ __forceinline__ void load_kv(const detail::DecodeProblem& p, const ScheduleView& s,
                                        int32_t b, int64_t tok, int64_t tok_end, int warp, int lane,
                                        const KvPages<kBlockN, kWarps>& pages, ChunkAddr chunk_addr,
                                        bool& bad) {
  const Elem* kv = static_cast<const Elem*>(p.kv);
#pragma unroll
  for (int i = 0; i < KvPages<kBlockN, kWarps>::kTokens; ++i) {
    const int32_t page = pages.page[i];
    const int t = warp + i * kWarps;
    const int64_t j = tok + t;
    const bool live = j < tok_end;
    const bool in_cache = page >= 0 && page < p.num_pages;
    if (live && !in_cache) {
      if (!bad && lane == 0) {
        atomicMin(&s.header->error_key,
                  error_key(b, DataError::kBadPage, static_cast<int32_t>(j >> p.page_shift)));
      }
      bad = true;
    }
    const bool valid = live && in_cache;
    const Elem* src =
        valid ? kv + page * p.kv_stride_page + (j & (p.page_size - 1)) * p.kv_stride_row : kv;
    ptx::cp_async_16(chunk_addr(t, lane), src + lane * 8, valid);
    ptx::cp_async_16(chunk_addr(t, lane + 32), src + (lane + 32) * 8, valid);
    if (lane < 8) ptx::cp_async_16(chunk_addr(t, 64 + lane), src + (64 + lane) * 8, valid);
  }
}

// Writes rows [row0, row0 + kRows) of a request with no keys: out = 0 and lse = -inf, or NaN
// for a request with bad data. All kThreads threads of the CTA take part.
template <int kRows, int kThreads, typename Traits>
__device__ __forceinline__ void write_empty(const detail::DecodeProblem& p, int32_t b, int row0,
                                            bool bad) {
  using Elem = typename Traits::T;
  const int rows = p.s_q * p.h_q;
  const float fill = bad ? CUDART_NAN_F : 0.0f;
  const uint32_t pair = Traits::pack(fill, fill);
  const uint4 v = make_uint4(pair, pair, pair, pair);
  for (int i = threadIdx.x; i < kRows * (kHeadDimV / 8); i += kThreads) {
    const int r = row0 + i / (kHeadDimV / 8);
    if (r >= rows) continue;
    const int sq = r / p.h_q, h = r - sq * p.h_q;
    Elem* out =
        static_cast<Elem*>(p.out) + b * p.out_stride_b + sq * p.out_stride_s + h * p.out_stride_h;
    reinterpret_cast<uint4*>(out)[i % (kHeadDimV / 8)] = v;
  }
  if (p.lse != nullptr) {
    for (int rr = threadIdx.x; rr < kRows; rr += kThreads) {
      const int r = row0 + rr;
      if (r >= rows) continue;
      const int sq = r / p.h_q, h = r - sq * p.h_q;
      p.lse[b * p.lse_stride_b + sq * p.lse_stride_s + h * p.lse_stride_h] =
          bad ? CUDART_NAN_F : -CUDART_INF_F;
    }
  }
}

// Where a finished row goes: out / lse of request b, or partial slot `slot` of a split request.
struct RowSink {
  int32_t b;
  bool split;
  int slot;
};

// Stores columns col0 + 8 * nt + {0, 1} (nt < kNTiles) of packed row r < s_q * h_q, each
// value(nt, j) times `inv`; NaN for a bad request.
template <int kNTiles, typename Traits, typename Value>
__device__ __forceinline__ void store_row(const detail::DecodeProblem& p, const ScheduleView& s,
                                          const RowSink& sink, int r, int col0, bool bad, float inv,
                                          Value value) {
  using Elem = typename Traits::T;
  if (sink.split) {
    const int64_t prow = static_cast<int64_t>(sink.slot) * (p.s_q * p.h_q) + r;
    float* dst = s.partial_out + prow * kHeadDimV + col0;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      const float v0 = bad ? CUDART_NAN_F : value(nt, 0) * inv;
      const float v1 = bad ? CUDART_NAN_F : value(nt, 1) * inv;
      *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(v0, v1);
    }
  } else {
    const int sq = r / p.h_q, h = r - sq * p.h_q;
    Elem* dst = static_cast<Elem*>(p.out) + sink.b * p.out_stride_b + sq * p.out_stride_s +
                h * p.out_stride_h + col0;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      const float v0 = bad ? CUDART_NAN_F : value(nt, 0) * inv;
      const float v1 = bad ? CUDART_NAN_F : value(nt, 1) * inv;
      *reinterpret_cast<uint32_t*>(dst + nt * 8) = Traits::pack(v0, v1);
    }
  }
}

// Stores the natural-log LSE of packed row r < s_q * h_q (partials always carry one; `lse` is
// optional for the final output).
__device__ __forceinline__ void store_lse(const detail::DecodeProblem& p, const ScheduleView& s,
                                          const RowSink& sink, int r, float lse) {
  if (sink.split) {
    s.partial_lse[static_cast<int64_t>(sink.slot) * (p.s_q * p.h_q) + r] = lse;
  } else if (p.lse != nullptr) {
    const int sq = r / p.h_q, h = r - sq * p.h_q;
    p.lse[sink.b * p.lse_stride_b + sq * p.lse_stride_s + h * p.lse_stride_h] = lse;
  }
}

// The seq_len of request b as the scheduler records it in lens: -1 for a bad one.
__device__ __forceinline__ int32_t recorded_len(const detail::DecodeProblem& p, int32_t b) {
  const int32_t len = p.seq_lens[b * p.seq_lens_stride];
  const int64_t capacity = static_cast<int64_t>(p.max_pages) * p.page_size;
  return len < 0 || len > capacity ? -1 : len;
}

// kNoError when the workspace holds a plan() of this call's shapes and partition count, else the
// plan error key that says why not. Reads the header only, never the schedule behind it, whose
// layout a mismatched plan does not share.
__device__ __forceinline__ unsigned long long check_plan(const detail::DecodeProblem& p,
                                                         const ScheduleView& s) {
  const WorkspaceHeader& h = *s.header;
  if (h.magic != kPlanMagic) return plan_error_key(DataError::kNoPlan, -1);
  const bool same = h.batch == p.batch && h.s_q == p.s_q && h.h_q == p.h_q &&
                    h.page_size == p.page_size && h.causal == (p.causal ? 1 : 0) &&
                    h.num_parts == s.num_parts;
  return same ? kNoError : plan_error_key(DataError::kStalePlan, -1);
}

// Records a plan error. Without a plan the key holds whatever the memory held, so it is
// overwritten (every CTA writes the same value); otherwise the lowest key wins, as for data errors.
__device__ __forceinline__ void record_plan_error(const ScheduleView& s, unsigned long long key) {
  if (decode_error_key(key).reason == DataError::kNoPlan) {
    atomicExch(&s.header->error_key, key);
  } else {
    atomicMin(&s.header->error_key, key);
  }
}

// Walks the work items of partition `part` (cost range [part_begin[part], part_begin[part + 1])
// of the schedule scheduler.cu wrote): for each request whose 64-token blocks intersect the range,
// `item(b, len, tok_begin, tok_end, sink)` decodes tokens [tok_begin, tok_end) (tok_begin a
// multiple of 64); a request with no blocks (empty, or a bad seq_len) whose range starts here gets
// `empty(b, bad)`. An item that covers a whole request writes out / lse; a cut one its partial
// slot: 2 * part for the partition's first request, 2 * part + 1 for its last.
// A request whose seq_len differs from the planned one (a stale plan) is not decoded: the error
// key records it, the partition holding its start writes its rows as NaN, and the combine kernel
// then writes every row of the call as NaN.
template <typename Empty, typename Item>
__device__ __forceinline__ void for_each_item(const detail::DecodeProblem& p, const ScheduleView& s,
                                              int part, Empty&& empty, Item&& item) {
  const int64_t c0 = s.part_begin[part];
  const int64_t c1 = s.part_begin[part + 1];
  if (c0 >= c1) return;
  const int32_t first = s.part_first[part];
  for (int32_t b = first; b < p.batch; ++b) {
    const int64_t begin = s.prefix[b];
    if (begin >= c1) break;
    const int64_t end = s.prefix[b + 1];
    const int64_t blocks_begin = begin + kRequestOverhead;  // cost position of block 0
    const int32_t len = s.lens[b];
    if (len != recorded_len(p, b)) {
      if (threadIdx.x == 0)
        atomicMin(&s.header->error_key, plan_error_key(DataError::kStalePlan, b));
      if (begin >= c0) empty(b, true);
      continue;
    }
    if (end == blocks_begin) {
      if (begin >= c0) empty(b, len < 0);
      continue;
    }
    const int64_t k0 = max(c0, blocks_begin) - blocks_begin;
    const int64_t k1 = min(c1, end) - blocks_begin;
    if (k1 <= k0) continue;  // this range holds only the request's overhead
    const RowSink sink{b, c0 > blocks_begin || c1 < end, 2 * part + (b == first ? 0 : 1)};
    item(b, len, k0 * kScheduleBlock, min(k1 * kScheduleBlock, static_cast<int64_t>(len)), sink);
  }
}

// The body of a decode kernel's CTA: the rows [row0, row0 + kRows) of partition `part`'s work
// items, each handed to cta.run_item(b, len, tok_begin, tok_end, sink), and of the empty
// requests it owns. Checks the plan first (one comparison of the header per CTA): without a
// matching plan(), CTA (part, tile) writes its rows of requests part, part + num_parts, ... as NaN
// instead, so the grid covers every row of the call, and records why.
template <int kRows, int kThreads, typename Traits, typename Cta>
__device__ __forceinline__ void run_partition(const detail::DecodeProblem& p, const ScheduleView& s,
                                              int part, int row0, Cta& cta) {
  if (const unsigned long long key = check_plan(p, s); key != kNoError) {
    if (threadIdx.x == 0) record_plan_error(s, key);
    for (int32_t b = part; b < p.batch; b += s.num_parts) {
      write_empty<kRows, kThreads, Traits>(p, b, row0, true);
    }
    return;
  }
  for_each_item(
      p, s, part,
      [&](int32_t b, bool bad) { write_empty<kRows, kThreads, Traits>(p, b, row0, bad); },
      [&](int32_t b, int32_t len, int64_t tok_begin, int64_t tok_end, const RowSink& sink) {
        cta.run_item(b, len, tok_begin, tok_end, sink);
      });
}

}  // namespace mla::cuda::decode_io
