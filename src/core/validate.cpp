#include "core/validate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/fp8.h"
#include "core/status.h"
#include "core/validate_checks.h"

namespace mla::detail {

std::string shape_string(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

std::string device_string(Device d) {
  return d.type == DeviceType::kCPU ? std::string("cpu") : "cuda:" + std::to_string(d.index);
}

bool same_device(Device a, Device b) {
  return a.type == b.type && (a.type == DeviceType::kCPU || a.index == b.index);
}

// Views reach at most this many bytes from their first element: far beyond any allocation, and
// small enough that offset arithmetic on a checked view (one more stride included) cannot
// overflow int64.
constexpr int64_t kMaxSpanBytes = int64_t{1} << 60;

// ndim outside [0, kMaxDims] would index past shape[] and strides[].
Status check_rank(const char* fn, const char* name, const TensorView& t) {
  if (t.ndim < 0 || t.ndim > kMaxDims) {
    return invalid_argument(fn, name, "ndim must be in [1, ", kMaxDims, "] (0 = absent), got ",
                            t.ndim);
  }
  return Status();
}

// True when some extent is 0: the view has no elements (numel() could overflow on hostile
// shapes, so it is not used before the span check).
bool is_empty(const TensorView& t) {
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] == 0) return true;
  }
  return false;
}

// Bytes from the first element to the end of the last one, for a view with non-negative extents
// (at least one each) and strides; false when that exceeds kMaxSpanBytes.
bool byte_span(const TensorView& t, int64_t* span) {
  const int64_t esize = static_cast<int64_t>(dtype_size(t.dtype));
  int64_t last = 0;  // element offset of the last element
  for (int i = 0; i < t.ndim; ++i) {
    const int64_t steps = t.shape[i] - 1;
    if (steps > 0 && t.strides[i] > 0) {
      if (steps > (kMaxSpanBytes / esize - last) / t.strides[i]) return false;
      last += steps * t.strides[i];
    }
  }
  *span = (last + 1) * esize;
  return *span <= kMaxSpanBytes;
}

std::string strides_string(const TensorView& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.strides[i]);
  return s + "]";
}

// The address range of a non-empty view must exist: no wrap-around, no more than kMaxSpanBytes.
Status check_span(const char* fn, const char* name, const TensorView& t) {
  if (is_empty(t)) return Status();
  int64_t span = 0;
  if (!byte_span(t, &span) ||
      static_cast<uint64_t>(span) > UINTPTR_MAX - reinterpret_cast<uintptr_t>(t.data)) {
    return invalid_argument(fn, name, "shape ", shape_string(t), " with strides ",
                            strides_string(t), " addresses more memory than exists");
  }
  return Status();
}

// Generic structural checks shared by every tensor argument.
Status check_tensor(const char* fn, const char* name, const TensorView& t, const Expect& e,
                    Device device) {
  MLA_RETURN_IF_ERROR(check_rank(fn, name, t));
  if (!t.present()) return invalid_argument(fn, name, "is required but absent (ndim == 0)");
  if (t.ndim != e.ndim) {
    return invalid_argument(fn, name, "expected ", e.ndim, " dimensions ", e.layout, ", got ",
                            t.ndim, " with shape ", shape_string(t));
  }
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] < 0) {
      return invalid_argument(fn, name, "negative extent ", t.shape[i], " in dimension ", i);
    }
    if (e.shape[i] >= 0 && t.shape[i] != e.shape[i]) {
      return invalid_argument(fn, name, "expected shape ", e.layout, ", got ", shape_string(t),
                              " (dimension ", i, " must be ", e.shape[i], ")");
    }
    if (t.strides[i] < 0) {
      return invalid_argument(fn, name, "negative stride ", t.strides[i], " in dimension ", i);
    }
  }
  if (!same_device(t.device, device)) {
    return invalid_argument(fn, name, "is on ", device_string(t.device), " but the call runs on ",
                            device_string(device));
  }
  if (!is_empty(t)) {
    if (t.data == nullptr) return invalid_argument(fn, name, "data pointer is null");
    if (t.strides[t.ndim - 1] != 1 && t.shape[t.ndim - 1] > 1) {
      return invalid_argument(fn, name, "last dimension must be contiguous (stride 1), got stride ",
                              t.strides[t.ndim - 1]);
    }
    if (reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) != 0) {
      return invalid_argument(fn, name, "data pointer ", t.data,
                              " is not aligned to its element size ", dtype_size(t.dtype));
    }
    MLA_RETURN_IF_ERROR(check_span(fn, name, t));
  }
  return Status();
}

Status check_dtype(const char* fn, const char* name, const TensorView& t,
                   std::initializer_list<DType> allowed) {
  for (DType d : allowed) {
    if (t.dtype == d) return Status();
  }
  std::string names;
  for (DType d : allowed) names += (names.empty() ? "" : " or ") + std::string(dtype_name(d));
  return invalid_argument(fn, name, "expected dtype ", names, ", got ", dtype_name(t.dtype));
}

