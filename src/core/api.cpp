// The public entry points: validate, then dispatch to the CPU or CUDA backend.
#include "core/backends.h"
#include "core/entry.h"
#include "core/status.h"
#include "core/validate.h"
#include "mla/mla.h"

namespace mla {
namespace {

using detail::check_config;
using detail::guarded;
using detail::resolve_threads;

// Shared front half of plan / decode_planned / decode on the CPU: validate everything, data
// included. (The CUDA backend checks the workspace against its launch plan itself.)
Status prepare_cpu(const char* fn, detail::DecodeProblem& problem, Workspace ws,
                   const ExecConfig& config) {
  const DecodeShape shape{problem.batch, problem.s_q, problem.h_q};
  // The reference needs no workspace.
  const size_t required =
      config.reference ? 0 : cpu::workspace_size(shape, resolve_threads(config));
  MLA_RETURN_IF_ERROR(detail::check_workspace(fn, ws, required));
  MLA_RETURN_IF_ERROR(detail::resolve_kv_scale(fn, problem.kv_scale_ptr, &problem.kv_scale));
  return detail::validate_decode_data(fn, problem);
}

Status run_decode(const char* fn, const DecodeParams& params, Workspace ws,
                  const ExecConfig& config, cuda::DecodeStage stage) {
  return guarded(fn, [&]() -> Status {
    detail::DecodeProblem problem;
    Device device;
    MLA_RETURN_IF_ERROR(check_config(fn, config));
    MLA_RETURN_IF_ERROR(detail::validate_decode(fn, params, &problem, &device));
    if (device.type == DeviceType::kCUDA) {
      return cuda::decode(fn, problem, device.index, ws, stage, config.stream);
    }
    MLA_RETURN_IF_ERROR(prepare_cpu(fn, problem, ws, config));
    // The CPU reads seq_lens directly, so its schedule is made inside each decode.
    if (problem.batch == 0 || stage == cuda::DecodeStage::kPlan) return Status();
    if (config.reference) {
      cpu::reference_decode(problem);
      return Status();
    }
    return cpu::decode(problem, ws.data, ws.bytes, resolve_threads(config));
  });
}

}  // namespace

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
    case DType::kFloat32:
      return "float32";
    case DType::kInt32:
      return "int32";
    case DType::kInt64:
      return "int64";
    case DType::kUInt8:
      return "uint8";
  }
  return "unknown";
}

const char* kv_format_name(KvFormat format) {
  switch (format) {
    case KvFormat::kSameAsQ:
      return "same_as_q";
    case KvFormat::kFp8E4M3:
      return "fp8_e4m3";
    case KvFormat::kFp8DsMla:
      return "fp8_ds_mla";
  }
  return "unknown";
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
    case DType::kFloat16:
      return 2;
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kInt64:
      return 8;
    case DType::kUInt8:
      return 1;
  }
  return 1;
}

int64_t TensorView::numel() const {
  if (ndim == 0) return 0;
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

TensorView make_tensor(void* data, DType dtype, std::initializer_list<int64_t> shape,
                       Device device) {
  TensorView t;
  t.data = data;
  t.dtype = dtype;
  t.device = device;
  t.ndim = static_cast<int>(shape.size() < kMaxDims ? shape.size() : kMaxDims);
  int i = 0;
  for (int64_t e : shape) {
    if (i < kMaxDims) t.shape[i++] = e;
  }
  int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    t.strides[d] = stride;
    stride *= t.shape[d];
  }
  return t;
}

TensorView make_tensor(void* data, DType dtype, std::initializer_list<int64_t> shape,
                       std::initializer_list<int64_t> strides, Device device) {
  TensorView t = make_tensor(data, dtype, shape, device);
  int i = 0;
  for (int64_t s : strides) {
    if (i < t.ndim) t.strides[i++] = s;
  }
  return t;
}

Status workspace_size(const DecodeShape& shape, Device device, const ExecConfig& config,
                      size_t* bytes) {
  const char* fn = "mla::workspace_size";
  return guarded(fn, [&]() -> Status {
    if (bytes == nullptr) {
      return detail::invalid_argument(fn, "bytes", "null pointer");
    }
    if (Status s = check_config(fn, config); !s.ok()) return s;
    if (Status s = detail::validate_shape(fn, shape); !s.ok()) return s;
    if (device.type == DeviceType::kCUDA)
      return cuda::workspace_size(fn, shape, device.index, bytes);
    if (device.type != DeviceType::kCPU) {
      return detail::invalid_argument(fn, "device", "unknown device type ",
                                      static_cast<int>(device.type));
    }
    *bytes = cpu::workspace_size(shape, resolve_threads(config));
    return Status();
  });
}

Status plan(const DecodeParams& params, Workspace workspace, const ExecConfig& config) {
  return run_decode("mla::plan", params, workspace, config, cuda::DecodeStage::kPlan);
}

Status decode_planned(const DecodeParams& params, Workspace workspace, const ExecConfig& config) {
  return run_decode("mla::decode_planned", params, workspace, config, cuda::DecodeStage::kRun);
}

Status decode(const DecodeParams& params, Workspace workspace, const ExecConfig& config) {
  return run_decode("mla::decode", params, workspace, config, cuda::DecodeStage::kBoth);
}

Status check_data_errors(Workspace workspace, Device device, const ExecConfig& config) {
  if (device.type != DeviceType::kCUDA) return Status();
  const char* fn = "mla::check_data_errors";
  return guarded(
      fn, [&]() { return cuda::check_data_errors(fn, workspace, device.index, config.stream); });
}

Status write_kv_cache(const KvCacheWriteParams& params, const ExecConfig& config) {
  const char* fn = "mla::write_kv_cache";
  return guarded(fn, [&]() -> Status {
    detail::KvWriteProblem problem;
    Device device;
    if (Status s = detail::validate_kv_write(fn, params, &problem, &device); !s.ok()) return s;
    if (problem.num_tokens == 0) return Status();
    if (device.type == DeviceType::kCUDA) {
      return cuda::write_kv_cache(fn, problem, device.index, config.stream);
    }
    if (Status s = detail::validate_kv_write_data(fn, problem); !s.ok()) return s;
    MLA_RETURN_IF_ERROR(detail::resolve_kv_scale(fn, problem.kv_scale_ptr, &problem.kv_scale));
    cpu::write_kv_cache(problem);
    return Status();
  });
}

Status merge_states(const MergeParams& params, const ExecConfig& config) {
  const char* fn = "mla::merge_states";
  return guarded(fn, [&]() -> Status {
    detail::MergeProblem problem;
    Device device;
    if (Status s = detail::validate_merge(fn, params, &problem, &device); !s.ok()) return s;
    if (problem.num_tokens == 0 || problem.num_heads == 0) return Status();
    if (device.type == DeviceType::kCUDA) {
      return cuda::merge_states(fn, problem, device.index, config.stream);
    }
    cpu::merge_states(problem);
    return Status();
  });
}

bool cuda_available_in_build() { return cuda::available_in_build(); }

int cuda_device_count() { return cuda::device_count(); }

}  // namespace mla
