// The CPU fast path of sparse decode: the dense kernels of kernel_impl.h run on gathered tokens.
//
// Work split: a unit is one (request b, query token s, head tile) triple; the heads of a query
// token share its selected tokens, so a head tile (at most 64 heads) reads each of them once.
// Before scheduling, each (b, s) list of entries is compacted to the slots that count (-1 and
// entries beyond topk_lengths[b] dropped, duplicates and order kept). A unit's cost is
//   (padded heads + kConvertRows) * (selected tokens + kUnitOverheadTokens),
// the units are laid end to end and thread i takes the i-th of num_threads equal segments, as in
// decode.cpp: a unit cut by a segment boundary is split along its selected tokens (at multiples
// of kGather), its pieces write base-2 LSE partials to the workspace, and a second pass merges
// them. At most 2 * (num_threads - 1) partials exist, so the workspace depends on shapes and
// threads only.
//
// A piece walks its tokens in chunks of kGather: it copies the chunk's tokens (any slots, any
// page) into a per-thread buffer and runs the dense kernel on it as a one-request, one-query-
// token problem with page_size 1 and an identity block table. The copy moves each token's raw
// bytes (1152 for bf16/fp16, 576 for fp8_e4m3, 656 for fp8_ds_mla) and the chunk's problem keeps
// the cache format and scale, so the dense kernel dequantises fp8 tokens as it does for decode.
// The chunk results are merged by their LSE into the piece's accumulator. Only selected tokens
// are ever read. The sink enters once per row, when the row's final result is written
// (finalize_row).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "core/fp8.h"
#include "core/sparse_backends.h"
#include "core/status.h"
#include "cpu/elem.h"
#include "cpu/fast/cut.h"
#include "cpu/fast/isa.h"
#include "cpu/fast/kernel.h"
#include "cpu/fast/thread_pool.h"