Status check_same_dtype(const char* fn, const char* name, const TensorView& t, const char* ref_name,
                        DType ref) {
  if (t.dtype != ref) {
    return invalid_argument(fn, name, "dtype ", dtype_name(t.dtype), " differs from ", ref_name,
                            "'s ", dtype_name(ref));
  }
  return Status();
}

// An fp32 LSE tensor. Any strides are accepted (engines keep LSEs transposed, e.g. vLLM's
// [num_heads, num_tokens] and FlashMLA's [batch, h_q, s_q]), so unlike check_tensor the last
// dimension need not be contiguous.
Status check_lse_tensor(const char* fn, const char* name, const TensorView& t, const Expect& e,
                        Device device) {
  MLA_RETURN_IF_ERROR(check_rank(fn, name, t));
  MLA_RETURN_IF_ERROR(check_dtype(fn, name, t, {DType::kFloat32}));
  bool shape_ok = t.ndim == e.ndim;
  std::string expected = "[";
  for (int i = 0; i < e.ndim; ++i) {
    shape_ok = shape_ok && t.shape[i] == e.shape[i];
    expected += (i ? ", " : "") + std::to_string(e.shape[i]);
  }
  if (!shape_ok) {
    return invalid_argument(fn, name, "expected shape ", e.layout, " = ", expected, "], got ",
                            shape_string(t));
  }
  for (int i = 0; i < t.ndim; ++i) {
    if (t.strides[i] < 0) {
      return invalid_argument(fn, name, "negative stride ", t.strides[i], " in dimension ", i);
    }
  }
  if (!same_device(t.device, device)) {
    return invalid_argument(fn, name, "is on ", device_string(t.device), " but the call runs on ",
                            device_string(device));
  }
  if (!is_empty(t) && t.data == nullptr) return invalid_argument(fn, name, "data pointer is null");
  if (reinterpret_cast<uintptr_t>(t.data) % 4 != 0) {
    return invalid_argument(fn, name, "data pointer ", t.data, " is not 4-byte aligned");
  }
  return check_span(fn, name, t);
}

// [begin, end) addresses of a view that passed check_tensor / check_lse_tensor; empty for a view
// that is absent or has no elements.
struct ByteRange {
  uintptr_t begin = 0, end = 0;
};

ByteRange byte_range(const TensorView& t) {
  int64_t span = 0;
  if (!t.present() || is_empty(t) || !byte_span(t, &span)) return ByteRange{};
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data);
  return ByteRange{begin, begin + static_cast<uintptr_t>(span)};
}

// An output must not share memory with another argument: the call would read what it has
// written, or write an input. The check is on address ranges, so two views that interleave
// without sharing an element are rejected too; pass separate buffers.
Status check_disjoint(const char* fn, const char* name, const TensorView& t, const char* other_name,
                      const TensorView& other) {
  const ByteRange a = byte_range(t), b = byte_range(other);
  if (a.begin == a.end || b.begin == b.end) return Status();
  if (a.begin < b.end && b.begin < a.end) {
    return invalid_argument(fn, name, "overlaps the memory of '", other_name,
                            "'; an output must not share memory with another argument");
  }
  return Status();
}

// Tensors the call writes must not alias themselves: with dimensions sorted by stride, each
// stride must step over the whole extent of the dimensions below it.
Status check_non_overlapping(const char* fn, const char* name, const TensorView& t) {
  if (is_empty(t)) return Status();
  std::vector<int> dims;
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] > 1) dims.push_back(i);
  }
  std::sort(dims.begin(), dims.end(), [&](int a, int b) { return t.strides[a] < t.strides[b]; });
  int64_t span = 1;
  for (int d : dims) {
    if (t.strides[d] < span) {
      return invalid_argument(fn, name, "strides overlap (dimension ", d, " has stride ",
                              t.strides[d], " but the dimensions inside it span ", span,
                              " elements); an output must not alias itself");
    }
    span = t.strides[d] * t.shape[d];
  }
  return Status();
}

// CUDA kernels move rows with 16-byte vector accesses: the base pointer and every outer stride
// must be multiples of 16 bytes.
Status check_rows_aligned_16(const char* fn, const char* name, const TensorView& t) {
  if (is_empty(t)) return Status();
  const int64_t esize = static_cast<int64_t>(dtype_size(t.dtype));
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) {
    return invalid_argument(fn, name, "data pointer ", t.data,
                            " is not 16-byte aligned (required on CUDA)");
  }
  for (int i = 0; i + 1 < t.ndim; ++i) {
    if (t.shape[i] > 1 && (t.strides[i] * esize) % 16 != 0) {
      return invalid_argument(fn, name, "stride ", t.strides[i], " of dimension ", i,
                              " is not a multiple of 16 bytes (required on CUDA)");
    }
  }
  return Status();
}

