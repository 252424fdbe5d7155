// Internal problem descriptions: raw pointers plus int64 element strides, validated and
// normalised by src/core/validate.cpp. Plain structs, usable from host code and CUDA kernels.
#pragma once

#include <cstdint>

namespace mla::detail {

// Element type of q / kv_cache / out (a subset of mla::DType, kept free of the public header so
// kernels can include this file).
enum class ElemType : int32_t { kBFloat16 = 0, kFloat16 = 1 };

// Storage of the KV cache (mla::KvFormat, same values): kHalf in ElemType, or one of the fp8
// layouts of core/fp8.h, addressed in bytes.
enum class KvType : int32_t { kHalf = 0, kFp8E4M3 = 1, kFp8DsMla = 2 };

// One validated decode call. A single 576-wide q is described as q_nope = q, q_pe = q + 512
// with the same strides, so backends see one form.
struct DecodeProblem {
  int32_t batch;
  int32_t s_q;
  int32_t h_q;
  int32_t page_size;   // power of two, 1..256
  int32_t page_shift;  // log2(page_size)
  int32_t max_pages;   // block_table.shape[1]
  int32_t num_pages;   // kv_cache.shape[0]
  ElemType dtype;
  float scale;  // softmax scale (natural-log domain)
  bool causal;

  const void* q_nope;  // [batch, s_q, h_q, 512]
  int64_t q_nope_stride_b, q_nope_stride_s, q_nope_stride_h;
  const void* q_pe;  // [batch, s_q, h_q, 64]
  int64_t q_pe_stride_b, q_pe_stride_s, q_pe_stride_h;

  const void* kv;  // [num_pages, page_size, 576] (kHalf, kFp8E4M3) or [.., 656] bytes (kFp8DsMla)
  int64_t kv_stride_page, kv_stride_row;  // in elements of kv's type (bytes for fp8)
  KvType kv_type;
  // kFp8E4M3: the scale (kv_scale_ptr == nullptr) or a device pointer to it; the CPU entry
  // points resolve a CPU tensor into kv_scale before dispatch. 1 for the other formats.
  float kv_scale;
  const float* kv_scale_ptr;

  const int32_t* block_table;  // [batch, max_pages]
  int64_t block_table_stride;  // between requests
  const int32_t* seq_lens;     // [batch]
  int64_t seq_lens_stride;

  void* out;  // [batch, s_q, h_q, 512]
  int64_t out_stride_b, out_stride_s, out_stride_h;
  float* lse;  // [batch, s_q, h_q] or nullptr
  int64_t lse_stride_b, lse_stride_s, lse_stride_h;

  int32_t rows() const { return s_q * h_q; }  // query rows per request, packed s * h_q + h
};

// Keys visible to query token s of a request with seq_len cached tokens (spec section 1).
inline constexpr int64_t visible_keys(int64_t seq_len, int32_t s, int32_t s_q, bool causal) {
  return causal ? seq_len - (s_q - 1 - s) : seq_len;
}

struct KvWriteProblem {
  int64_t num_tokens;
  int32_t page_size;
  int32_t num_pages;
  ElemType dtype;  // of kv_c and k_pe (and of kv for kHalf)
  KvType kv_type;
  float kv_scale;  // as in DecodeProblem
  const float* kv_scale_ptr;
  bool pow2_scale;   // kFp8DsMla: round each block scale up to a power of two
  const void* kv_c;  // [num_tokens, 512]
  int64_t kv_c_stride;
  const void* k_pe;  // [num_tokens, 64]
  int64_t k_pe_stride;
  const int64_t* slot_mapping;  // [num_tokens]
  int64_t slot_mapping_stride;
  void* kv;  // [num_pages, page_size, 576 or 656 bytes], as in DecodeProblem
  int64_t kv_stride_page, kv_stride_row;
};

// Element type of merge inputs/outputs.
enum class MergeType : int32_t { kBFloat16 = 0, kFloat16 = 1, kFloat32 = 2 };

struct MergeProblem {
  int64_t num_tokens;
  int32_t num_heads;
  int32_t head_dim;
  MergeType dtype;
  const void* out_a;  // [T, H, D]
  int64_t out_a_stride_t, out_a_stride_h;
  const float* lse_a;  // [T, H]
  int64_t lse_a_stride_t, lse_a_stride_h;
  const void* out_b;
  int64_t out_b_stride_t, out_b_stride_h;
  const float* lse_b;
  int64_t lse_b_stride_t, lse_b_stride_h;
  void* out;
  int64_t out_stride_t, out_stride_h;
  float* lse;  // or nullptr
  int64_t lse_stride_t, lse_stride_h;
};

}  // namespace mla::detail
