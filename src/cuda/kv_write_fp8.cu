// KV cache write into fp8 caches (docs/kv_formats.md): each new token's 512 latent + 64 RoPE
// values quantised into its cache row, byte for byte what the CPU quantiser (cpu/reference.cpp)
// stores: the same fp32 division, the same e4m3 rounding (round to nearest even, saturating at
// +-448, core/fp8.h) and, for fp8_ds_mla, the same block scales (core/fp8.h's ds_mla_scale over
// the finite values' absolute maximum) and bf16 RoPE rounding (core/half.h).
//
// One warp per token: lane l converts the 8-value chunks l and l + 32 of the latent part (chunk c
// covers values [8c, 8c + 8), so a 128-value fp8_ds_mla block is the chunks of 16 consecutive
// lanes and its absolute maximum is a reduction within each half-warp), and lanes 0..7 the RoPE
// chunks. Loads are 16 bytes of bf16 / fp16, stores 8 bytes of codes (16 bytes of bf16 RoPE).
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "core/fp8.h"
#include "core/half.h"
#include "cuda/common/launch.h"
#include "cuda/kv_write.h"

namespace mla::cuda {
namespace {

using detail::KvType;
using detail::KvWriteProblem;

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kChunk = 8;  // values per lane and step

// The 8 values of a 16-byte chunk of bf16 / fp16, exactly as fp32 (NaN payloads too).
template <detail::ElemType kType>
__device__ __forceinline__ void load_chunk(const void* base, int64_t offset, float (&x)[kChunk]) {
  const uint4 v = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + offset);
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint16_t lo = static_cast<uint16_t>(w[i]), hi = static_cast<uint16_t>(w[i] >> 16);
    if (kType == detail::ElemType::kBFloat16) {
      x[2 * i] = detail::bf16_to_float(lo);
      x[2 * i + 1] = detail::bf16_to_float(hi);
    } else {
      // core/half.h's conversion, not __half2float, which turns every NaN into one canonical
      // pattern: a NaN RoPE value keeps its payload in the bf16 it is stored as, as on the CPU.
      x[2 * i] = detail::fp16_to_float(lo);
      x[2 * i + 1] = detail::fp16_to_float(hi);
    }
  }
}

// e4m3(x / scale) of 8 values, code i in byte i.
__device__ __forceinline__ uint2 quantize_chunk(const float (&x)[kChunk], float scale) {
  uint32_t w[2] = {0, 0};
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    w[i / 4] |= static_cast<uint32_t>(detail::float_to_fp8_e4m3(x[i] / scale)) << (8 * (i % 4));
  }
  return make_uint2(w[0], w[1]);
}

// Largest finite |x| of a chunk (0 when none is finite), as the CPU quantiser counts it.
__device__ __forceinline__ float finite_amax(const float (&x)[kChunk]) {
  float a = 0.0f;
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    if (isfinite(x[i])) a = fmaxf(a, fabsf(x[i]));
  }
  return a;
}