Status check_int32(const char* fn, const char* name, int64_t value) {
  if (value > std::numeric_limits<int32_t>::max()) {
    return argument_error(StatusCode::kUnsupported, fn, name, "extent ", value,
                          " exceeds the supported maximum ", std::numeric_limits<int32_t>::max());
  }
  return Status();
}

Status check_device_supported(const char* fn, const char* name, Device device) {
  if (device.type == DeviceType::kCPU) return Status();
  if (device.type != DeviceType::kCUDA) {
    return invalid_argument(fn, name, "unknown device type ", static_cast<int>(device.type));
  }
  if (device.index < 0)
    return invalid_argument(fn, name, "negative CUDA device index ", device.index);
  return Status();
}

// Every present tensor of a call on the device of the first one; a mismatch names both.
Status check_same_device(const char* fn,
                         std::initializer_list<std::pair<const char*, const TensorView*>> tensors) {
  const char* ref_name = nullptr;
  Device ref{};
  for (const auto& [name, t] : tensors) {
    if (!t->present()) continue;
    if (ref_name == nullptr) {
      ref_name = name;
      ref = t->device;
    } else if (!same_device(t->device, ref)) {
      return invalid_argument(fn, name, "is on ", device_string(t->device), " but argument '",
                              ref_name, "' is on ", device_string(ref),
                              "; every tensor of a call must be on one device");
    }
  }
  return Status();
}

// Shape limits, reported against `arg` ("q" from decode, the shape's own fields from
// workspace_size) with each extent named.
Status check_shape(const char* fn, const char* arg, const DecodeShape& shape) {
  if (shape.batch < 0) return invalid_argument(fn, arg, "batch must be >= 0, got ", shape.batch);
  MLA_RETURN_IF_ERROR(check_int32(fn, arg, shape.batch));
  if (shape.s_q < 1 || shape.s_q > kMaxSeqQ) {
    return argument_error(shape.s_q < 1 ? StatusCode::kInvalidArgument : StatusCode::kUnsupported,
                          fn, arg, "s_q must be in [1, ", kMaxSeqQ, "], got ", shape.s_q);
  }
  if (shape.h_q < 1 || shape.h_q > kMaxHeadsQ) {
    return argument_error(shape.h_q < 1 ? StatusCode::kInvalidArgument : StatusCode::kUnsupported,
                          fn, arg, "h_q must be in [1, ", kMaxHeadsQ, "], got ", shape.h_q);
  }
  return Status();
}

Status check_query(const char* fn, const TensorView& q, const TensorView& q_pe, Device device,
                   DecodeShape* shape) {
  const int64_t batch = q.ndim >= 1 ? q.shape[0] : 0;
  const int64_t s_q = q.ndim >= 2 ? q.shape[1] : 0;
  const int64_t h_q = q.ndim >= 3 ? q.shape[2] : 0;
  MLA_RETURN_IF_ERROR(check_dtype(fn, "q", q, {DType::kBFloat16, DType::kFloat16}));
  if (q_pe.present()) {
    MLA_RETURN_IF_ERROR(check_tensor(
        fn, "q", q,
        {"[batch, s_q, h_q, 512] (q_nope, since q_pe is given)", 4, {-1, -1, -1, kHeadDimV}},
        device));
  } else {
    MLA_RETURN_IF_ERROR(
        check_tensor(fn, "q", q, {"[batch, s_q, h_q, 576]", 4, {-1, -1, -1, kHeadDimQK}}, device));
  }
  MLA_RETURN_IF_ERROR(check_shape(fn, "q", DecodeShape{batch, s_q, h_q}));
  if (q_pe.present()) {
    MLA_RETURN_IF_ERROR(check_same_dtype(fn, "q_pe", q_pe, "q", q.dtype));
    MLA_RETURN_IF_ERROR(check_tensor(
        fn, "q_pe", q_pe, {"[batch, s_q, h_q, 64]", 4, {batch, s_q, h_q, kHeadDimRope}}, device));
  }
  *shape = DecodeShape{batch, s_q, h_q};
  return Status();
}

Status check_page_size(const char* fn, const TensorView& kv_cache) {
  const int64_t page_size = kv_cache.shape[1];
  if (page_size < 1 || page_size > kMaxPageSize || (page_size & (page_size - 1)) != 0) {
    return argument_error(StatusCode::kUnsupported, fn, "kv_cache",
                          "page_size (dimension 1) must be a power of two in [1, ", kMaxPageSize,
                          "], got ", page_size);
  }
  return check_int32(fn, "kv_cache", kv_cache.shape[0]);
}

