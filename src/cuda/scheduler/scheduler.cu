// The split-KV schedule. Request b costs n_b = ceil(seq_len_b / 64) blocks plus a fixed
// overhead; the requests' costs are laid end to end, and the total is cut into `num_parts`
// ranges, one per CTA partition (the grid never depends on seq_lens, so a captured CUDA graph
// replays with new lengths). The cuts, equal or on request boundaries, are partition.h's. Within
// request b the overhead comes first, then block k at cost position prefix[b] + kRequestOverhead
// + k. A partition decodes the blocks whose positions fall in its range: long requests may be
// cut across partitions, short ones are packed into one. An empty request (or one with a bad
// seq_len) is written by the partition holding prefix[b].
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda/functional>

#include "cuda/common/check.h"
#include "cuda/common/launch.h"
#include "cuda/common/ptx.cuh"
#include "cuda/scheduler/partition.h"
#include "cuda/scheduler/scheduler.h"

namespace mla::cuda {
namespace {

constexpr int kSchedulerThreads = 256;

__global__ void __launch_bounds__(kSchedulerThreads)
    schedule_kernel(const __grid_constant__ detail::DecodeProblem p,
                    const __grid_constant__ ScheduleView s) {
  using Scan = cub::BlockScan<int64_t, kSchedulerThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int64_t carry;
  const int tid = threadIdx.x;
  // seq_lens may come from the previous kernel on the stream; the decode kernel waits for this
  // grid in turn, so it may start launching now.
  ptx::grid_dependency_wait();
  ptx::launch_dependents();
  const int32_t batch = p.batch;
  const int64_t capacity = static_cast<int64_t>(p.max_pages) * p.page_size;
  if (tid == 0) {
    // The fingerprint decode_planned checks (workspace.h).
    WorkspaceHeader& h = *s.header;
    h.error_key = kNoError;
    h.magic = kPlanMagic;
    h.batch = batch;
    h.s_q = p.s_q;
    h.h_q = p.h_q;
    h.page_size = p.page_size;
    h.causal = p.causal ? 1 : 0;
    h.num_parts = s.num_parts;
    s.prefix[0] = 0;
    carry = 0;
  }
  __syncthreads();

  // Costs and their inclusive prefix, 256 requests at a time.
  for (int32_t base = 0; base < batch; base += kSchedulerThreads) {
    const int32_t b = base + tid;
    int64_t cost = 0;
    if (b < batch) {
      const int32_t len = p.seq_lens[b * p.seq_lens_stride];
      const bool bad = len < 0 || len > capacity;
      if (bad) {
        atomicMin(
            &s.header->error_key,
            error_key(b, len < 0 ? DataError::kNegativeSeqLen : DataError::kSeqLenTooLong, len));
      }
      s.lens[b] = bad ? -1 : len;
      cost = (bad ? 0 : (static_cast<int64_t>(len) + kScheduleBlock - 1) / kScheduleBlock) +
             kRequestOverhead;
    }
    int64_t inclusive, chunk_total;
    Scan(scan_storage).InclusiveSum(cost, inclusive, chunk_total);
    if (b < batch) s.prefix[b + 1] = carry + inclusive;
    __syncthreads();  // every thread has read `carry` and the scan storage
    if (tid == 0) carry += chunk_total;
    __syncthreads();
  }

  const int64_t total = carry;
  const int32_t num_parts = s.num_parts;
  const int64_t part_cost = partition::part_cost(total, num_parts);
  // The prefix written above is visible after the barrier at the end of the loop.
  auto request_at = [&](int64_t pos) { return partition::request_at(s.prefix, batch, pos); };
  auto whole_cut = [&](int32_t q) {
    return partition::whole_cut(s.prefix, batch, total, part_cost, q);
  };
  int64_t widest = 0;
  for (int32_t q = tid; q < num_parts; q += kSchedulerThreads) {
    widest = max(widest, whole_cut(q + 1) - whole_cut(q));
  }
  using Reduce = cub::BlockReduce<int64_t, kSchedulerThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  __shared__ bool whole;
  widest = Reduce(reduce_storage).Reduce(widest, ::cuda::maximum<>{});
  if (tid == 0) whole = partition::use_whole_cuts(widest, part_cost);
  __syncthreads();
  for (int32_t q = tid; q <= num_parts; q += kSchedulerThreads) {
    s.part_begin[q] = whole ? whole_cut(q) : partition::equal_cut(total, part_cost, q);
  }
  __syncthreads();  // part_begin is read back below

  for (int32_t q = tid; q < num_parts; q += kSchedulerThreads) {
    const int64_t start = s.part_begin[q], cut = s.part_begin[q + 1];
    // part_first[q]: the request holding the partition's start (batch when it has no work).
    const int32_t first = start < cut ? request_at(start) : batch;
    s.part_first[q] = first;
    // The request cut at this partition's end, if its blocks begin in this partition (its first
    // cut): partition q's combine CTAs merge it. Only even cuts split requests.
    MergeTask task{-1, 0, 0, 0};
    if (!whole && cut < total) {
      const int32_t b = request_at(cut);
      const int64_t blocks_begin = s.prefix[b] + kRequestOverhead;
      if (blocks_begin < cut && blocks_begin >= start) {
        task.request = b;
        task.last = static_cast<int32_t>((s.prefix[b + 1] - 1) / part_cost);
        task.first_slot = 2 * q + (first == b ? 0 : 1);  // as the decode kernel chose it
      }
    }
    s.merges[q] = task;
  }
}

}  // namespace

Status launch_scheduler(const detail::DecodeProblem& p, const ScheduleView& schedule,
                        cudaStream_t stream, bool pdl) {
  return launch_kernel("schedule_kernel", &schedule_kernel, dim3(1), dim3(kSchedulerThreads), 0,
                       stream, pdl, p, schedule);
}

}  // namespace mla::cuda
