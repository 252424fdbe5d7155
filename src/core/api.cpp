// The public entry points: validate, then dispatch to the CPU or CUDA backend.
#include <exception>
#include <new>
#include <thread>

#include "core/backends.h"
#include "core/status.h"
#include "core/validate.h"
#include "mla/mla.h"

namespace mla {
namespace {

int resolve_threads(const ExecConfig& config) {
  if (config.num_threads > 0) return config.num_threads;
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

Status check_config(const char* fn, const ExecConfig& config) {
  if (config.num_threads < 0) {
    return detail::invalid_argument(fn, "config.num_threads", "must be >= 0, got ",
                                    config.num_threads);
  }
  return Status();
}

// Runs `body`, turning an escaping exception (allocation failure) into a Status: nothing throws
// across the API. Every message leaves with the entry point's name in front.
template <typename F>
Status guarded(const char* fn, F&& body) {
  try {
    return detail::with_context(fn, body());
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kInternal, std::string(fn) + ": out of host memory");
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, std::string(fn) + ": " + e.what());
  }
}

Status required_workspace(const char* fn, const detail::DecodeProblem& problem, Device device,
                          const ExecConfig& config, size_t* bytes) {
  const DecodeShape shape{problem.batch, problem.s_q, problem.h_q};
  if (device.type == DeviceType::kCUDA) {
    Status s = cuda::check_device(device.index);
    if (!s.ok()) return detail::with_context(fn, s);
    return cuda::workspace_size(shape, device.index, bytes);
  }
  // The reference needs no workspace.
  *bytes = config.reference ? 0 : cpu::workspace_size(shape, resolve_threads(config));
  return Status();
}

Status check_workspace(const char* fn, Workspace ws, size_t required) {
  if (ws.bytes < required) {
    return detail::invalid_argument(fn, "workspace", ws.bytes,
                                    " bytes given, workspace_size() requires ", required);
  }
  if (required > 0 && ws.data == nullptr) {
    return detail::invalid_argument(fn, "workspace", "data pointer is null");
  }
  if (reinterpret_cast<uintptr_t>(ws.data) % kWorkspaceAlignment != 0) {
    return detail::invalid_argument(fn, "workspace", "data pointer ", ws.data, " is not ",
                                    kWorkspaceAlignment, "-byte aligned (kWorkspaceAlignment)");
  }
  return Status();
}

// Shared front half of plan / decode_planned / decode: validate everything, data included on
// the CPU.
Status prepare_decode(const char* fn, const DecodeParams& params, Workspace ws,
                      const ExecConfig& config, detail::DecodeProblem* problem, Device* device) {
  if (Status s = check_config(fn, config); !s.ok()) return s;
  if (Status s = detail::validate_decode(fn, params, problem, device); !s.ok()) return s;
  size_t required = 0;
  if (Status s = required_workspace(fn, *problem, *device, config, &required); !s.ok()) return s;
  if (Status s = check_workspace(fn, ws, required); !s.ok()) return s;
  if (device->type == DeviceType::kCPU) return detail::validate_decode_data(fn, *problem);
  return Status();
}

enum class DecodeStage { kPlan, kRun, kBoth };

Status run_decode(const char* fn, const DecodeParams& params, Workspace ws,
                  const ExecConfig& config, DecodeStage stage) {
  return guarded(fn, [&]() -> Status {
    detail::DecodeProblem problem;
    Device device;
    if (Status s = prepare_decode(fn, params, ws, config, &problem, &device); !s.ok()) return s;
    if (problem.batch == 0) return Status();
    if (device.type == DeviceType::kCUDA) {
      if (stage != DecodeStage::kRun) {
        if (Status s = cuda::plan(problem, ws.data, ws.bytes, config.stream); !s.ok()) return s;
      }
      if (stage == DecodeStage::kPlan) return Status();
      return cuda::decode_planned(problem, ws.data, ws.bytes, config.stream);
    }
    // The CPU reads seq_lens directly, so its schedule is made inside each decode.
    if (stage == DecodeStage::kPlan) return Status();
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
    if (device.type == DeviceType::kCUDA) {
      if (Status s = cuda::check_device(device.index); !s.ok()) {
        return detail::with_context(fn, s);
      }
      return cuda::workspace_size(shape, device.index, bytes);
    }
    if (device.type != DeviceType::kCPU) {
      return detail::invalid_argument(fn, "device", "unknown device type ",
                                      static_cast<int>(device.type));
    }
    *bytes = cpu::workspace_size(shape, resolve_threads(config));
    return Status();
  });
}

Status plan(const DecodeParams& params, Workspace workspace, const ExecConfig& config) {
  return run_decode("mla::plan", params, workspace, config, DecodeStage::kPlan);
}

Status decode_planned(const DecodeParams& params, Workspace workspace, const ExecConfig& config) {
  return run_decode("mla::decode_planned", params, workspace, config, DecodeStage::kRun);
}

Status decode(const DecodeParams& params, Workspace workspace, const ExecConfig& config) {
  return run_decode("mla::decode", params, workspace, config, DecodeStage::kBoth);
}

Status check_data_errors(Workspace workspace, Device device, const ExecConfig& config) {
  if (device.type != DeviceType::kCUDA) return Status();
  return guarded("mla::check_data_errors", [&]() {
    return cuda::check_data_errors(workspace.data, workspace.bytes, device.index, config.stream);
  });
}

Status write_kv_cache(const KvCacheWriteParams& params, const ExecConfig& config) {
  const char* fn = "mla::write_kv_cache";
  return guarded(fn, [&]() -> Status {
    detail::KvWriteProblem problem;
    Device device;
    if (Status s = detail::validate_kv_write(fn, params, &problem, &device); !s.ok()) return s;
    if (problem.num_tokens == 0) return Status();
    if (device.type == DeviceType::kCUDA) {
      if (Status s = cuda::check_device(device.index); !s.ok()) {
        return detail::with_context(fn, s);
      }
      return cuda::write_kv_cache(problem, config.stream);
    }
    if (Status s = detail::validate_kv_write_data(fn, problem); !s.ok()) return s;
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
      if (Status s = cuda::check_device(device.index); !s.ok()) {
        return detail::with_context(fn, s);
      }
      return cuda::merge_states(problem, config.stream);
    }
    cpu::merge_states(problem);
    return Status();
  });
}

bool cuda_available_in_build() { return cuda::available_in_build(); }

int cuda_device_count() { return cuda::device_count(); }

}  // namespace mla