Status check_outputs(const char* fn, const TensorView& out, const TensorView& lse, DType q_dtype,
                     const DecodeShape& shape, Device device,
                     std::initializer_list<std::pair<const char*, const TensorView*>> inputs) {
  const int64_t batch = shape.batch, s_q = shape.s_q, h_q = shape.h_q;
  MLA_RETURN_IF_ERROR(check_same_dtype(fn, "out", out, "q", q_dtype));
  MLA_RETURN_IF_ERROR(check_tensor(
      fn, "out", out, {"[batch, s_q, h_q, 512]", 4, {batch, s_q, h_q, kHeadDimV}}, device));
  MLA_RETURN_IF_ERROR(check_non_overlapping(fn, "out", out));
  if (lse.present()) {
    MLA_RETURN_IF_ERROR(
        check_lse_tensor(fn, "lse", lse, {"[batch, s_q, h_q]", 3, {batch, s_q, h_q}}, device));
    MLA_RETURN_IF_ERROR(check_non_overlapping(fn, "lse", lse));
  }
  // The outputs share no memory with the inputs or with each other.
  for (const TensorView* o : {&out, &lse}) {
    const char* out_name = o == &out ? "out" : "lse";
    for (const auto& [name, t] : inputs) {
      MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *o, name, *t));
    }
  }
  return check_disjoint(fn, "out", out, "lse", lse);
}

Status check_softmax_scale(const char* fn, float scale) {
  if (!std::isfinite(scale) || scale <= 0.0f) {
    return invalid_argument(fn, "softmax_scale", "must be finite and > 0, got ", scale);
  }
  return Status();
}

Status check_cuda_rows(const char* fn, Device device, const TensorView& q, const TensorView& q_pe,
                       const TensorView& kv_cache, const TensorView& out) {
  if (device.type != DeviceType::kCUDA) return Status();
  MLA_RETURN_IF_ERROR(check_rows_aligned_16(fn, "q", q));
  if (q_pe.present()) MLA_RETURN_IF_ERROR(check_rows_aligned_16(fn, "q_pe", q_pe));
  MLA_RETURN_IF_ERROR(check_rows_aligned_16(fn, "kv_cache", kv_cache));
  return check_rows_aligned_16(fn, "out", out);
}

// detail::KvType mirrors KvFormat value for value (problem.h stays free of the public header).
static_assert(static_cast<int>(KvType::kHalf) == static_cast<int>(KvFormat::kSameAsQ) &&
              static_cast<int>(KvType::kFp8E4M3) == static_cast<int>(KvFormat::kFp8E4M3) &&
              static_cast<int>(KvType::kFp8DsMla) == static_cast<int>(KvFormat::kFp8DsMla));
static_assert(kDsMlaTokenBytes == kFp8DsMlaTokenBytes);

Status check_kv_format(const char* fn, KvFormat format, const TensorView& kv_cache,
                       const char* ref_name, DType ref_dtype, float kv_scale,
                       const TensorView& kv_scale_tensor, Device device) {
  if (format != KvFormat::kSameAsQ && format != KvFormat::kFp8E4M3 &&
      format != KvFormat::kFp8DsMla) {
    return invalid_argument(fn, "kv_format", "unknown value ", static_cast<int>(format));
  }
  if (format == KvFormat::kSameAsQ) {
    MLA_RETURN_IF_ERROR(check_same_dtype(fn, "kv_cache", kv_cache, ref_name, ref_dtype));
    MLA_RETURN_IF_ERROR(check_tensor(fn, "kv_cache", kv_cache,
                                     {"[num_pages, page_size, 576]", 3, {-1, -1, kHeadDimQK}},
                                     device));
  } else {
    MLA_RETURN_IF_ERROR(check_dtype(fn, "kv_cache", kv_cache, {DType::kUInt8}));
    if (format == KvFormat::kFp8E4M3) {
      MLA_RETURN_IF_ERROR(check_tensor(
          fn, "kv_cache", kv_cache,
          {"[num_pages, page_size, 576] (kv_format fp8_e4m3)", 3, {-1, -1, kHeadDimQK}}, device));
    } else {
      MLA_RETURN_IF_ERROR(check_tensor(
          fn, "kv_cache", kv_cache,
          {"[num_pages, page_size, 656] (kv_format fp8_ds_mla)", 3, {-1, -1, kFp8DsMlaTokenBytes}},
          device));
    }
  }
  MLA_RETURN_IF_ERROR(check_rank(fn, "kv_scale_tensor", kv_scale_tensor));
  if (kv_scale_tensor.present()) {
    if (format != KvFormat::kFp8E4M3) {
      return invalid_argument(fn, "kv_scale_tensor", "is only used with kv_format fp8_e4m3, got ",
                              kv_format_name(format));
    }
    MLA_RETURN_IF_ERROR(check_dtype(fn, "kv_scale_tensor", kv_scale_tensor, {DType::kFloat32}));
    MLA_RETURN_IF_ERROR(
        check_tensor(fn, "kv_scale_tensor", kv_scale_tensor, {"[1]", 1, {1}}, device));
    if (kv_scale != 1.0f) {
      return invalid_argument(fn, "kv_scale",
                              "must stay 1 when kv_scale_tensor gives the scale, got ", kv_scale);
    }
  } else if (format == KvFormat::kFp8E4M3) {
    if (!std::isfinite(kv_scale) || kv_scale <= 0.0f) {
      return invalid_argument(fn, "kv_scale", "must be finite and > 0, got ", kv_scale);
    }
  } else if (kv_scale != 1.0f) {
    return invalid_argument(fn, "kv_scale",
                            "is only used with kv_format fp8_e4m3 and must stay 1 for ",
                            kv_format_name(format), ", got ", kv_scale);
  }
  return Status();
}

