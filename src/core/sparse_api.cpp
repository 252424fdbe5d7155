// The sparse decode entry points: validate (structure, workspace, then on the CPU the fp8_e4m3
// scale tensor's value and the contents of indices and topk_lengths), then run the CPU reference
// or fast path, or hand a CUDA call to the CUDA backend (src/cuda/sparse/), which checks the
// contents on the device.
#include "core/entry.h"
#include "core/sparse_backends.h"
#include "core/sparse_validate.h"
#include "core/status.h"
#include "core/validate.h"
#include "mla/mla.h"

namespace mla {

Status sparse_workspace_size(const SparseDecodeShape& shape, Device device,
                             const ExecConfig& config, size_t* bytes) {
  const char* fn = "mla::sparse_workspace_size";
  return detail::guarded(fn, [&]() -> Status {
    if (bytes == nullptr) return detail::invalid_argument(fn, "bytes", "null pointer");
    MLA_RETURN_IF_ERROR(detail::check_config(fn, config));
    MLA_RETURN_IF_ERROR(detail::validate_sparse_shape(fn, shape));
    if (device.type == DeviceType::kCUDA) {
      return cuda::sparse_workspace_size(fn, shape, device.index, bytes);
    }
    if (device.type != DeviceType::kCPU) {
      return detail::invalid_argument(fn, "device", "unknown device type ",
                                      static_cast<int>(device.type));
    }
    *bytes = cpu::sparse_workspace_size(shape, detail::resolve_threads(config));
    return Status();
  });
}

Status sparse_decode(const SparseDecodeParams& params, Workspace workspace,
                     const ExecConfig& config) {
  const char* fn = "mla::sparse_decode";
  return detail::guarded(fn, [&]() -> Status {
    detail::SparseDecodeProblem problem;
    Device device;
    MLA_RETURN_IF_ERROR(detail::check_config(fn, config));
    MLA_RETURN_IF_ERROR(detail::validate_sparse_decode(fn, params, &problem, &device));
    if (device.type == DeviceType::kCUDA) {
      return cuda::sparse_decode(fn, problem, device.index, workspace, config.stream);
    }
    const int threads = detail::resolve_threads(config);
    const SparseDecodeShape shape{problem.batch, problem.s_q, problem.h_q, problem.topk};
    // The reference needs no workspace.
    const size_t required = config.reference ? 0 : cpu::sparse_workspace_size(shape, threads);
    MLA_RETURN_IF_ERROR(detail::check_workspace(fn, workspace, required));
    MLA_RETURN_IF_ERROR(detail::resolve_kv_scale(fn, problem.kv_scale_ptr, &problem.kv_scale));
    MLA_RETURN_IF_ERROR(detail::validate_sparse_data(fn, problem));
    if (problem.batch == 0) return Status();
    if (config.reference) {
      cpu::reference_sparse_decode(problem);
      return Status();
    }
    return cpu::sparse_decode(problem, workspace.data, workspace.bytes, threads);
  });
}

}  // namespace mla
