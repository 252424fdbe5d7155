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
                                             {"lse", &p.lse},
                                             {"kv_scale_tensor", &p.kv_scale_tensor}}));
  DecodeShape shape;
  MLA_RETURN_IF_ERROR(check_query(fn, p.q, p.q_pe, device, &shape));
  const int64_t batch = shape.batch, s_q = shape.s_q, h_q = shape.h_q;
  MLA_RETURN_IF_ERROR(check_kv_format(fn, p.kv_format, p.kv_cache, "q", p.q.dtype, p.kv_scale,
                                      p.kv_scale_tensor, device));
  MLA_RETURN_IF_ERROR(check_page_size(fn, p.kv_cache));

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

  MLA_RETURN_IF_ERROR(check_outputs(fn, p.out, p.lse, p.q.dtype, shape, device,
                                    {{"q", &p.q},
                                     {"q_pe", &p.q_pe},
                                     {"kv_cache", &p.kv_cache},
                                     {"indices", &p.indices},
                                     {"topk_lengths", &p.topk_lengths},
                                     {"attn_sink", &p.attn_sink},
                                     {"kv_scale_tensor", &p.kv_scale_tensor}}));
  MLA_RETURN_IF_ERROR(check_softmax_scale(fn, p.softmax_scale));
  MLA_RETURN_IF_ERROR(check_cuda_rows(fn, device, p.q, p.q_pe, p.kv_cache, p.out));

  SparseDecodeProblem& pr = *problem;
  pr = SparseDecodeProblem{};
  fill_problem_views(p.q, p.q_pe, p.kv_cache, p.out, p.lse, p.softmax_scale, &pr);
  pr.batch = static_cast<int32_t>(batch);
  pr.s_q = static_cast<int32_t>(s_q);
  pr.h_q = static_cast<int32_t>(h_q);
  pr.topk = static_cast<int32_t>(topk);
  fill_kv_format(p.kv_format, p.kv_scale, p.kv_scale_tensor, &pr);
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