Status check_workspace(const char* fn, const Workspace& ws, size_t required) {
  if (ws.bytes < required) {
    return invalid_argument(fn, "workspace", ws.bytes, " bytes given, workspace_size() requires ",
                            required);
  }
  if (required > 0 && ws.data == nullptr)
    return invalid_argument(fn, "workspace", "data pointer is null");
  if (reinterpret_cast<uintptr_t>(ws.data) % kWorkspaceAlignment != 0) {
    return invalid_argument(fn, "workspace", "data pointer ", ws.data, " must be ",
                            kWorkspaceAlignment, "-byte aligned (kWorkspaceAlignment)");
  }
  return Status();
}

Status validate_shape(const char* fn, const DecodeShape& shape) {
  return check_shape(fn, "shape", shape);
}

Status validate_decode(const char* fn, const DecodeParams& p, DecodeProblem* problem,
                       Device* device_out) {
  MLA_RETURN_IF_ERROR(check_rank(fn, "q", p.q));
  MLA_RETURN_IF_ERROR(check_rank(fn, "q_pe", p.q_pe));
  MLA_RETURN_IF_ERROR(check_rank(fn, "lse", p.lse));
  if (!p.q.present()) return invalid_argument(fn, "q", "is required but absent (ndim == 0)");
  const Device device = p.q.device;
  MLA_RETURN_IF_ERROR(check_device_supported(fn, "q", device));
  MLA_RETURN_IF_ERROR(check_same_device(fn, {{"q", &p.q},
                                             {"q_pe", &p.q_pe},
                                             {"kv_cache", &p.kv_cache},
                                             {"block_table", &p.block_table},
                                             {"seq_lens", &p.seq_lens},
                                             {"out", &p.out},
                                             {"lse", &p.lse},
                                             {"kv_scale_tensor", &p.kv_scale_tensor}}));
  DecodeShape shape;
  MLA_RETURN_IF_ERROR(check_query(fn, p.q, p.q_pe, device, &shape));
  const int64_t batch = shape.batch;
  MLA_RETURN_IF_ERROR(check_kv_format(fn, p.kv_format, p.kv_cache, "q", p.q.dtype, p.kv_scale,
                                      p.kv_scale_tensor, device));
  MLA_RETURN_IF_ERROR(check_page_size(fn, p.kv_cache));

  MLA_RETURN_IF_ERROR(check_dtype(fn, "block_table", p.block_table, {DType::kInt32}));
  MLA_RETURN_IF_ERROR(check_tensor(fn, "block_table", p.block_table,
                                   {"[batch, max_pages_per_seq]", 2, {batch, -1}}, device));
  MLA_RETURN_IF_ERROR(check_int32(fn, "block_table", p.block_table.shape[1]));
  MLA_RETURN_IF_ERROR(check_dtype(fn, "seq_lens", p.seq_lens, {DType::kInt32}));
  MLA_RETURN_IF_ERROR(check_tensor(fn, "seq_lens", p.seq_lens, {"[batch]", 1, {batch}}, device));

  MLA_RETURN_IF_ERROR(check_outputs(fn, p.out, p.lse, p.q.dtype, shape, device,
                                    {{"q", &p.q},
                                     {"q_pe", &p.q_pe},
                                     {"kv_cache", &p.kv_cache},
                                     {"block_table", &p.block_table},
                                     {"seq_lens", &p.seq_lens},
                                     {"kv_scale_tensor", &p.kv_scale_tensor}}));
  MLA_RETURN_IF_ERROR(check_softmax_scale(fn, p.softmax_scale));
  MLA_RETURN_IF_ERROR(check_cuda_rows(fn, device, p.q, p.q_pe, p.kv_cache, p.out));

  DecodeProblem& pr = *problem;
  pr = DecodeProblem{};
  fill_problem_views(p.q, p.q_pe, p.kv_cache, p.out, p.lse, p.softmax_scale, &pr);
  pr.batch = static_cast<int32_t>(shape.batch);
  pr.s_q = static_cast<int32_t>(shape.s_q);
  pr.h_q = static_cast<int32_t>(shape.h_q);
  pr.max_pages = static_cast<int32_t>(p.block_table.shape[1]);
  pr.causal = p.causal;
  fill_kv_format(p.kv_format, p.kv_scale, p.kv_scale_tensor, &pr);
  pr.block_table = static_cast<const int32_t*>(p.block_table.data);
  pr.block_table_stride = p.block_table.strides[0];
  pr.seq_lens = static_cast<const int32_t*>(p.seq_lens.data);
  pr.seq_lens_stride = p.seq_lens.strides[0];
  *device_out = device;
  return Status();
}