namespace mla::cpu {

using detail::SparseDecodeProblem;

namespace {

// Tokens gathered per kernel call: two KV tiles (221 KiB of bf16), small enough to stay in L2
// while the kernel converts it, large enough that a chunk's fixed work (q conversion, merge) is
// under 1% of its dot products.
constexpr int kGather = 2 * fast::kKvTile;
// Cost model of decode.cpp (one query row x one key units).
constexpr double kConvertRows = 4.0;
constexpr double kUnitOverheadTokens = 16.0;
constexpr int64_t kAlignFloats = 64 / sizeof(float);
constexpr float kLn2 = 0.6931471805599453f;

struct Layout {
  int64_t cap;            // head-tile capacity (padded rows)
  int64_t scratch;        // floats of kernel scratch per thread
  int64_t partial;        // floats per partial
  int64_t gather;         // floats of gather buffer per thread (raw tokens)
  int64_t thread_stride;  // floats per thread: scratch, gather, chunk partial, accumulator
  int64_t num_partials;   // shared split partials
  size_t bytes;
};

Layout layout(int64_t h_q, int num_threads) {
  Layout l;
  l.cap = fast::tile_capacity(h_q);
  l.scratch = fast::round_up(fast::scratch_floats(l.cap), kAlignFloats);
  l.partial = fast::round_up(fast::partial_floats(l.cap), kAlignFloats);
  // Sized for 16-bit tokens, the largest of the formats.
  static_assert(detail::kDsMlaTokenBytes <= 2 * kHeadDimQK);
  l.gather = fast::round_up(int64_t{kGather} * kHeadDimQK / 2, kAlignFloats);
  l.thread_stride = l.scratch + l.gather + 2 * l.partial;
  l.num_partials = 2 * static_cast<int64_t>(num_threads);
  l.bytes = sizeof(float) *
            static_cast<size_t>(l.thread_stride * num_threads + l.partial * l.num_partials);
  return l;
}

// Selected tokens [k0, k1) of the compacted list of (b, s), for heads [h0, h0 + nh). `dest`
// null: the piece is the whole unit and writes out/lse; else its base-2 partial goes there.
struct SparsePiece {
  int32_t b, s, h0, nh;
  int64_t k0, k1;
  float* dest;
};

struct SplitUnit {
  int32_t b, s, h0, nh;
  int64_t first, count;  // partials [first, first + count)
};

struct Schedule {
  std::vector<int32_t> slots;                    // compacted slots of every (b, s), back to back
  std::vector<int64_t> offsets;                  // [batch * s_q + 1] into slots
  std::vector<std::vector<SparsePiece>> pieces;  // per thread
  std::vector<SplitUnit> splits;
  int64_t merge_rows = 0;
};

Status make_schedule(const SparseDecodeProblem& p, const Layout& lay, int num_threads,
                     float* partials, Schedule* out) {
  out->offsets.assign(static_cast<size_t>(p.batch) * p.s_q + 1, 0);
  out->slots.clear();
  for (int32_t b = 0; b < p.batch; ++b) {
    const int32_t n = p.length(b);
    for (int32_t s = 0; s < p.s_q; ++s) {
      const int32_t* idx = p.row_indices(b, s);
      for (int32_t k = 0; k < n; ++k) {
        if (idx[k] != -1) out->slots.push_back(idx[k]);
      }
      out->offsets[static_cast<size_t>(b) * p.s_q + s + 1] =
          static_cast<int64_t>(out->slots.size());
    }
  }

  const int32_t num_tiles = (p.h_q + fast::kMaxTileRows - 1) / fast::kMaxTileRows;
  struct Unit {
    int32_t b, s, h0, nh;
    int64_t len;
    double cost;
  };
  std::vector<Unit> units;
  double total = 0.0;
  for (int32_t b = 0; b < p.batch; ++b) {
    for (int32_t s = 0; s < p.s_q; ++s) {
      const size_t bs = static_cast<size_t>(b) * p.s_q + s;
      const int64_t len = out->offsets[bs + 1] - out->offsets[bs];
      for (int32_t t = 0; t < num_tiles; ++t) {
        const int32_t h0 = static_cast<int32_t>(int64_t{p.h_q} * t / num_tiles);
        const int32_t h1 = static_cast<int32_t>(int64_t{p.h_q} * (t + 1) / num_tiles);
        const double cost = (static_cast<double>(fast::round_up(h1 - h0, 8)) + kConvertRows) *
                            (static_cast<double>(len) + kUnitOverheadTokens);
        units.push_back({b, s, h0, h1 - h0, len, cost});
        total += cost;
      }
    }
  }

  out->pieces.assign(num_threads, {});
  const double segment = total / num_threads;
  int64_t next_partial = 0;
  double begin = 0.0;
  std::vector<std::pair<int, int64_t>> cuts;  // (thread, first token) of each piece
  for (const Unit& u : units) {
    fast::cut_unit(begin, u.cost, u.len, segment, num_threads, kGather, &cuts);
    const int64_t count = static_cast<int64_t>(cuts.size());
    if (count > 1) {
      if (next_partial + count > lay.num_partials) {
        return Status(StatusCode::kInternal, "CPU sparse split schedule exceeds the workspace");
      }
      out->splits.push_back({u.b, u.s, u.h0, u.nh, next_partial, count});
      out->merge_rows += u.nh;
    }
    for (int64_t i = 0; i < count; ++i) {
      const int64_t k1 = i + 1 < count ? cuts[i + 1].second : u.len;
      float* dest = count > 1 ? partials + (next_partial + i) * lay.partial : nullptr;
      out->pieces[cuts[i].first].push_back({u.b, u.s, u.h0, u.nh, cuts[i].second, k1, dest});
    }
    if (count > 1) next_partial += count;
    begin += u.cost;
  }
  return Status();
}

// Writes row (b, s, h) from its normalised output `o` [512] and base-2 LSE, adding the sink:
// Z' = Z + exp(sink), so out scales by Z / Z' and lse = ln Z'. A row with no token (lse2 = -inf)
// gets out = 0 and lse = the sink's logit (-inf without a sink).
void finalize_row(const SparseDecodeProblem& p, int32_t b, int32_t s, int32_t h, const float* o,
                  float lse2) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float lse = lse2 == neg_inf ? neg_inf : lse2 * kLn2;
  float factor = lse2 == neg_inf ? 0.0f : 1.0f;
  if (p.attn_sink != nullptr) {
    const float sink = p.attn_sink[h * p.attn_sink_stride];
    if (lse == neg_inf) {
      lse = sink;
    } else if (sink != neg_inf) {
      const float m = std::max(lse, sink);
      const float total = m + std::log(std::exp(lse - m) + std::exp(sink - m));
      factor = std::exp(lse - total);
      lse = total;
    }
  }
  const int64_t out = b * p.out_stride_b + s * p.out_stride_s + h * p.out_stride_h;
  for (int c = 0; c < kHeadDimV; ++c) {
    store_elem(p.out, out + c, p.dtype, factor == 0.0f ? 0.0f : o[c] * factor);
  }
  if (p.lse != nullptr) p.lse[b * p.lse_stride_b + s * p.lse_stride_s + h * p.lse_stride_h] = lse;
}

// acc = merge(acc, part) for rows [0, nrows) of two partials (normalised rows, base-2 LSE).
void merge_partial(float* acc, const float* part, int32_t nrows, int64_t cap) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int32_t r = 0; r < nrows; ++r) {
    float& la = acc[cap * kHeadDimV + r];
    const float lb = part[cap * kHeadDimV + r];
    if (lb == neg_inf) continue;
    float* a = acc + int64_t{r} * kHeadDimV;
    const float* x = part + int64_t{r} * kHeadDimV;
    if (la == neg_inf) {
      std::memcpy(a, x, sizeof(float) * kHeadDimV);
      la = lb;
      continue;
    }
    const float m = std::max(la, lb);
    const float wa = std::exp2(la - m), wb = std::exp2(lb - m);
    const float inv = 1.0f / (wa + wb);
    for (int c = 0; c < kHeadDimV; ++c) a[c] = (wa * a[c] + wb * x[c]) * inv;
    la = m + std::log2(wa + wb);
  }
}

