// Workspace layout of the CUDA decode path. Its size depends on (batch, rows = s_q * h_q, number
// of CTA partitions) only, and the partition count on the SM count and the row tile, so an engine
// allocates it once per shape. plan() rewrites the header and the schedule on every step; partial
// results are written and read within one decode_planned().
//
// clang-format off
//   header        WorkspaceHeader              error key, fingerprint of the last plan()
//   prefix        int64 [batch + 1]            cost prefix over requests (in 64-token blocks)
//   lens          int32 [batch]                seq_len, or -1 for a request with a bad seq_len
//   part_begin    int64 [num_parts + 1]        p covers [part_begin[p], part_begin[p+1])
//   part_first    int32 [num_parts]            the request holding the partition's start
//   merges        MergeTask [num_parts]        what p's combine CTAs merge, if anything
//   partial_lse   float [2 * num_parts, rows]  natural-log LSE of each partial
//   partial_out   float [2 * num_parts, rows, 512]  normalised partial outputs
// clang-format on
//
// Every section starts on a 256-byte boundary. Partition p owns partial slots 2p (its first
// request) and 2p + 1 (its last request): only these two can be cut by its range.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "mla/mla.h"

namespace mla::cuda {

// Schedule granularity: one unit of work is 64 consecutive tokens of one request.
inline constexpr int kScheduleBlock = 64;
// Cost, in blocks, charged to each request on top of its blocks: loading its queries, filling the
// pipeline and writing its rows. Empty requests cost only this.
inline constexpr int kRequestOverhead = 2;

// Why a call's rows were written as NaN, kept in bits 32..35 of the error key. The plan errors
// come first: their keys sort below every data error, so they are the ones reported.
enum class DataError : uint32_t {
  kNoPlan = 1,          // decode_planned on a workspace that no plan() prepared
  kStalePlan = 2,       // shapes or a seq_len differ from those of the last plan()
  kNegativeSeqLen = 3,  // value: the seq_len
  kSeqLenTooLong = 4,   // value: the seq_len
  kBadPage = 5,         // value: the block-table position of the bad page id
  kBadKvScale = 6,      // fp8_e4m3's kv_scale_tensor[0] is not finite and > 0; value: 0
  // sparse_decode (src/cuda/sparse/):
  kBadIndex = 7,       // an entry that counts is outside [-1, num_pages * page_size);
                       // value: s * kMaxTopK + k (sparse_index_position)
  kBadTopkLength = 8,  // topk_lengths[b] is outside [0, topk]; value: the length
};

// The value of a kBadIndex key: entry k of query token s (k < kMaxTopK = 4096, s < 16).
__host__ __device__ inline int32_t sparse_index_position(int32_t s, int32_t k) {
  return s * kMaxTopK + k;
}

// Key of a data error: ordered by request first, so an atomicMin keeps the lowest bad request.
__host__ __device__ inline unsigned long long error_key(int32_t request, DataError reason,
                                                        int32_t value) {
  return (static_cast<unsigned long long>(request) << 36) |
         (static_cast<unsigned long long>(reason) << 32) | static_cast<uint32_t>(value);
}
// Key of a plan error: request 0 with the reasons that sort first; `value` is the request whose
// seq_len changed, or -1 (shapes, or no plan).
__host__ __device__ inline unsigned long long plan_error_key(DataError reason, int32_t value) {
  return error_key(0, reason, value);
}
inline constexpr unsigned long long kNoError = ~0ull;

// An error key taken apart (the inverse of error_key).
struct ErrorInfo {
  int32_t request;
  DataError reason;
  int32_t value;
};
__host__ __device__ inline ErrorInfo decode_error_key(unsigned long long key) {
  return ErrorInfo{static_cast<int32_t>(key >> 36), static_cast<DataError>((key >> 32) & 0xf),
                   static_cast<int32_t>(key & 0xffffffffu)};
}
__host__ __device__ inline bool is_plan_error(unsigned long long key) {
  const DataError reason = decode_error_key(key).reason;
  return key != kNoError && (reason == DataError::kNoPlan || reason == DataError::kStalePlan);
}

// The split request whose first cut lies at the end of partition p: its splits are partitions
// first = p .. last, and split p's partial sits in slot first_slot (later splits q in slot 2q).
// request = -1: nothing to merge. One 16-byte load for the combine kernel.
struct alignas(16) MergeTask {
  int32_t request;
  int32_t last;
  int32_t first_slot;
  int32_t unused;
};

// Written by plan() ("mla-plan"); any other value means no plan() prepared this workspace.
inline constexpr unsigned long long kPlanMagic = 0x6e616c702d616c6dull;
// Written by sparse_decode() ("mla-sprs"): its error key is this call's, but the workspace holds
// no dense plan (decode_planned on it reports kNoPlan).
inline constexpr unsigned long long kSparseMagic = 0x737270732d616c6dull;

// The header: the error key, and the fingerprint of the last plan() (its shapes and partition
// count). decode_planned compares the fingerprint with its own call once per CTA, and each
// request's planned seq_len (lens) with the current one where it touches the request.
struct WorkspaceHeader {
  unsigned long long error_key;  // kNoError or the key of the first error (see DataError)
  unsigned long long magic;      // kPlanMagic once a plan() has run
  int32_t batch, s_q, h_q, page_size, causal, num_parts;
};

inline constexpr size_t align256(size_t n) { return (n + 255) / 256 * 256; }

struct WorkspaceLayout {
  int32_t num_parts = 0;  // CTA partitions of the KV work (per row tile)
  size_t prefix = 0, lens = 0, part_begin = 0, part_first = 0, merges = 0, partial_lse = 0,
         partial_out = 0;
  size_t bytes = 0;

