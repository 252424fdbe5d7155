// The combine kernel. Grid (num_parts, rows), 8 warps per CTA. A request that the schedule cut
// is cut first at the end of the first partition holding its blocks; the scheduler records it
// as that partition's MergeTask, and CTA (p, r) merges row r of it. So every cut request is
// merged exactly once, the grid is fixed by shapes and SM count, a CTA with nothing to merge
// costs one 16-byte load, and only partial slots that this call's decode kernel wrote are read:
// no uninitialised workspace is ever touched. After a plan error (decode_planned without a matching
// plan(), workspace.h) the kernel writes every row of the call as NaN instead.
//
// Merge (natural-log LSEs l_i, normalised partials o_i): m = max l_i,
//   out = sum_i exp(l_i - m) o_i / sum_i exp(l_i - m),  lse = m + ln(sum_i exp(l_i - m)).
// A split that saw no visible key has l_i = -inf and weight 0 (its o_i is not read); a NaN l_i
// (bad page in that split) makes the row NaN; all splits empty gives out = 0, lse = -inf.
#include <math_constants.h>

#include "cuda/combine/combine.h"
#include "cuda/common/check.h"
#include "cuda/common/decode_io.cuh"
#include "cuda/common/elem.cuh"
#include "cuda/common/launch.h"
#include "cuda/common/ptx.cuh"

namespace mla::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kUnroll = 4;  // partials in flight per warp

template <typename Traits>
__global__ void __launch_bounds__(kWarps * 32)
    combine_kernel(const __grid_constant__ detail::DecodeProblem p,
                   const __grid_constant__ ScheduleView s) {
  using Elem = typename Traits::T;
  __shared__ float4 red[kWarps][kHeadDimV / 4];
  // The partials are written by the decode kernel this grid may overlap with (PDL).
  ptx::grid_dependency_wait();
  ptx::launch_dependents();
  const int32_t part = blockIdx.x;
  const int r = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rows = p.s_q * p.h_q;
  if (is_plan_error(s.header->error_key)) {
    // No matching plan(): the schedule is not this call's, so nothing of it is read. CTA (p, r)
    // writes row r of requests p, p + num_parts, ... as NaN, which covers every row of the call.
    for (int32_t b = part; b < p.batch; b += s.num_parts) {
      decode_io::write_empty<1, kWarps * 32, Traits>(p, b, r, true);
    }
    return;
  }
  const MergeTask task = s.merges[part];
  if (task.request < 0) return;
  const int32_t b = task.request;
  const int32_t first = part, last = task.last;
  auto slot_of = [&](int32_t q) { return q == first ? task.first_slot : 2 * q; };
  auto lse_of = [&](int32_t q) {
    return s.partial_lse[static_cast<int64_t>(slot_of(q)) * rows + r];
  };

  // One pass of online log-sum-exp over the splits' LSEs per lane, then across the warp; every
  // warp does it itself (the LSEs are few and cached) to skip a barrier.
  float m = -CUDART_INF_F, sum = 0.0f;
  bool nan = false;
  for (int32_t q = first + lane; q <= last; q += 32) {
    const float l = lse_of(q);
    nan |= l != l;
    if (l > m) {
      sum = sum * __expf(m - l) + 1.0f;  // m = -inf: sum is 0, exp(-inf) = 0
      m = l;
    } else if (l != -CUDART_INF_F) {
      sum += __expf(l - m);
    }
  }
  nan = __any_sync(0xffffffffu, nan);
  for (int o = 16; o > 0; o /= 2) {
    const float m_o = __shfl_xor_sync(0xffffffffu, m, o);
    const float sum_o = __shfl_xor_sync(0xffffffffu, sum, o);
    const float m_new = fmaxf(m, m_o);
    if (m_new != -CUDART_INF_F) sum = sum * __expf(m - m_new) + sum_o * __expf(m_o - m_new);
    m = m_new;
  }
  if (nan) sum = 0.0f;

  // Warp w sums splits first + w, first + w + kWarps, ...; lane owns columns lane * 4 + 128 k.
  float4 acc[4];
  for (int k = 0; k < 4; ++k) acc[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (sum > 0.0f) {
    const float inv = 1.0f / sum;
    // Partials load unconditionally (every split wrote all its rows; one with no visible key
    // holds zeros), so the loads do not wait for the LSEs that weight them.
    for (int32_t q0 = first + warp; q0 <= last; q0 += kWarps * kUnroll) {
      float w[kUnroll];
      float4 v[kUnroll][4];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int32_t q = q0 + u * kWarps;
        w[u] = 0.0f;
        if (q <= last) {
          const float4* src = reinterpret_cast<const float4*>(
              s.partial_out + (static_cast<int64_t>(slot_of(q)) * rows + r) * kHeadDimV);
#pragma unroll
          for (int k = 0; k < 4; ++k) v[u][k] = src[lane + 32 * k];
          const float l = lse_of(q);
          if (l != -CUDART_INF_F) w[u] = __expf(l - m) * inv;
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (w[u] == 0.0f) continue;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          acc[k].x += w[u] * v[u][k].x;
          acc[k].y += w[u] * v[u][k].y;
          acc[k].z += w[u] * v[u][k].z;
          acc[k].w += w[u] * v[u][k].w;
        }
      }
    }
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) red[warp][lane + 32 * k] = acc[k];
  __syncthreads();

  // Threads 0..127 each sum one float4 column over the warps and write it.
  const int sq = r / p.h_q, h = r - sq * p.h_q;
  if (threadIdx.x < kHeadDimV / 4) {
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float4 x = red[w][threadIdx.x];
      v.x += x.x;
      v.y += x.y;
      v.z += x.z;
      v.w += x.w;
    }
    if (nan) v = make_float4(CUDART_NAN_F, CUDART_NAN_F, CUDART_NAN_F, CUDART_NAN_F);
    Elem* out =
        static_cast<Elem*>(p.out) + b * p.out_stride_b + sq * p.out_stride_s + h * p.out_stride_h;
    *reinterpret_cast<uint2*>(out + threadIdx.x * 4) =
        make_uint2(Traits::pack(v.x, v.y), Traits::pack(v.z, v.w));
  }
  if (threadIdx.x == 0 && p.lse != nullptr) {
    const float lse = nan ? CUDART_NAN_F : sum > 0.0f ? m + logf(sum) : -CUDART_INF_F;
    p.lse[b * p.lse_stride_b + sq * p.lse_stride_s + h * p.lse_stride_h] = lse;
  }
}

}  // namespace

Status launch_combine(const detail::DecodeProblem& p, const ScheduleView& schedule,
                      cudaStream_t stream, bool pdl) {
  const dim3 grid(schedule.num_parts, p.s_q * p.h_q);
  return dispatch_elem(p.dtype, [&](auto traits) {
    return launch_kernel("combine_kernel", &combine_kernel<decltype(traits)>, grid,
                         dim3(kWarps * 32), 0, stream, pdl, p, schedule);
  });
}

}  // namespace mla::cuda
