// The CUDA sparse decode path (mla::sparse_decode): its schedule, workspace and launches.
//
// A call is three launches on the caller's stream, each a programmatic dependent of the one
// before it on sm_90+:
//   reset    (combine.cu)   one thread: the workspace header's error key -> kNoError, magic ->
//                           kSparseMagic, so check_data_errors() reports this call's errors;
//   decode   (kernel.cuh)   one CTA per (query token, head tile, split): gathers its entries of
//                           the top-k list and writes out / lse, or a split's fp32 partial;
//   combine  (combine.cu)   only when the call is split: merges each row's partials by their LSE
//                           and adds the sink.
// The split count depends on shapes and the device only (schedule()), never on indices or
// topk_lengths, so the workspace and every grid are fixed by shapes and a call is capturable in a
// CUDA graph.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/sparse_problem.h"
#include "cuda/workspace.h"
#include "mla/mla.h"

namespace mla::cuda::sparse {

// Splits carry at least this many gather tiles. One: a batch-1 call (topk 2048, 32-entry tiles)
// then spreads over 64 SMs, each gathering its 32 tokens in one round trip, where two tiles a
// split would leave half of those SMs idle for a second round trip on each of the others.
inline constexpr int kMinTilesPerSplit = 1;

// How a call's work is cut, from shapes and the SM count only.
struct Schedule {
  int32_t row_tiles = 1;   // ceil(h_q / rows per CTA)
  int32_t num_splits = 1;  // contiguous ranges of the top-k list per query token
  int32_t span = 0;        // entries per split, a multiple of the tile's entries
};

// Cuts the top-k list of each query token into splits when the unsplit grid (one CTA per query
// token and head tile) has fewer CTAs than the device has SMs (one CTA fits an SM): as many
// splits as fill the SMs, each at least kMinTilesPerSplit tiles of block_n entries long.
inline Schedule schedule(int64_t batch, int64_t s_q, int64_t h_q, int64_t topk, int rows_per_cta,
                         int block_n, int sm_count) {
  Schedule s;
  s.row_tiles = static_cast<int32_t>((h_q + rows_per_cta - 1) / rows_per_cta);
  const int64_t ctas = batch * s_q * s.row_tiles;
  int64_t splits = 1;
  if (ctas > 0 && ctas < sm_count) {
    const int64_t want = (sm_count + ctas - 1) / ctas;
    const int64_t most = (topk + kMinTilesPerSplit * block_n - 1) / (kMinTilesPerSplit * block_n);
    splits = want < most ? want : most;
  }
  const int64_t per_split = (topk + splits - 1) / splits;
  s.span = static_cast<int32_t>((per_split + block_n - 1) / block_n * block_n);
  s.num_splits = static_cast<int32_t>((topk + s.span - 1) / s.span);  // no split starts past topk
  return s;
}

// clang-format off
//   header       WorkspaceHeader                      error key, kSparseMagic
//   partial_lse  float [batch * s_q * splits, h_q]       natural-log LSE of each split's rows
//   partial_out  float [batch * s_q * splits, h_q, 512]  normalised outputs of each split's rows
// clang-format on
// The partials exist only when the call is split. Every section starts on a 256-byte boundary.
struct Layout {
  size_t partial_lse = 0, partial_out = 0, bytes = 0;

  static Layout make(int64_t batch, int64_t s_q, int64_t h_q, const Schedule& s) {
    Layout l;
    const size_t rows =
        s.num_splits > 1 ? static_cast<size_t>(batch * s_q * s.num_splits * h_q) : 0;
    l.partial_lse = align256(sizeof(WorkspaceHeader));
    l.partial_out = l.partial_lse + align256(sizeof(float) * rows);
    l.bytes = l.partial_out + align256(sizeof(float) * rows * kHeadDimV);
    return l;
  }
};

// What the kernels see of the workspace and the schedule.
struct View {
  WorkspaceHeader* header;
  float* partial_lse;  // [batch * s_q * num_splits, h_q]; partial slot (b * s_q + s) * splits + i
  float* partial_out;  // [batch * s_q * num_splits, h_q, 512]
  int32_t row_tiles, num_splits, span;

  static View make(void* workspace, const Layout& l, const Schedule& s) {
    char* base = static_cast<char*>(workspace);
    return View{reinterpret_cast<WorkspaceHeader*>(base),
                reinterpret_cast<float*>(base + l.partial_lse),
                reinterpret_cast<float*>(base + l.partial_out),
                s.row_tiles,
                s.num_splits,
                s.span};
  }
};

// Enqueues the decode kernel of configuration Cfg for element type Traits on a grid of
// batch * s_q * row_tiles * num_splits CTAs (launch.cuh; instantiated by sparse/instances/*.cu).
template <typename Cfg, typename Traits>
Status launch_sparse(const detail::SparseDecodeProblem& problem, const View& view,
                     cudaStream_t stream, bool pdl);
using LaunchFn = Status (*)(const detail::SparseDecodeProblem& problem, const View& view,
                            cudaStream_t stream, bool pdl);

// The reset kernel (before the decode kernel) and the combine kernel (after it, split calls only).
Status launch_reset(const detail::SparseDecodeProblem& problem, const View& view,
                    cudaStream_t stream, bool pdl);
Status launch_combine(const detail::SparseDecodeProblem& problem, const View& view,
                      cudaStream_t stream, bool pdl);

}  // namespace mla::cuda::sparse
