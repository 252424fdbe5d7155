#include "core/sparse_validate.h"

#include <cmath>
#include <cstdint>

#include "core/status.h"
#include "core/validate_checks.h"

namespace mla::detail {
namespace {

Status check_topk(const char* fn, const char* arg, int64_t topk) {
  if (topk < 1 || topk > kMaxTopK) {
    return argument_error(topk < 1 ? StatusCode::kInvalidArgument : StatusCode::kUnsupported, fn,
                          arg, "topk must be in [1, ", kMaxTopK, "], got ", topk);
  }
  return Status();
}

}  // namespace

Status validate_sparse_shape(const char* fn, const SparseDecodeShape& shape) {
  MLA_RETURN_IF_ERROR(check_shape(fn, "shape", DecodeShape{shape.batch, shape.s_q, shape.h_q}));
  return check_topk(fn, "shape", shape.topk);
}

Status validate_sparse_decode(const char* fn, const SparseDecodeParams& p,
                              SparseDecodeProblem* problem, Device* device_out) {
  MLA_RETURN_IF_ERROR(check_rank(fn, "q", p.q));
  MLA_RETURN_IF_ERROR(check_rank(fn, "q_pe", p.q_pe));
  MLA_RETURN_IF_ERROR(check_rank(fn, "topk_lengths", p.topk_lengths));
  MLA_RETURN_IF_ERROR(check_rank(fn, "attn_sink", p.attn_sink));
  MLA_RETURN_IF_ERROR(check_rank(fn, "lse", p.lse));
  if (!p.q.present()) return invalid_argument(fn, "q", "is required but absent (ndim == 0)");
  const Device device = p.q.device;
  MLA_RETURN_IF_ERROR(check_device_supported(fn, "q", device));
  MLA_RETURN_IF_ERROR(check_same_device(fn, {{"q", &p.q},
                                             {"q_pe", &p.q_pe},
                                             {"kv_cache", &p.kv_cache},
                                             {"indices", &p.indices},
                                             {"topk_lengths", &p.topk_lengths},
                                             {"attn_sink", &p.attn_sink},
                                             {"out", &p.out},
                                             {"lse", &p.lse}}));
  const bool split_q = p.q_pe.present();
  const int64_t batch = p.q.ndim >= 1 ? p.q.shape[0] : 0;
  const int64_t s_q = p.q.ndim >= 2 ? p.q.shape[1] : 0;
  const int64_t h_q = p.q.ndim >= 3 ? p.q.shape[2] : 0;

  // q (or q_nope + q_pe) defines batch, s_q and h_q; indices defines topk.
  MLA_RETURN_IF_ERROR(check_dtype(fn, "q", p.q, {DType::kBFloat16, DType::kFloat16}));
  if (split_q) {
    MLA_RETURN_IF_ERROR(check_tensor(
        fn, "q", p.q,
        {"[batch, s_q, h_q, 512] (q_nope, since q_pe is given)", 4, {-1, -1, -1, kHeadDimV}},
        device));
  } else {
    MLA_RETURN_IF_ERROR(check_tensor(
        fn, "q", p.q, {"[batch, s_q, h_q, 576]", 4, {-1, -1, -1, kHeadDimQK}}, device));
  }
  MLA_RETURN_IF_ERROR(check_shape(fn, "q", DecodeShape{batch, s_q, h_q}));
  if (split_q) {
    MLA_RETURN_IF_ERROR(check_same_dtype(fn, "q_pe", p.q_pe, "q", p.q.dtype));
    MLA_RETURN_IF_ERROR(check_tensor(
        fn, "q_pe", p.q_pe, {"[batch, s_q, h_q, 64]", 4, {batch, s_q, h_q, kHeadDimRope}}, device));
  }
  MLA_RETURN_IF_ERROR(check_same_dtype(fn, "kv_cache", p.kv_cache, "q", p.q.dtype));
  MLA_RETURN_IF_ERROR(check_tensor(fn, "kv_cache", p.kv_cache,
                                   {"[num_pages, page_size, 576]", 3, {-1, -1, kHeadDimQK}},
                                   device));
  const int64_t num_pages = p.kv_cache.shape[0];
  const int64_t page_size = p.kv_cache.shape[1];
  if (page_size < 1 || page_size > kMaxPageSize || (page_size & (page_size - 1)) != 0) {
    return argument_error(StatusCode::kUnsupported, fn, "kv_cache",
                          "page_size (dimension 1) must be a power of two in [1, ", kMaxPageSize,
                          "], got ", page_size);
  }
  MLA_RETURN_IF_ERROR(check_int32(fn, "kv_cache", num_pages));

  MLA_RETURN_IF_ERROR(check_rank(fn, "indices", p.indices));
  MLA_RETURN_IF_ERROR(check_dtype(fn, "indices", p.indices, {DType::kInt32}));
  MLA_RETURN_IF_ERROR(
      check_tensor(fn, "indices", p.indices, {"[batch, s_q, topk]", 3, {batch, s_q, -1}}, device));
  const int64_t topk = p.indices.shape[2];
  MLA_RETURN_IF_ERROR(check_topk(fn, "indices", topk));
  if (p.topk_lengths.present()) {
    MLA_RETURN_IF_ERROR(check_dtype(fn, "topk_lengths", p.topk_lengths, {DType::kInt32}));
    MLA_RETURN_IF_ERROR(
        check_tensor(fn, "topk_lengths", p.topk_lengths, {"[batch]", 1, {batch}}, device));
  }
  if (p.attn_sink.present()) {
    MLA_RETURN_IF_ERROR(check_dtype(fn, "attn_sink", p.attn_sink, {DType::kFloat32}));
    MLA_RETURN_IF_ERROR(check_tensor(fn, "attn_sink", p.attn_sink, {"[h_q]", 1, {h_q}}, device));
  }

  MLA_RETURN_IF_ERROR(check_same_dtype(fn, "out", p.out, "q", p.q.dtype));
  MLA_RETURN_IF_ERROR(check_tensor(
      fn, "out", p.out, {"[batch, s_q, h_q, 512]", 4, {batch, s_q, h_q, kHeadDimV}}, device));
  MLA_RETURN_IF_ERROR(check_non_overlapping(fn, "out", p.out));
  if (p.lse.present()) {
    MLA_RETURN_IF_ERROR(
        check_lse_tensor(fn, "lse", p.lse, {"[batch, s_q, h_q]", 3, {batch, s_q, h_q}}, device));
    MLA_RETURN_IF_ERROR(check_non_overlapping(fn, "lse", p.lse));
  }
  // The outputs share no memory with the inputs or with each other.
  for (const TensorView* out : {&p.out, &p.lse}) {
    const char* out_name = out == &p.out ? "out" : "lse";
    MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *out, "q", p.q));
    MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *out, "q_pe", p.q_pe));
    MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *out, "kv_cache", p.kv_cache));
    MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *out, "indices", p.indices));
    MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *out, "topk_lengths", p.topk_lengths));
    MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *out, "attn_sink", p.attn_sink));
  }
  MLA_RETURN_IF_ERROR(check_disjoint(fn, "out", p.out, "lse", p.lse));
  if (!std::isfinite(p.softmax_scale) || p.softmax_scale <= 0.0f) {
    return invalid_argument(fn, "softmax_scale", "must be finite and > 0, got ", p.softmax_scale);
  }
  if (device.type == DeviceType::kCUDA) {
    MLA_RETURN_IF_ERROR(check_rows_aligned_16(fn, "q", p.q));
    if (split_q) MLA_RETURN_IF_ERROR(check_rows_aligned_16(fn, "q_pe", p.q_pe));
    MLA_RETURN_IF_ERROR(check_rows_aligned_16(fn, "kv_cache", p.kv_cache));
    MLA_RETURN_IF_ERROR(check_rows_aligned_16(fn, "out", p.out));
  }

  SparseDecodeProblem& pr = *problem;
  pr = SparseDecodeProblem{};
  pr.batch = static_cast<int32_t>(batch);
  pr.s_q = static_cast<int32_t>(s_q);
  pr.h_q = static_cast<int32_t>(h_q);
  pr.topk = static_cast<int32_t>(topk);
  pr.page_size = static_cast<int32_t>(page_size);
  pr.page_shift = 0;
  while ((1 << pr.page_shift) < page_size) ++pr.page_shift;
  pr.num_pages = static_cast<int32_t>(num_pages);
  pr.dtype = p.q.dtype == DType::kBFloat16 ? ElemType::kBFloat16 : ElemType::kFloat16;
  pr.scale = p.softmax_scale;

  const int64_t esize = static_cast<int64_t>(dtype_size(p.q.dtype));
  pr.q_nope = p.q.data;
  pr.q_nope_stride_b = p.q.strides[0];
  pr.q_nope_stride_s = p.q.strides[1];
  pr.q_nope_stride_h = p.q.strides[2];
  if (split_q) {
    pr.q_pe = p.q_pe.data;
    pr.q_pe_stride_b = p.q_pe.strides[0];
    pr.q_pe_stride_s = p.q_pe.strides[1];
    pr.q_pe_stride_h = p.q_pe.strides[2];
  } else {
    pr.q_pe =
        p.q.data == nullptr ? nullptr : static_cast<const char*>(p.q.data) + kHeadDimV * esize;
    pr.q_pe_stride_b = pr.q_nope_stride_b;
    pr.q_pe_stride_s = pr.q_nope_stride_s;
    pr.q_pe_stride_h = pr.q_nope_stride_h;
  }
  pr.kv = p.kv_cache.data;
  pr.kv_stride_page = p.kv_cache.strides[0];
  pr.kv_stride_row = p.kv_cache.strides[1];
  pr.indices = static_cast<const int32_t*>(p.indices.data);
  pr.indices_stride_b = p.indices.strides[0];
  pr.indices_stride_s = p.indices.strides[1];
  if (p.topk_lengths.present()) {
    pr.topk_lengths = static_cast<const int32_t*>(p.topk_lengths.data);
    pr.topk_lengths_stride = p.topk_lengths.strides[0];
  }
  if (p.attn_sink.present()) {
    pr.attn_sink = static_cast<const float*>(p.attn_sink.data);
    pr.attn_sink_stride = p.attn_sink.strides[0];
  }
  pr.out = p.out.data;
  pr.out_stride_b = p.out.strides[0];
  pr.out_stride_s = p.out.strides[1];
  pr.out_stride_h = p.out.strides[2];
  if (p.lse.present()) {
    pr.lse = static_cast<float*>(p.lse.data);
    pr.lse_stride_b = p.lse.strides[0];
    pr.lse_stride_s = p.lse.strides[1];
    pr.lse_stride_h = p.lse.strides[2];
  }
  *device_out = device;
  return Status();
}

Status validate_sparse_data(const char* fn, const SparseDecodeProblem& p) {
  const int64_t capacity = static_cast<int64_t>(p.num_pages) * p.page_size;
  for (int32_t b = 0; b < p.batch; ++b) {
    if (p.topk_lengths != nullptr) {
      const int32_t n = p.topk_lengths[b * p.topk_lengths_stride];
      if (n < 0 || n > p.topk) {
        return argument_error(StatusCode::kDataError, fn, "topk_lengths", "topk_lengths[", b,
                              "] = ", n, " is outside [0, topk = ", p.topk, "]");
      }
    }
    const int32_t n = p.length(b);
    for (int32_t s = 0; s < p.s_q; ++s) {
      const int32_t* idx = p.row_indices(b, s);
      for (int32_t k = 0; k < n; ++k) {
        if (idx[k] < -1 || idx[k] >= capacity) {
          return argument_error(StatusCode::kDataError, fn, "indices", "indices[", b, "][", s, "][",
                                k, "] = ", idx[k],
                                " is outside [-1, num_pages * page_size = ", capacity, ")");
        }
      }
    }
  }
  return Status();
}

}  // namespace mla::detail