Status validate_decode_data(const char* fn, const DecodeProblem& p) {
  const int64_t capacity = static_cast<int64_t>(p.max_pages) * p.page_size;
  for (int32_t b = 0; b < p.batch; ++b) {
    const int64_t len = p.seq_lens[b * p.seq_lens_stride];
    if (len < 0 || len > capacity) {
      return argument_error(StatusCode::kDataError, fn, "seq_lens", "seq_lens[", b, "] = ", len,
                            " is outside [0, max_pages_per_seq * page_size = ", capacity, "]");
    }
    const int64_t live_pages = (len + p.page_size - 1) >> p.page_shift;
    const int32_t* row = p.block_table + b * p.block_table_stride;
    for (int64_t i = 0; i < live_pages; ++i) {
      if (row[i] < 0 || row[i] >= p.num_pages) {
        return argument_error(StatusCode::kDataError, fn, "block_table", "block_table[", b, "][", i,
                              "] = ", row[i], " is outside [0, num_pages = ", p.num_pages, ")");
      }
    }
  }
  return Status();
}

Status validate_kv_write(const char* fn, const KvCacheWriteParams& p, KvWriteProblem* problem,
                         Device* device_out) {
  MLA_RETURN_IF_ERROR(check_rank(fn, "kv_cache", p.kv_cache));
  if (!p.kv_cache.present()) {
    return invalid_argument(fn, "kv_cache", "is required but absent (ndim == 0)");
  }
  const Device device = p.kv_cache.device;
  MLA_RETURN_IF_ERROR(check_device_supported(fn, "kv_cache", device));
  MLA_RETURN_IF_ERROR(check_same_device(fn, {{"kv_cache", &p.kv_cache},
                                             {"slot_mapping", &p.slot_mapping},
                                             {"kv_c", &p.kv_c},
                                             {"k_pe", &p.k_pe},
                                             {"kv_scale_tensor", &p.kv_scale_tensor}}));
  // bf16/fp16 caches define the dtype kv_c and k_pe must have; fp8 caches take either (and an
  // unknown format is reported by check_kv_format).
  const bool fp8 = p.kv_format != KvFormat::kSameAsQ;
  if (!fp8) {
    MLA_RETURN_IF_ERROR(
        check_dtype(fn, "kv_cache", p.kv_cache, {DType::kBFloat16, DType::kFloat16}));
  }
  MLA_RETURN_IF_ERROR(check_kv_format(fn, p.kv_format, p.kv_cache, "kv_cache", p.kv_cache.dtype,
                                      p.kv_scale, p.kv_scale_tensor, device));
  if (p.ds_mla_pow2_scale && p.kv_format != KvFormat::kFp8DsMla) {
    return invalid_argument(fn, "ds_mla_pow2_scale", "is only used with kv_format fp8_ds_mla, got ",
                            kv_format_name(p.kv_format));
  }
  MLA_RETURN_IF_ERROR(check_non_overlapping(fn, "kv_cache", p.kv_cache));
  const int64_t page_size = p.kv_cache.shape[1];
  if (page_size < 1 || page_size > kMaxPageSize || (page_size & (page_size - 1)) != 0) {
    return argument_error(StatusCode::kUnsupported, fn, "kv_cache",
                          "page_size (dimension 1) must be a power of two in [1, ", kMaxPageSize,
                          "], got ", page_size);
  }
  MLA_RETURN_IF_ERROR(check_int32(fn, "kv_cache", p.kv_cache.shape[0]));
  MLA_RETURN_IF_ERROR(check_rank(fn, "slot_mapping", p.slot_mapping));
  if (!p.slot_mapping.present()) {
    return invalid_argument(fn, "slot_mapping", "is required but absent (ndim == 0)");
  }
  MLA_RETURN_IF_ERROR(check_dtype(fn, "slot_mapping", p.slot_mapping, {DType::kInt64}));
  MLA_RETURN_IF_ERROR(
      check_tensor(fn, "slot_mapping", p.slot_mapping, {"[num_tokens]", 1, {-1}}, device));
  const int64_t tokens = p.slot_mapping.shape[0];
  if (fp8) {
    MLA_RETURN_IF_ERROR(check_dtype(fn, "kv_c", p.kv_c, {DType::kBFloat16, DType::kFloat16}));
  } else {
    MLA_RETURN_IF_ERROR(check_same_dtype(fn, "kv_c", p.kv_c, "kv_cache", p.kv_cache.dtype));
  }
  MLA_RETURN_IF_ERROR(
      check_tensor(fn, "kv_c", p.kv_c, {"[num_tokens, 512]", 2, {tokens, kHeadDimV}}, device));
  MLA_RETURN_IF_ERROR(check_same_dtype(fn, "k_pe", p.k_pe, "kv_c", p.kv_c.dtype));
  MLA_RETURN_IF_ERROR(
      check_tensor(fn, "k_pe", p.k_pe, {"[num_tokens, 64]", 2, {tokens, kHeadDimRope}}, device));
  MLA_RETURN_IF_ERROR(check_disjoint(fn, "kv_cache", p.kv_cache, "kv_c", p.kv_c));
  MLA_RETURN_IF_ERROR(check_disjoint(fn, "kv_cache", p.kv_cache, "k_pe", p.k_pe));
  MLA_RETURN_IF_ERROR(check_disjoint(fn, "kv_cache", p.kv_cache, "slot_mapping", p.slot_mapping));
  MLA_RETURN_IF_ERROR(
      check_disjoint(fn, "kv_cache", p.kv_cache, "kv_scale_tensor", p.kv_scale_tensor));
  if (device.type == DeviceType::kCUDA) {
    MLA_RETURN_IF_ERROR(check_rows_aligned_16(fn, "kv_c", p.kv_c));
    MLA_RETURN_IF_ERROR(check_rows_aligned_16(fn, "k_pe", p.k_pe));
    MLA_RETURN_IF_ERROR(check_rows_aligned_16(fn, "kv_cache", p.kv_cache));
  }
  KvWriteProblem& pr = *problem;
  pr = KvWriteProblem{};
  pr.num_tokens = tokens;
  pr.page_size = static_cast<int32_t>(page_size);
  pr.num_pages = static_cast<int32_t>(p.kv_cache.shape[0]);
  pr.dtype = p.kv_c.dtype == DType::kBFloat16 ? ElemType::kBFloat16 : ElemType::kFloat16;
  fill_kv_format(p.kv_format, p.kv_scale, p.kv_scale_tensor, &pr);
  pr.pow2_scale = p.ds_mla_pow2_scale;
  pr.kv_c = p.kv_c.data;
  pr.kv_c_stride = p.kv_c.strides[0];
  pr.k_pe = p.k_pe.data;
  pr.k_pe_stride = p.k_pe.strides[0];
  pr.slot_mapping = static_cast<const int64_t*>(p.slot_mapping.data);
  pr.slot_mapping_stride = p.slot_mapping.strides[0];
  pr.kv = p.kv_cache.data;
  pr.kv_stride_page = p.kv_cache.strides[0];
  pr.kv_stride_row = p.kv_cache.strides[1];
  *device_out = device;
  return Status();
}

