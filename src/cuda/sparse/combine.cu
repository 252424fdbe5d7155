// The small kernels around the sparse decode kernel (sparse.h): the header reset before it and,
// for split calls, the combine after it.
//
// Combine: grid (h_q, batch * s_q), 128 threads; CTA (h, bs) merges row h of query token bs
// over its num_splits partials (natural-log LSEs l_i, normalised outputs o_i), thread i owning
// columns [4 i, 4 i + 4):
//   m = max l_i,  Z = sum_i exp(l_i - m),  out = sum_i exp(l_i - m) o_i / Z,  lse = m + ln Z,
// then adds the sink as the unsplit kernel does (add_sink). A split whose range held no selected
// token has l_i = -inf and weight 0 (its o_i, zeros, is not read); a NaN l_i (a bad entry in
// that split, or a bad topk_lengths) makes the row and its lse NaN. Every partial it reads was
// written by this call's decode kernel: each split CTA writes all h_q rows of its slot.
#include <math_constants.h>

#include "cuda/common/check.h"
#include "cuda/common/elem.cuh"
#include "cuda/common/launch.h"
#include "cuda/common/ptx.cuh"
#include "cuda/sparse/sink.cuh"
#include "cuda/sparse/sparse.h"

namespace mla::cuda::sparse {
namespace {

constexpr int kCombineThreads = kHeadDimV / 4;
constexpr int kUnroll = 4;  // partials in flight per thread

__global__ void reset_kernel(const __grid_constant__ detail::SparseDecodeProblem p,
                             const __grid_constant__ View v) {
  // Orders this call after the previous grids on the stream (PDL): their atomics on the error
  // key, and a previous combine's reads of the partials, are done before the key is reset.
  ptx::grid_dependency_wait();
  ptx::launch_dependents();
  WorkspaceHeader& h = *v.header;
  h.error_key = kNoError;
  h.magic = kSparseMagic;
  h.batch = p.batch;
  h.s_q = p.s_q;
  h.h_q = p.h_q;
  h.page_size = p.page_size;
  h.causal = 0;
  h.num_parts = v.num_splits;
}

template <typename Traits>
__global__ void __launch_bounds__(kCombineThreads)
    combine_kernel(const __grid_constant__ detail::SparseDecodeProblem p,
                   const __grid_constant__ View v) {
  using Elem = typename Traits::T;
  // The partials are written by the decode kernel this grid may overlap with (PDL).
  ptx::grid_dependency_wait();
  ptx::launch_dependents();
  const int h = blockIdx.x;
  const int64_t bs = blockIdx.y;
  const int32_t b = static_cast<int32_t>(bs / p.s_q);
  const int32_t s = static_cast<int32_t>(bs - static_cast<int64_t>(b) * p.s_q);
  const int64_t row0 = bs * v.num_splits * p.h_q + h;  // partial row of split 0
  auto lse_of = [&](int i) { return v.partial_lse[row0 + static_cast<int64_t>(i) * p.h_q]; };

  float m = -CUDART_INF_F;
  bool nan = false;
  for (int i = 0; i < v.num_splits; ++i) {
    const float l = lse_of(i);
    nan |= l != l;
    m = fmaxf(m, l);
  }
  float z = 0.0f;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (!nan && m != -CUDART_INF_F) {
    for (int i0 = 0; i0 < v.num_splits; i0 += kUnroll) {
      float w[kUnroll];
      float4 o[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int i = i0 + u;
        const float l = i < v.num_splits ? lse_of(i) : -CUDART_INF_F;
        w[u] = l == -CUDART_INF_F ? 0.0f : expf(l - m);
        o[u] = w[u] == 0.0f ? make_float4(0.0f, 0.0f, 0.0f, 0.0f)
                            : reinterpret_cast<const float4*>(
                                  v.partial_out + (row0 + static_cast<int64_t>(i) * p.h_q) *
                                                      kHeadDimV)[threadIdx.x];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        z += w[u];
        acc.x += w[u] * o[u].x;
        acc.y += w[u] * o[u].y;
        acc.z += w[u] * o[u].z;
        acc.w += w[u] * o[u].w;
      }
    }
  }
  float lse = z > 0.0f ? m + logf(z) : -CUDART_INF_F;
  float factor = z > 0.0f ? 1.0f / z : 0.0f;
  if (p.attn_sink != nullptr) add_sink(p.attn_sink[h * p.attn_sink_stride], lse, factor);
  if (nan) {
    lse = CUDART_NAN_F;
    acc = make_float4(CUDART_NAN_F, CUDART_NAN_F, CUDART_NAN_F, CUDART_NAN_F);
    factor = 1.0f;
  }
  Elem* out = static_cast<Elem*>(p.out) + b * p.out_stride_b + s * p.out_stride_s +
              h * p.out_stride_h + threadIdx.x * 4;
  *reinterpret_cast<uint2*>(out) = make_uint2(Traits::pack(acc.x * factor, acc.y * factor),
                                              Traits::pack(acc.z * factor, acc.w * factor));
  if (threadIdx.x == 0 && p.lse != nullptr) {
    p.lse[b * p.lse_stride_b + s * p.lse_stride_s + h * p.lse_stride_h] = lse;
  }
}

}  // namespace

Status launch_reset(const detail::SparseDecodeProblem& p, const View& v, cudaStream_t stream,
                    bool pdl) {
  return launch_kernel("sparse reset_kernel", &reset_kernel, dim3(1), dim3(1), 0, stream, pdl, p,
                       v);
}

Status launch_combine(const detail::SparseDecodeProblem& p, const View& v, cudaStream_t stream,
                      bool pdl) {
  const dim3 grid(p.h_q, static_cast<unsigned>(static_cast<int64_t>(p.batch) * p.s_q));
  return dispatch_elem(p.dtype, [&](auto traits) {
    return launch_kernel("sparse combine_kernel", &combine_kernel<decltype(traits)>, grid,
                         dim3(kCombineThreads), 0, stream, pdl, p, v);
  });
}

}  // namespace mla::cuda::sparse
