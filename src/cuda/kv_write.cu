// KV cache write (vLLM's concat_and_cache_mla): scatter each new token's 512 latent + 64 RoPE
// values into its paged-cache row. Pure data movement, so one thread moves one 16-byte chunk:
// a 576-element row is 72 chunks (64 from kv_c, 8 from k_pe), and consecutive threads touch
// consecutive chunks of the same row, so loads and stores coalesce. fp8 caches are quantised by
// kv_write_fp8.cu.
#include <cuda_runtime.h>

#include <climits>
#include <string>

#include "core/backends.h"
#include "core/status.h"
#include "cuda/common/check.h"
#include "cuda/common/device.h"
#include "cuda/common/launch.h"
#include "cuda/kv_write.h"

namespace mla::cuda {
namespace {

using detail::KvWriteProblem;

constexpr int kChunkElems = 8;  // 16 bytes of bf16 / fp16
constexpr int kNopeChunks = kHeadDimV / kChunkElems;
constexpr int kRowChunks = kHeadDimQK / kChunkElems;
constexpr int kThreads = 256;

// Slots outside [0, capacity) are skipped: -1 is padding, anything else is a caller bug that
// must not turn into an out-of-bounds write (the CPU path rejects it up front instead).
__global__ void __launch_bounds__(kThreads)
    write_kv_kernel(KvWriteProblem p, int page_shift, int64_t capacity) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= p.num_tokens * kRowChunks) return;
  const int64_t t = i / kRowChunks;
  const int chunk = static_cast<int>(i - t * kRowChunks);
  const int64_t slot = p.slot_mapping[t * p.slot_mapping_stride];
  if (slot < 0 || slot >= capacity) return;
  // validate_kv_write checked that every row base is 16-byte aligned.
  const uint16_t* src =
      chunk < kNopeChunks
          ? static_cast<const uint16_t*>(p.kv_c) + t * p.kv_c_stride + chunk * kChunkElems
          : static_cast<const uint16_t*>(p.k_pe) + t * p.k_pe_stride +
                (chunk - kNopeChunks) * kChunkElems;
  uint16_t* dst = static_cast<uint16_t*>(p.kv) + (slot >> page_shift) * p.kv_stride_page +
                  (slot & (p.page_size - 1)) * p.kv_stride_row + chunk * kChunkElems;
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
}

}  // namespace

Status write_kv_cache(const char* fn, const KvWriteProblem& problem, int device, void* stream) {
  const int64_t blocks = (problem.num_tokens * kRowChunks + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) {
    return Status(StatusCode::kUnsupported, std::string(fn) + ": argument 'slot_mapping': " +
                                                std::to_string(problem.num_tokens) +
                                                " tokens exceed one launch's grid");
  }
  DeviceInfo info;
  MLA_RETURN_IF_ERROR(detail::with_context(fn, device_info(device, &info)));
  MLA_RETURN_IF_ERROR(check_pointer_device(fn, "kv_cache", problem.kv, device));
  DeviceGuard guard(device);
  MLA_RETURN_IF_ERROR(detail::with_context(fn, guard.status()));
  int page_shift = 0;
  while ((1 << page_shift) < problem.page_size) ++page_shift;
  const int64_t capacity = static_cast<int64_t>(problem.num_pages) * problem.page_size;
  if (problem.kv_type != detail::KvType::kHalf) {
    return detail::with_context(
        fn, launch_write_kv_fp8(problem, page_shift, capacity, static_cast<cudaStream_t>(stream)));
  }
  return detail::with_context(
      fn, launch_kernel("write_kv_kernel", &write_kv_kernel, dim3(static_cast<unsigned>(blocks)),
                        dim3(kThreads), 0, static_cast<cudaStream_t>(stream), false, problem,
                        page_shift, capacity));
}

}  // namespace mla::cuda