Status resolve_kv_scale(const char* fn, const float* kv_scale_ptr, float* kv_scale) {
  if (kv_scale_ptr == nullptr) return Status();
  const float v = *kv_scale_ptr;
  if (!std::isfinite(v) || v <= 0.0f) {
    return argument_error(StatusCode::kDataError, fn, "kv_scale_tensor", "kv_scale_tensor[0] = ", v,
                          " must be finite and > 0");
  }
  *kv_scale = v;
  return Status();
}

Status validate_kv_write_data(const char* fn, const KvWriteProblem& p) {
  const int64_t capacity = static_cast<int64_t>(p.num_pages) * p.page_size;
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t slot = p.slot_mapping[t * p.slot_mapping_stride];
    if (slot < -1 || slot >= capacity) {
      return argument_error(StatusCode::kDataError, fn, "slot_mapping", "slot_mapping[", t,
                            "] = ", slot, " is outside [-1, num_pages * page_size = ", capacity,
                            ")");
    }
  }
  return Status();
}

Status validate_merge(const char* fn, const MergeParams& p, MergeProblem* problem,
                      Device* device_out) {
  MLA_RETURN_IF_ERROR(check_rank(fn, "out_a", p.out_a));
  MLA_RETURN_IF_ERROR(check_rank(fn, "lse", p.lse));
  if (!p.out_a.present())
    return invalid_argument(fn, "out_a", "is required but absent (ndim == 0)");
  const Device device = p.out_a.device;
  MLA_RETURN_IF_ERROR(check_device_supported(fn, "out_a", device));
  MLA_RETURN_IF_ERROR(check_same_device(fn, {{"out_a", &p.out_a},
                                             {"lse_a", &p.lse_a},
                                             {"out_b", &p.out_b},
                                             {"lse_b", &p.lse_b},
                                             {"out", &p.out},
                                             {"lse", &p.lse}}));
  MLA_RETURN_IF_ERROR(
      check_dtype(fn, "out_a", p.out_a, {DType::kBFloat16, DType::kFloat16, DType::kFloat32}));
  MLA_RETURN_IF_ERROR(check_tensor(fn, "out_a", p.out_a,
                                   {"[num_tokens, num_heads, head_dim]", 3, {-1, -1, -1}}, device));
  const int64_t t = p.out_a.shape[0], h = p.out_a.shape[1], d = p.out_a.shape[2];
  MLA_RETURN_IF_ERROR(check_int32(fn, "out_a", h));
  MLA_RETURN_IF_ERROR(check_int32(fn, "out_a", d));
  const Expect out_shape{"[num_tokens, num_heads, head_dim] (as out_a)", 3, {t, h, d}};
  MLA_RETURN_IF_ERROR(check_same_dtype(fn, "out_b", p.out_b, "out_a", p.out_a.dtype));
  MLA_RETURN_IF_ERROR(check_tensor(fn, "out_b", p.out_b, out_shape, device));
  MLA_RETURN_IF_ERROR(check_same_dtype(fn, "out", p.out, "out_a", p.out_a.dtype));
  MLA_RETURN_IF_ERROR(check_tensor(fn, "out", p.out, out_shape, device));
  MLA_RETURN_IF_ERROR(check_non_overlapping(fn, "out", p.out));
  const Expect lse_shape{"[num_tokens, num_heads] (as out_a)", 2, {t, h}};
  auto check_lse = [&](const char* name, const TensorView& lse) {
    return check_lse_tensor(fn, name, lse, lse_shape, device);
  };
  MLA_RETURN_IF_ERROR(check_rank(fn, "lse_a", p.lse_a));
  if (!p.lse_a.present())
    return invalid_argument(fn, "lse_a", "is required but absent (ndim == 0)");
  MLA_RETURN_IF_ERROR(check_lse("lse_a", p.lse_a));
  MLA_RETURN_IF_ERROR(check_rank(fn, "lse_b", p.lse_b));
  if (!p.lse_b.present())
    return invalid_argument(fn, "lse_b", "is required but absent (ndim == 0)");
  MLA_RETURN_IF_ERROR(check_lse("lse_b", p.lse_b));
  if (p.lse.present()) {
    MLA_RETURN_IF_ERROR(check_lse("lse", p.lse));
    MLA_RETURN_IF_ERROR(check_non_overlapping(fn, "lse", p.lse));
  }
  // The outputs share no memory with the inputs or with each other.
  for (const TensorView* out : {&p.out, &p.lse}) {
    const char* out_name = out == &p.out ? "out" : "lse";
    MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *out, "out_a", p.out_a));
    MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *out, "lse_a", p.lse_a));
    MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *out, "out_b", p.out_b));
    MLA_RETURN_IF_ERROR(check_disjoint(fn, out_name, *out, "lse_b", p.lse_b));
  }
  MLA_RETURN_IF_ERROR(check_disjoint(fn, "out", p.out, "lse", p.lse));

  MergeProblem& pr = *problem;
  pr = MergeProblem{};
  pr.num_tokens = t;
  pr.num_heads = static_cast<int32_t>(h);
  pr.head_dim = static_cast<int32_t>(d);
  pr.dtype = p.out_a.dtype == DType::kBFloat16  ? MergeType::kBFloat16
             : p.out_a.dtype == DType::kFloat16 ? MergeType::kFloat16
                                                : MergeType::kFloat32;
  pr.out_a = p.out_a.data;
  pr.out_a_stride_t = p.out_a.strides[0];
  pr.out_a_stride_h = p.out_a.strides[1];
  pr.lse_a = static_cast<const float*>(p.lse_a.data);
  pr.lse_a_stride_t = p.lse_a.strides[0];
  pr.lse_a_stride_h = p.lse_a.strides[1];
  pr.out_b = p.out_b.data;
  pr.out_b_stride_t = p.out_b.strides[0];
  pr.out_b_stride_h = p.out_b.strides[1];
  pr.lse_b = static_cast<const float*>(p.lse_b.data);
  pr.lse_b_stride_t = p.lse_b.strides[0];
  pr.lse_b_stride_h = p.lse_b.strides[1];
  pr.out = p.out.data;
  pr.out_stride_t = p.out.strides[0];
  pr.out_stride_h = p.out.strides[1];
  if (p.lse.present()) {
    pr.lse = static_cast<float*>(p.lse.data);
    pr.lse_stride_t = p.lse.strides[0];
    pr.lse_stride_h = p.lse.strides[1];
  }
  *device_out = device;
  return Status();
}

}  // namespace mla::detail
