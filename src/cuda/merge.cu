// Merge of two partial attention results by their natural-log LSEs (chunked prefill, cascade
// attention). A group of threads owns one (token, head) row: every thread derives the two
// weights from the row's LSEs, then the group streams the head_dim values, 16 bytes at a time
// when every row of the three tensors is 16-byte aligned, one element at a time otherwise.
//
// The empty-part rules are those of src/cpu/reference.cpp, bit for bit in the special cases:
// a -inf side has weight exactly 0 and its values are never loaded (so NaN behind it cannot
// leak through 0 * NaN), both -inf gives out = 0 and lse = -inf, and a NaN LSE gives NaN.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <string>

#include "core/backends.h"
#include "core/status.h"
#include "cuda/common/check.h"
#include "cuda/common/device.h"
#include "cuda/common/launch.h"

namespace mla::cuda {
namespace {

using detail::MergeProblem;
using detail::MergeType;

constexpr int kThreads = 256;

template <typename T>
struct Convert;
template <>
struct Convert<float> {
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <>
struct Convert<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};
template <>
struct Convert<__half> {
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};

// kVec elements moved as one aligned unit (16 bytes, or a single element).
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// Threads of one block are split into groups of `group` (a power of two <= 32) lanes, one
// (token, head) row per group.
template <typename T, int kVec>
__global__ void merge_kernel(MergeProblem p, int group) {
  const int64_t rows = p.num_tokens * p.num_heads;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / group;
  if (row >= rows) return;
  const int lane = threadIdx.x & (group - 1);
  const int64_t t = row / p.num_heads;
  const int64_t h = row - t * p.num_heads;

  const float la = p.lse_a[t * p.lse_a_stride_t + h * p.lse_a_stride_h];
  const float lb = p.lse_b[t * p.lse_b_stride_t + h * p.lse_b_stride_h];
  float wa = 0.0f, wb = 0.0f, lse = -INFINITY;
  if (isnan(la) || isnan(lb)) {
    wa = wb = lse = NAN;
  } else if (la != -INFINITY || lb != -INFINITY) {
    // Weights relative to the larger LSE, so the exponentials never overflow.
    const float m = fmaxf(la, lb);
    wa = la == -INFINITY ? 0.0f : expf(la - m);
    wb = lb == -INFINITY ? 0.0f : expf(lb - m);
    const float sum = wa + wb;
    lse = m + logf(sum);
    wa /= sum;
    wb /= sum;
  }

  using P = Pack<T, kVec>;
  const T* a = static_cast<const T*>(p.out_a) + t * p.out_a_stride_t + h * p.out_a_stride_h;
  const T* b = static_cast<const T*>(p.out_b) + t * p.out_b_stride_t + h * p.out_b_stride_h;
  T* o = static_cast<T*>(p.out) + t * p.out_stride_t + h * p.out_stride_h;
  for (int d = lane * kVec; d < p.head_dim; d += group * kVec) {
    float acc[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[i] = 0.0f;
    if (wa != 0.0f) {
      const P va = *reinterpret_cast<const P*>(a + d);
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[i] += wa * Convert<T>::load(va.v[i]);
    }
    if (wb != 0.0f) {
      const P vb = *reinterpret_cast<const P*>(b + d);
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc[i] += wb * Convert<T>::load(vb.v[i]);
    }
    P r;
#pragma unroll
    for (int i = 0; i < kVec; ++i) r.v[i] = Convert<T>::store(acc[i]);
    *reinterpret_cast<P*>(o + d) = r;
  }
  if (lane == 0 && p.lse != nullptr) {
    p.lse[t * p.lse_stride_t + h * p.lse_stride_h] = lse;
  }
}

bool aligned_16(const void* ptr, int64_t stride_t, int64_t stride_h, int64_t esize) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && (stride_t * esize) % 16 == 0 &&
         (stride_h * esize) % 16 == 0;
}

template <typename T>
Status launch(const char* fn, const MergeProblem& p, cudaStream_t stream) {
  constexpr int kVec16 = static_cast<int>(16 / sizeof(T));
  const int64_t esize = sizeof(T);
  const bool vec = (p.head_dim * esize) % 16 == 0 &&
                   aligned_16(p.out_a, p.out_a_stride_t, p.out_a_stride_h, esize) &&
                   aligned_16(p.out_b, p.out_b_stride_t, p.out_b_stride_h, esize) &&
                   aligned_16(p.out, p.out_stride_t, p.out_stride_h, esize);
  const int vec_elems = vec ? kVec16 : 1;
  // Enough lanes per row to cover head_dim in one pass where possible, at most a warp.
  const int64_t units = (p.head_dim + vec_elems - 1) / vec_elems;
  int group = 1;
  while (group < 32 && group < units) group *= 2;
  const int64_t rows_per_block = kThreads / group;
  const int64_t blocks = (p.num_tokens * p.num_heads + rows_per_block - 1) / rows_per_block;
  if (blocks > INT_MAX) {
    return Status(StatusCode::kUnsupported,
                  std::string(fn) + ": argument 'out_a': " + std::to_string(p.num_tokens) + " x " +
                      std::to_string(p.num_heads) + " rows exceed one launch's grid");
  }
  return detail::with_context(
      fn, launch_kernel("merge_kernel", vec ? &merge_kernel<T, kVec16> : &merge_kernel<T, 1>,
                        dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0, stream, false, p,
                        group));
}

}  // namespace

Status merge_states(const char* fn, const MergeProblem& problem, int device, void* stream) {
  DeviceInfo info;
  MLA_RETURN_IF_ERROR(detail::with_context(fn, device_info(device, &info)));
  MLA_RETURN_IF_ERROR(check_pointer_device(fn, "out", problem.out, device));
  DeviceGuard guard(device);
  MLA_RETURN_IF_ERROR(detail::with_context(fn, guard.status()));
  const auto s = static_cast<cudaStream_t>(stream);
  switch (problem.dtype) {
    case MergeType::kBFloat16:
      return launch<__nv_bfloat16>(fn, problem, s);
    case MergeType::kFloat16:
      return launch<__half>(fn, problem, s);
    case MergeType::kFloat32:
      return launch<float>(fn, problem, s);
  }
  return Status(StatusCode::kInternal, std::string(fn) + ": unknown dtype");
}

}  // namespace mla::cuda