// Elements of the cache's type per token (bytes for fp8 formats), and the bytes of one element.
int64_t token_elems(detail::KvType type) {
  return type == detail::KvType::kFp8DsMla ? detail::kDsMlaTokenBytes : kHeadDimQK;
}
int64_t elem_bytes(detail::KvType type) { return type == detail::KvType::kHalf ? 2 : 1; }

// The identity block table of the gathered buffer: chunk token t is page t (page_size 1).
const int32_t* identity_table() {
  static const std::vector<int32_t> table = [] {
    std::vector<int32_t> t(kGather);
    for (int i = 0; i < kGather; ++i) t[i] = i;
    return t;
  }();
  return table.data();
}

void run_sparse_piece(const SparseDecodeProblem& p, const Layout& lay, const Schedule& sch,
                      const SparsePiece& pc, const fast::KernelTable& kernels, float* thread_ws) {
  float* scratch = thread_ws;
  char* gathered = reinterpret_cast<char*>(thread_ws + lay.scratch);
  float* chunk = thread_ws + lay.scratch + lay.gather;
  float* acc = pc.dest != nullptr ? pc.dest : chunk + lay.partial;
  const float neg_inf = -std::numeric_limits<float>::infinity();

  // The chunk as a dense problem: one request, one query token, h_q heads, page_size 1, the
  // gathered tokens back to back in the cache's format.
  const int64_t esize = 2;
  const int64_t kv_elem_bytes = elem_bytes(p.kv_type);
  const int64_t row_elems = token_elems(p.kv_type);
  const size_t row_bytes = static_cast<size_t>(row_elems * kv_elem_bytes);
  int32_t chunk_len = 0;
  detail::DecodeProblem d{};
  d.batch = 1;
  d.s_q = 1;
  d.h_q = p.h_q;
  d.page_size = 1;
  d.page_shift = 0;
  d.max_pages = kGather;
  d.num_pages = kGather;
  d.dtype = p.dtype;
  d.scale = p.scale;
  d.causal = false;
  d.q_nope = static_cast<const char*>(p.q_nope) +
             esize * (pc.b * p.q_nope_stride_b + pc.s * p.q_nope_stride_s);
  d.q_nope_stride_h = p.q_nope_stride_h;
  d.q_pe =
      static_cast<const char*>(p.q_pe) + esize * (pc.b * p.q_pe_stride_b + pc.s * p.q_pe_stride_s);
  d.q_pe_stride_h = p.q_pe_stride_h;
  d.kv = gathered;
  d.kv_stride_page = row_elems;
  d.kv_stride_row = row_elems;
  d.kv_type = p.kv_type;
  d.kv_scale = p.kv_scale;  // resolved by the entry point
  d.block_table = identity_table();
  d.seq_lens = &chunk_len;

  const int32_t* slots = sch.slots.data() + sch.offsets[static_cast<size_t>(pc.b) * p.s_q + pc.s];
  const char* cache = static_cast<const char*>(p.kv);
  if (pc.k0 == pc.k1) {  // no selected token: an empty accumulator
    std::memset(acc, 0, sizeof(float) * lay.cap * kHeadDimV);
    std::fill(acc + lay.cap * kHeadDimV, acc + lay.cap * kHeadDimV + pc.nh, neg_inf);
  }
  for (int64_t c0 = pc.k0; c0 < pc.k1; c0 += kGather) {
    chunk_len = static_cast<int32_t>(std::min<int64_t>(kGather, pc.k1 - c0));
    for (int32_t t = 0; t < chunk_len; ++t) {
      std::memcpy(gathered + t * row_bytes, cache + p.slot_offset(slots[c0 + t]) * kv_elem_bytes,
                  row_bytes);
    }
    const bool first = c0 == pc.k0;
    const fast::Piece piece{0, pc.h0, pc.nh, 0, chunk_len, first ? acc : chunk};
    kernels.run_piece(d, piece, scratch);
    if (!first) merge_partial(acc, chunk, pc.nh, lay.cap);
  }
  if (pc.dest != nullptr) return;
  for (int32_t r = 0; r < pc.nh; ++r) {
    finalize_row(p, pc.b, pc.s, pc.h0 + r, acc + int64_t{r} * kHeadDimV,
                 acc[lay.cap * kHeadDimV + r]);
  }
}