  static WorkspaceLayout make(int32_t batch, int32_t rows, int32_t num_parts) {
    WorkspaceLayout l;
    l.num_parts = num_parts;
    const size_t slots = 2 * static_cast<size_t>(num_parts);
    l.prefix = align256(sizeof(WorkspaceHeader));
    l.lens = l.prefix + align256(sizeof(int64_t) * (static_cast<size_t>(batch) + 1));
    l.part_begin = l.lens + align256(sizeof(int32_t) * static_cast<size_t>(batch));
    l.part_first = l.part_begin + align256(sizeof(int64_t) * (static_cast<size_t>(num_parts) + 1));
    l.merges = l.part_first + align256(sizeof(int32_t) * static_cast<size_t>(num_parts));
    l.partial_lse = l.merges + align256(sizeof(MergeTask) * static_cast<size_t>(num_parts));
    l.partial_out = l.partial_lse + align256(sizeof(float) * slots * rows);
    l.bytes = l.partial_out + align256(sizeof(float) * slots * rows * kHeadDimV);
    return l;
  }
};

// Device-side view of one workspace, shared by the scheduler, decode and combine kernels.
struct ScheduleView {
  WorkspaceHeader* header;
  int64_t* prefix;      // [batch + 1]
  int32_t* lens;        // [batch]
  int64_t* part_begin;  // [num_parts + 1]
  int32_t* part_first;  // [num_parts]
  MergeTask* merges;    // [num_parts]
  float* partial_lse;   // [2 * num_parts, rows]
  float* partial_out;   // [2 * num_parts, rows, 512]
  int32_t num_parts;

  static ScheduleView make(void* workspace, const WorkspaceLayout& l) {
    char* base = static_cast<char*>(workspace);
    return ScheduleView{reinterpret_cast<WorkspaceHeader*>(base),
                        reinterpret_cast<int64_t*>(base + l.prefix),
                        reinterpret_cast<int32_t*>(base + l.lens),
                        reinterpret_cast<int64_t*>(base + l.part_begin),
                        reinterpret_cast<int32_t*>(base + l.part_first),
                        reinterpret_cast<MergeTask*>(base + l.merges),
                        reinterpret_cast<float*>(base + l.partial_lse),
                        reinterpret_cast<float*>(base + l.partial_out),
                        l.num_parts};
  }
};

}  // namespace mla::cuda
