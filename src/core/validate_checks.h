// The argument checks of src/core/validate.cpp that other validators (src/core/sparse_validate.cpp)
// share. Each returns OK or a Status naming the argument (see status.h for the message form).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "core/problem.h"
#include "mla/mla.h"

namespace mla::detail {

// Expected extent of each dimension; -1 accepts any non-negative extent.
struct Expect {
  const char* layout;  // for messages, e.g. "[batch, s_q, h_q, 576]"
  int ndim;
  int64_t shape[kMaxDims];
};

// ndim within [0, kMaxDims].
Status check_rank(const char* fn, const char* name, const TensorView& t);
// Presence, rank, extents, non-negative strides, device, null data, contiguous last dimension,
// element alignment and an address range that exists.
Status check_tensor(const char* fn, const char* name, const TensorView& t, const Expect& e,
                    Device device);
Status check_dtype(const char* fn, const char* name, const TensorView& t,
                   std::initializer_list<DType> allowed);
Status check_same_dtype(const char* fn, const char* name, const TensorView& t, const char* ref_name,
                        DType ref);
// An fp32 LSE-like tensor of exactly e's shape with any non-negative strides.
Status check_lse_tensor(const char* fn, const char* name, const TensorView& t, const Expect& e,
                        Device device);
// Outputs share no address range with `other`.
Status check_disjoint(const char* fn, const char* name, const TensorView& t, const char* other_name,
                      const TensorView& other);
// A written view does not alias itself.
Status check_non_overlapping(const char* fn, const char* name, const TensorView& t);
// CUDA: 16-byte aligned base and outer strides.
Status check_rows_aligned_16(const char* fn, const char* name, const TensorView& t);
// kUnsupported when an extent exceeds int32.
Status check_int32(const char* fn, const char* name, int64_t value);
Status check_device_supported(const char* fn, const char* name, Device device);
// Every present tensor on the device of the first one.
Status check_same_device(const char* fn,
                         std::initializer_list<std::pair<const char*, const TensorView*>> tensors);
// batch, s_q and h_q limits, reported against `arg`.
Status check_shape(const char* fn, const char* arg, const DecodeShape& shape);

// q [batch, s_q, h_q, 576] bf16/fp16, or q_nope [.., 512] with q_pe [.., 64] of its dtype, and the
// shape limits; `shape` receives the batch, s_q and h_q that q defines.
Status check_query(const char* fn, const TensorView& q, const TensorView& q_pe, Device device,
                   DecodeShape* shape);
// kv_cache's page_size (dimension 1) a power of two in [1, kMaxPageSize], its page count within
// int32. The cache's dtype and row width are checked before.
Status check_page_size(const char* fn, const TensorView& kv_cache);
// out [batch, s_q, h_q, 512] in q's dtype and the optional lse [batch, s_q, h_q], neither
// aliasing itself, and both sharing no memory with `inputs` or with each other.
Status check_outputs(const char* fn, const TensorView& out, const TensorView& lse, DType q_dtype,
                     const DecodeShape& shape, Device device,
                     std::initializer_list<std::pair<const char*, const TensorView*>> inputs);
// softmax_scale finite and > 0.
Status check_softmax_scale(const char* fn, float scale);
// On CUDA: 16-byte aligned rows of q (and q_pe), kv_cache and out.
Status check_cuda_rows(const char* fn, Device device, const TensorView& q, const TensorView& q_pe,
                       const TensorView& kv_cache, const TensorView& out);
// The KV-format arguments shared by decode, sparse decode and write_kv_cache: a known format, the
// kv_cache tensor in that format's dtype and row width (bf16/fp16 caches match `ref_name`'s
// dtype), and the fp8_e4m3 scale given once, as a finite positive float or a one-element fp32
// tensor (kv_scale then stays 1); the other formats keep kv_scale at 1 and take no tensor.
Status check_kv_format(const char* fn, KvFormat format, const TensorView& kv_cache,
                       const char* ref_name, DType ref_dtype, float kv_scale,
                       const TensorView& kv_scale_tensor, Device device);

// The KV-format fields of a validated problem (DecodeProblem, SparseDecodeProblem,
// KvWriteProblem): its KvType and the fp8_e4m3 scale, as a value or a pointer to the tensor's.
template <typename Problem>
void fill_kv_format(KvFormat format, float kv_scale, const TensorView& kv_scale_tensor,
                    Problem* pr) {
  pr->kv_type = static_cast<KvType>(format);
  pr->kv_scale = kv_scale;
  pr->kv_scale_ptr =
      kv_scale_tensor.present() ? static_cast<const float*>(kv_scale_tensor.data) : nullptr;
}

// The fields every decode problem (DecodeProblem, SparseDecodeProblem) takes from q / q_pe,
// kv_cache, out and lse, once they are validated. A 576-wide q becomes q_nope = q and
// q_pe = q + 512 with the same strides.
template <typename Problem>
void fill_problem_views(const TensorView& q, const TensorView& q_pe, const TensorView& kv_cache,
                        const TensorView& out, const TensorView& lse, float softmax_scale,
                        Problem* pr) {
  pr->dtype = q.dtype == DType::kBFloat16 ? ElemType::kBFloat16 : ElemType::kFloat16;
  pr->scale = softmax_scale;
  pr->page_size = static_cast<int32_t>(kv_cache.shape[1]);
  pr->page_shift = 0;
  while ((1 << pr->page_shift) < pr->page_size) ++pr->page_shift;
  pr->num_pages = static_cast<int32_t>(kv_cache.shape[0]);
  pr->q_nope = q.data;
  pr->q_nope_stride_b = q.strides[0];
  pr->q_nope_stride_s = q.strides[1];
  pr->q_nope_stride_h = q.strides[2];
  if (q_pe.present()) {
    pr->q_pe = q_pe.data;
    pr->q_pe_stride_b = q_pe.strides[0];
    pr->q_pe_stride_s = q_pe.strides[1];
    pr->q_pe_stride_h = q_pe.strides[2];
  } else {
    const int64_t esize = static_cast<int64_t>(dtype_size(q.dtype));
    pr->q_pe = q.data == nullptr ? nullptr : static_cast<const char*>(q.data) + kHeadDimV * esize;
    pr->q_pe_stride_b = pr->q_nope_stride_b;
    pr->q_pe_stride_s = pr->q_nope_stride_s;
    pr->q_pe_stride_h = pr->q_nope_stride_h;
  }
  pr->kv = kv_cache.data;
  pr->kv_stride_page = kv_cache.strides[0];
  pr->kv_stride_row = kv_cache.strides[1];
  pr->out = out.data;
  pr->out_stride_b = out.strides[0];
  pr->out_stride_s = out.strides[1];
  pr->out_stride_h = out.strides[2];
  if (lse.present()) {
    pr->lse = static_cast<float*>(lse.data);
    pr->lse_stride_b = lse.strides[0];
    pr->lse_stride_s = lse.strides[1];
    pr->lse_stride_h = lse.strides[2];
  }
}

}  // namespace mla::detail