// Merges the partials of split rows [r0, r1) of the flattened split-row space and writes them.
void merge_rows(const SparseDecodeProblem& p, const Layout& lay, const Schedule& sch,
                float* partials, int64_t r0, int64_t r1) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> acc(kHeadDimV);
  int64_t base = 0;
  for (const SplitUnit& u : sch.splits) {
    for (int64_t r = std::max<int64_t>(r0 - base, 0); r < std::min<int64_t>(r1 - base, u.nh); ++r) {
      float max_lse = neg_inf;
      for (int64_t i = 0; i < u.count; ++i) {
        max_lse =
            std::max(max_lse, partials[(u.first + i) * lay.partial + lay.cap * kHeadDimV + r]);
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      float sum = 0.0f;
      if (max_lse != neg_inf) {
        for (int64_t i = 0; i < u.count; ++i) {
          const float* part = partials + (u.first + i) * lay.partial;
          const float lse = part[lay.cap * kHeadDimV + r];
          if (lse == neg_inf) continue;
          const float w = std::exp2(lse - max_lse);
          sum += w;
          for (int c = 0; c < kHeadDimV; ++c) acc[c] += w * part[r * kHeadDimV + c];
        }
      }
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      for (int c = 0; c < kHeadDimV; ++c) acc[c] *= inv;
      finalize_row(p, u.b, u.s, u.h0 + static_cast<int32_t>(r), acc.data(),
                   sum > 0.0f ? max_lse + std::log2(sum) : neg_inf);
    }
    base += u.nh;
  }
}

}  // namespace

size_t sparse_workspace_size(const SparseDecodeShape& shape, int num_threads) {
  return layout(shape.h_q, num_threads).bytes;
}

Status sparse_decode(const SparseDecodeProblem& p, void* workspace, size_t workspace_bytes,
                     int num_threads) {
  const Layout lay = layout(p.h_q, num_threads);
  if (workspace_bytes < lay.bytes) {
    return Status(StatusCode::kInternal, "CPU sparse workspace smaller than required");
  }
  float* per_thread = static_cast<float*>(workspace);
  float* partials = per_thread + lay.thread_stride * num_threads;
  Schedule sch;
  MLA_RETURN_IF_ERROR(make_schedule(p, lay, num_threads, partials, &sch));

  const fast::KernelTable& kernels = fast::kernels(fast::selected_isa());
  fast::ThreadPool& pool = fast::ThreadPool::instance();
  pool.run(num_threads, [&](int t) {
    for (const SparsePiece& piece : sch.pieces[t]) {
      run_sparse_piece(p, lay, sch, piece, kernels, per_thread + lay.thread_stride * t);
    }
  });
  pool.run_ranges(num_threads, sch.merge_rows, [&](int64_t begin, int64_t end) {
    merge_rows(p, lay, sch, partials, begin, end);
  });
  return Status();
}

}  // namespace mla::cpu
