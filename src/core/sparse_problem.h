// One validated sparse decode call (mla::sparse_decode), normalised like DecodeProblem: raw
// pointers, int64 element strides, int32 extents. Plain struct, usable from host and kernels.
#pragma once

#include <cstdint>

#include "core/problem.h"

namespace mla::detail {

struct SparseDecodeProblem {
  int32_t batch;
  int32_t s_q;
  int32_t h_q;
  int32_t topk;        // entries per query token, 1..kMaxTopK
  int32_t page_size;   // power of two, 1..256
  int32_t page_shift;  // log2(page_size)
  int32_t num_pages;   // kv_cache.shape[0]
  ElemType dtype;
  float scale;  // softmax scale (natural-log domain)

  const void* q_nope;  // [batch, s_q, h_q, 512]
  int64_t q_nope_stride_b, q_nope_stride_s, q_nope_stride_h;
  const void* q_pe;  // [batch, s_q, h_q, 64]
  int64_t q_pe_stride_b, q_pe_stride_s, q_pe_stride_h;

  const void* kv;  // [num_pages, page_size, 576] (kHalf, kFp8E4M3) or [.., 656] bytes (kFp8DsMla)
  int64_t kv_stride_page, kv_stride_row;  // in elements of kv's type (bytes for fp8)
  KvType kv_type;
  // kFp8E4M3: the scale (kv_scale_ptr == nullptr) or a pointer to it, as in DecodeProblem; the
  // CPU entry point resolves a CPU tensor into kv_scale before dispatch. 1 for the other formats.
  float kv_scale;
  const float* kv_scale_ptr;

  const int32_t* indices;  // [batch, s_q, topk]: slot = page * page_size + offset, -1 = none
  int64_t indices_stride_b, indices_stride_s;
  const int32_t* topk_lengths;  // [batch] or nullptr (all topk entries count)
  int64_t topk_lengths_stride;
  const float* attn_sink;  // [h_q] or nullptr
  int64_t attn_sink_stride;

  void* out;  // [batch, s_q, h_q, 512]
  int64_t out_stride_b, out_stride_s, out_stride_h;
  float* lse;  // [batch, s_q, h_q] or nullptr
  int64_t lse_stride_b, lse_stride_s, lse_stride_h;

  // Entries of request b that count: the first topk_lengths[b] (validated to be in [0, topk]).
  int32_t length(int32_t b) const {
    return topk_lengths != nullptr ? topk_lengths[b * topk_lengths_stride] : topk;
  }
  const int32_t* row_indices(int32_t b, int32_t s) const {
    return indices + b * indices_stride_b + s * indices_stride_s;
  }
  // Element offset (in elements of kv's type) of the cache token at `slot`
  // (0 <= slot < num_pages * page_size).
  int64_t slot_offset(int64_t slot) const {
    return (slot >> page_shift) * kv_stride_page + (slot & (page_size - 1)) * kv_stride_row;
  }
};

}  // namespace mla::detail