// Max over the 16 lanes of a half-warp (the lanes holding one fp8_ds_mla block).
__device__ __forceinline__ float half_warp_max(float v) {
#pragma unroll
  for (int off = 1; off < 16; off <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

template <KvType kKv, detail::ElemType kType>
__global__ void __launch_bounds__(kThreads)
    write_kv_fp8_kernel(KvWriteProblem p, int page_shift, int64_t capacity) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (t >= p.num_tokens) return;
  const int64_t slot = p.slot_mapping[t * p.slot_mapping_stride];
  if (slot < 0 || slot >= capacity) return;
  // validate_kv_write checked that every row base is 16-byte aligned.
  uint8_t* dst = static_cast<uint8_t*>(p.kv) + (slot >> page_shift) * p.kv_stride_page +
                 (slot & (p.page_size - 1)) * p.kv_stride_row;

  float lat[2][kChunk];  // latent chunks lane and lane + 32
#pragma unroll
  for (int k = 0; k < 2; ++k)
    load_chunk<kType>(p.kv_c, t * p.kv_c_stride + (lane + 32 * k) * kChunk, lat[k]);
  float rope[kChunk];
  if (lane < kHeadDimRope / kChunk)
    load_chunk<kType>(p.k_pe, t * p.k_pe_stride + lane * kChunk, rope);

  if constexpr (kKv == KvType::kFp8E4M3) {
    const float scale = p.kv_scale_ptr != nullptr ? *p.kv_scale_ptr : p.kv_scale;
    // A device-side scale that is not finite and > 0 (the CPU rejects it with kDataError) cannot
    // be reported from here: the row is written as NaN codes, so a decode of it shows NaN rather
    // than stale or silently wrong values.
    const bool scale_ok = scale > 0.0f && scale <= 3.402823466e38f;
    const uint2 nan_codes = make_uint2(0x7f7f7f7fu, 0x7f7f7f7fu);
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      *reinterpret_cast<uint2*>(dst + (lane + 32 * k) * kChunk) =
          scale_ok ? quantize_chunk(lat[k], scale) : nan_codes;
    }
    if (lane < kHeadDimRope / kChunk) {
      *reinterpret_cast<uint2*>(dst + kHeadDimV + lane * kChunk) =
          scale_ok ? quantize_chunk(rope, scale) : nan_codes;
    }
  } else {
    // Chunk lane is in block lane / 16, chunk lane + 32 in block 2 + lane / 16.
    float scale[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      scale[k] = detail::ds_mla_scale(half_warp_max(finite_amax(lat[k])), p.pow2_scale);
      *reinterpret_cast<uint2*>(dst + (lane + 32 * k) * kChunk) = quantize_chunk(lat[k], scale[k]);
    }
    if (lane % 16 == 0) {
      float* scales = reinterpret_cast<float*>(dst + detail::kDsMlaScaleOffset);
      scales[lane / 16] = scale[0];
      scales[2 + lane / 16] = scale[1];
    }
    if (lane < kHeadDimRope / kChunk) {
      uint32_t w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        w[i] = detail::float_to_bf16(rope[2 * i]) |
               (static_cast<uint32_t>(detail::float_to_bf16(rope[2 * i + 1])) << 16);
      }
      *reinterpret_cast<uint4*>(dst + detail::kDsMlaRopeOffset + lane * 16) =
          make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

// Calls fn(kernel) with the instantiation for the problem's format and element type.
template <typename Fn>
Status dispatch(const KvWriteProblem& p, Fn&& fn) {
  using Kernel = void (*)(KvWriteProblem, int, int64_t);
  const bool bf16 = p.dtype == detail::ElemType::kBFloat16;
  Kernel k;
  if (p.kv_type == KvType::kFp8E4M3) {
    k = bf16 ? &write_kv_fp8_kernel<KvType::kFp8E4M3, detail::ElemType::kBFloat16>
             : &write_kv_fp8_kernel<KvType::kFp8E4M3, detail::ElemType::kFloat16>;
  } else {
    k = bf16 ? &write_kv_fp8_kernel<KvType::kFp8DsMla, detail::ElemType::kBFloat16>
             : &write_kv_fp8_kernel<KvType::kFp8DsMla, detail::ElemType::kFloat16>;
  }
  return fn(k);
}

}  // namespace

Status launch_write_kv_fp8(const KvWriteProblem& p, int page_shift, int64_t capacity,
                           cudaStream_t stream) {
  const int64_t blocks = (p.num_tokens + kWarps - 1) / kWarps;
  if (blocks > INT_MAX) {
    return Status(StatusCode::kUnsupported,
                  "argument 'slot_mapping': " + std::to_string(p.num_tokens) +
                      " tokens exceed one launch's grid");
  }
  return dispatch(p, [&](auto kernel) {
    return launch_kernel("write_kv_fp8_kernel", kernel, dim3(static_cast<unsigned>(blocks)),
                         dim3(kThreads), 0, stream, false, p, page_shift, capacity);
  });
}

}  // namespace mla::cuda
