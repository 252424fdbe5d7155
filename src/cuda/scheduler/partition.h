// Cuts of the split-KV schedule (scheduler.cu): where each CTA partition's cost range begins.
// Plain host/device functions, so the scheduler kernel and a CPU test share them.
//
// Costs are laid end to end: prefix[b] is where request b begins, prefix[batch] the total.
// Partition p covers [cut(p), cut(p + 1)). Equal cuts give every partition the same share and
// may cut requests; whole-request cuts move each equal cut up to the next request start, so no
// request is cut, and are used when no partition then exceeds the equal share by more than 1/16.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MLA_HOST_DEVICE __host__ __device__
#else
#define MLA_HOST_DEVICE
#endif

namespace mla::cuda::partition {

// The equal share: ceil(total / num_parts), at least 1.
MLA_HOST_DEVICE inline int64_t part_cost(int64_t total, int32_t num_parts) {
  return total == 0 ? 1 : (total + num_parts - 1) / num_parts;
}

// Largest b in [0, batch) with prefix[b] <= pos: the request whose range holds pos < total.
MLA_HOST_DEVICE inline int32_t request_at(const int64_t* prefix, int32_t batch, int64_t pos) {
  int32_t lo = 0, hi = batch - 1;
  while (lo < hi) {
    const int32_t mid = (lo + hi + 1) / 2;
    if (prefix[mid] <= pos) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

MLA_HOST_DEVICE inline int64_t equal_cut(int64_t total, int64_t cost, int32_t p) {
  const int64_t even = static_cast<int64_t>(p) * cost;
  return even < total ? even : total;
}

// Equal cut p moved up to the next request start (or the total).
MLA_HOST_DEVICE inline int64_t whole_cut(const int64_t* prefix, int32_t batch, int64_t total,
                                         int64_t cost, int32_t p) {
  const int64_t even = static_cast<int64_t>(p) * cost;
  if (even >= total) return total;
  const int32_t b = request_at(prefix, batch, even);
  return prefix[b] == even ? even : prefix[b + 1];
}

// Whether whole-request cuts whose largest partition costs `widest` are worth their imbalance:
// writing, re-reading and merging the fp32 partials of cut requests costs more than 1/16.
MLA_HOST_DEVICE inline bool use_whole_cuts(int64_t widest, int64_t cost) {
  return widest <= cost + cost / 16;
}

}  // namespace mla::cuda::partition

#undef MLA_HOST_DEVICE
