// The CPU fast path: schedule, split-KV and merge around the per-ISA kernels of kernel_impl.h.
//
// Work split, as on the GPU: each request's query rows (row = s * h_q + h) are cut into row
// tiles of at most 64 rows, so every row of a tile shares each converted KV tile (the cache is
// read once per row tile). A (request, row tile) pair is a unit with a cost of
//   (padded rows + kConvertRows) * (seq_len + kUnitOverheadTokens),
// the units are laid end to end, and thread i takes the i-th of num_threads equal cost
// segments. A unit cut by a segment boundary is split along its keys (at multiples of the KV
// tile); its pieces write normalised fp32 partials plus base-2 LSE to the workspace and a second
// parallel pass merges them into out/lse. Unsplit units write out/lse directly. Each boundary
// splits at most one unit, so at most 2 * (num_threads - 1) partials exist: the workspace size
// depends on shapes and num_threads only.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/backends.h"
#include "cpu/elem.h"
#include "cpu/fast/cut.h"
#include "cpu/fast/isa.h"
#include "cpu/fast/kernel.h"
#include "cpu/fast/thread_pool.h"

namespace mla::cpu {

using detail::DecodeProblem;

namespace {

using fast::Piece;

// Cost model, in units of (one query row x one key): converting a key to fp32 costs about as
// much as 4 rows of dot products, and a unit's fixed work (q conversion, output) about as much
// as 16 keys.
constexpr double kConvertRows = 4.0;
constexpr double kUnitOverheadTokens = 16.0;

constexpr int64_t kAlign = 64;  // bytes; every workspace section starts on a cache line

struct Layout {
  int64_t cap;             // row-tile capacity (padded rows)
  int64_t scratch_stride;  // floats per thread of kernel scratch
  int64_t partial_stride;  // floats per partial
  int64_t num_partials;
  size_t bytes;
};

Layout layout(int64_t rows, int num_threads) {
  Layout l;
  l.cap = fast::tile_capacity(rows);
  l.scratch_stride = fast::round_up(fast::scratch_floats(l.cap), kAlign / sizeof(float));
  l.partial_stride = fast::round_up(fast::partial_floats(l.cap), kAlign / sizeof(float));
  l.num_partials = 2 * static_cast<int64_t>(num_threads);
  l.bytes = sizeof(float) *
            static_cast<size_t>(l.scratch_stride * num_threads + l.partial_stride * l.num_partials);
  return l;
}

// A unit split into several pieces: its partials are [first, first + count) in the workspace.
struct SplitUnit {
  int32_t b, row0, nrows;
  int64_t first, count;
};

struct Schedule {
  std::vector<std::vector<Piece>> pieces;  // per thread
  std::vector<SplitUnit> splits;
  int64_t merge_rows = 0;  // sum of nrows over splits
};

Status make_schedule(const DecodeProblem& p, const Layout& lay, int num_threads, float* partials,
                     Schedule* out) {
  const int32_t rows = p.rows();
  const int32_t num_tiles = (rows + fast::kMaxTileRows - 1) / fast::kMaxTileRows;
  struct Unit {
    int32_t b, row0, nrows;
    int64_t len;
    double cost;
  };
  std::vector<Unit> units;
  units.reserve(static_cast<size_t>(p.batch) * num_tiles);
  double total = 0.0;
  for (int32_t b = 0; b < p.batch; ++b) {
    const int64_t len = p.seq_lens[b * p.seq_lens_stride];
    for (int32_t t = 0; t < num_tiles; ++t) {
      const int32_t row0 = static_cast<int32_t>(int64_t{rows} * t / num_tiles);
      const int32_t row1 = static_cast<int32_t>(int64_t{rows} * (t + 1) / num_tiles);
      const double cost = (static_cast<double>(fast::round_up(row1 - row0, 8)) + kConvertRows) *
                          (static_cast<double>(len) + kUnitOverheadTokens);
      units.push_back({b, row0, row1 - row0, len, cost});
      total += cost;
    }
  }

  out->pieces.assign(num_threads, {});
  const double segment = total / num_threads;
  int64_t next_partial = 0;
  double begin = 0.0;
  std::vector<std::pair<int, int64_t>> cuts;  // (thread, first key) of each piece of a unit
  for (const Unit& u : units) {
    fast::cut_unit(begin, u.cost, u.len, segment, num_threads, fast::kKvTile, &cuts);
    const int64_t count = static_cast<int64_t>(cuts.size());
    if (count > 1) {
      if (next_partial + count > lay.num_partials) {
        return Status(StatusCode::kInternal, "CPU split schedule exceeds the workspace");
      }
      out->splits.push_back({u.b, u.row0, u.nrows, next_partial, count});
      out->merge_rows += u.nrows;
    }
    for (int64_t i = 0; i < count; ++i) {
      const int64_t k1 = i + 1 < count ? cuts[i + 1].second : u.len;
      float* partial = count > 1 ? partials + (next_partial + i) * lay.partial_stride : nullptr;
      out->pieces[cuts[i].first].push_back({u.b, u.row0, u.nrows, cuts[i].second, k1, partial});
    }
    if (count > 1) next_partial += count;
    begin += u.cost;
  }
  return Status();
}

// Merges the partials of split rows [r0, r1) of the flattened split-row space: weights
// 2^(lse_i - max) over parts that saw a key (a -inf part is never read), out = weighted mean,
// lse = ln(sum 2^lse_i). A row no part saw a key for gets out = 0, lse = -inf.
void merge_rows(const DecodeProblem& p, const Layout& lay, const Schedule& sch, float* partials,
                int64_t r0, int64_t r1) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> acc(kHeadDimV);
  int64_t base = 0;
  for (const SplitUnit& u : sch.splits) {
    for (int64_t r = std::max<int64_t>(r0 - base, 0); r < std::min<int64_t>(r1 - base, u.nrows);
         ++r) {
      float max_lse = neg_inf;
      for (int64_t i = 0; i < u.count; ++i) {
        const float* part = partials + (u.first + i) * lay.partial_stride;
        max_lse = std::max(max_lse, part[lay.cap * kHeadDimV + r]);
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      float sum = 0.0f;
      if (max_lse != neg_inf) {
        for (int64_t i = 0; i < u.count; ++i) {
          const float* part = partials + (u.first + i) * lay.partial_stride;
          const float lse = part[lay.cap * kHeadDimV + r];
          if (lse == neg_inf) continue;
          const float w = std::exp2(lse - max_lse);
          sum += w;
          const float* o = part + r * kHeadDimV;
          for (int c = 0; c < kHeadDimV; ++c) acc[c] += w * o[c];
        }
      }
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      const int32_t row = u.row0 + static_cast<int32_t>(r);
      const int32_t s = row / p.h_q, h = row % p.h_q;
      const int64_t o = u.b * p.out_stride_b + s * p.out_stride_s + h * p.out_stride_h;
      for (int c = 0; c < kHeadDimV; ++c) store_elem(p.out, o + c, p.dtype, acc[c] * inv);
      if (p.lse != nullptr) {
        p.lse[u.b * p.lse_stride_b + s * p.lse_stride_s + h * p.lse_stride_h] =
            sum > 0.0f ? (max_lse + std::log2(sum)) * 0.6931471805599453f : neg_inf;
      }
    }
    base += u.nrows;
  }
}

}  // namespace

size_t workspace_size(const DecodeShape& shape, int num_threads) {
  return layout(shape.s_q * shape.h_q, num_threads).bytes;
}

Status decode(const DecodeProblem& p, void* workspace, size_t workspace_bytes, int num_threads) {
  const Layout lay = layout(p.rows(), num_threads);
  if (workspace_bytes < lay.bytes) {
    return Status(StatusCode::kInternal, "CPU workspace smaller than required");
  }
  float* scratch = static_cast<float*>(workspace);
  float* partials = scratch + lay.scratch_stride * num_threads;
  Schedule sch;
  if (Status s = make_schedule(p, lay, num_threads, partials, &sch); !s.ok()) return s;

  const fast::KernelTable& kernels = fast::kernels(fast::selected_isa());
  fast::ThreadPool& pool = fast::ThreadPool::instance();
  pool.run(num_threads, [&](int t) {
    for (const Piece& piece : sch.pieces[t]) {
      kernels.run_piece(p, piece, scratch + lay.scratch_stride * t);
    }
  });
  pool.run_ranges(num_threads, sch.merge_rows, [&](int64_t begin, int64_t end) {
    merge_rows(p, lay, sch, partials, begin, end);
  });
  return Status();
}

}  // namespace mla::cpu
