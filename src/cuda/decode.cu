// The CUDA backend's decode entry points (src/core/backends.h): the launch plan of a call, plan
// (scheduler kernel), decode_planned (decode + combine kernels) and the data-error readback.
//
// Every launch is asynchronous on the caller's stream, on the device of the call's tensors, and
// capturable in a CUDA graph: no allocation, no host read of device data, and grids that depend
// on shapes and the SM count only.
//
// Two environment variables exist for tests and benchmarks only (see registry.cu):
//   MLA_CUDA_SMEM_LIMIT  caps the shared memory per block the kernel choice may use (bytes), so a
//                        large card can exercise the configurations of smaller ones;
//   MLA_CUDA_KERNEL      restricts the choice to one registered configuration by name (e.g.
//                        "m4n64s2w8" or "sm90n64s2"; `mla-decode kernels` lists them).
// They are read once, at the first call that sizes or launches a decode: set them before it.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "core/backends.h"
#include "core/status.h"
#include "core/validate.h"
#include "cuda/combine/combine.h"
#include "cuda/common/check.h"
#include "cuda/common/device.h"
#include "cuda/registry.h"
#include "cuda/scheduler/scheduler.h"
#include "cuda/workspace.h"

namespace mla::cuda {
namespace {

// Everything the launches of one call need, from shapes and the device alone (never from
// seq_lens), computed once per call.
struct LaunchPlan {
  int device = 0;
  const KernelEntry* kernel = nullptr;
  bool pdl = false;  // programmatic dependent launch (sm_90+)
  WorkspaceLayout layout;
};

Status make_plan(int device, int32_t batch, int32_t rows, int32_t page_size, detail::ElemType elem,
                 detail::KvType kv, LaunchPlan* plan) {
  DeviceInfo info;
  MLA_RETURN_IF_ERROR(device_info(device, &info));
  const ActiveOverride o = active_override();
  const size_t smem_limit =
      o.smem_limit > 0 && o.smem_limit < info.smem_optin ? o.smem_limit : info.smem_optin;
  const char* only = o.kernel[0] != '\0' ? o.kernel : nullptr;
  plan->device = device;
  plan->pdl = info.major >= 9;
  plan->kernel = choose_kernel(info, batch, rows, page_size, elem, kv, smem_limit, only);
  if (plan->kernel == nullptr) {
    std::string why = "CUDA device " + std::to_string(device) + " (compute capability " +
                      std::to_string(info.major) + "." + std::to_string(info.minor) + ", " +
                      std::to_string(smem_limit) + " bytes of shared memory per block)";
    const std::string cache =
        std::string(" for kv_format ") + kv_format_name(static_cast<KvFormat>(kv));
    if (only != nullptr) {
      return Status(StatusCode::kUnsupported, why + " cannot run MLA_CUDA_KERNEL=" + only + cache +
                                                  " (or it is not a registered configuration; "
                                                  "`mla-decode kernels` lists them)");
    }
    return Status(StatusCode::kUnsupported, why + " fits no decode kernel" + cache);
  }
  // Every CTA of the grid (num_parts x row tiles) is resident at once: one per SM.
  const int rows_per_cta = plan->kernel->rows_per_cta;
  const int row_tiles = (rows + rows_per_cta - 1) / rows_per_cta;
  plan->layout = WorkspaceLayout::make(batch, rows, std::max(1, info.sm_count / row_tiles));
  return Status();
}

Status run(const char* fn, const detail::DecodeProblem& p, const Workspace& ws, DecodeStage stage,
           cudaStream_t stream, const LaunchPlan& plan) {
  const ScheduleView schedule = ScheduleView::make(ws.data, plan.layout);
  if (stage != DecodeStage::kRun) {
    MLA_RETURN_IF_ERROR(detail::with_context(fn, launch_scheduler(p, schedule, stream, plan.pdl)));
  }
  if (stage == DecodeStage::kPlan) return Status();
  MLA_RETURN_IF_ERROR(detail::with_context(fn, plan.kernel->launch(p, schedule, stream, plan.pdl)));
  return detail::with_context(fn, launch_combine(p, schedule, stream, plan.pdl));
}

std::string error_message(const ErrorInfo& e) {
  const std::string req = std::to_string(e.request);
  const std::string value = std::to_string(e.value);
  const std::string nan = " (first bad request " + req + "; its rows were written as NaN)";
  switch (e.reason) {
    case DataError::kNoPlan:
      return "decode_planned ran on a workspace that no plan() has prepared; call plan() each "
             "step, before decode_planned, with the same shapes and seq_lens (every row of the "
             "call was written as NaN)";
    case DataError::kStalePlan:
      return std::string("decode_planned without a matching plan(): ") +
             (e.value < 0 ? "batch, s_q, h_q, page_size or causal differ"
                          : "seq_lens[" + value + "] differs") +
             " from those the last plan() on this workspace saw; call plan() again whenever "
             "they change, also before replaying a captured graph (every row of the call was "
             "written as NaN)";
    case DataError::kNegativeSeqLen:
      return "argument 'seq_lens': seq_lens[" + req + "] = " + value + " is negative" + nan;
    case DataError::kSeqLenTooLong:
      return "argument 'seq_lens': seq_lens[" + req + "] = " + value +
             " exceeds max_pages_per_seq * page_size" + nan;
    case DataError::kBadPage:
      return "argument 'block_table': block_table[" + req + "][" + value +
             "] is outside [0, num_pages)" + nan;
    case DataError::kBadKvScale:
      return "argument 'kv_scale_tensor': kv_scale_tensor[0] is not finite and > 0" + nan;
    case DataError::kBadIndex:
      return "argument 'indices': indices[" + req + "][" + std::to_string(e.value / kMaxTopK) +
             "][" + std::to_string(e.value % kMaxTopK) +
             "] is outside [-1, num_pages * page_size) (first bad request " + req +
             "; the rows of its query tokens with a bad entry were written as NaN)";
    case DataError::kBadTopkLength:
      return "argument 'topk_lengths': topk_lengths[" + req + "] = " + value +
             " is outside [0, topk]" + nan;
  }
  return "unknown data error code";
}

}  // namespace

bool available_in_build() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return n;
}

Status workspace_size(const char* fn, const DecodeShape& shape, int device, size_t* bytes) {
  // The element type does not change the choice (every configuration has both), but the KV
  // format may (fp8 caches have their own tiles), and the shape does not say which format the
  // calls will use: the largest layout serves them all. A format no configuration serves within
  // the limits (only possible with an override) is left to decode() to report.
  size_t largest = 0;
  Status first;
  for (detail::KvType kv :
       {detail::KvType::kHalf, detail::KvType::kFp8E4M3, detail::KvType::kFp8DsMla}) {
    // Nor does the shape say the page size, which picks between kernels (registry.h): both ends.
    for (int32_t page_size : {1, 256}) {
      LaunchPlan plan;
      const Status s = make_plan(device, static_cast<int32_t>(shape.batch),
                                 static_cast<int32_t>(shape.s_q * shape.h_q), page_size,
                                 detail::ElemType::kBFloat16, kv, &plan);
      if (s.ok()) {
        largest = std::max(largest, plan.layout.bytes);
      } else if (kv == detail::KvType::kHalf && first.ok()) {
        first = s;
      }
    }
  }
  if (largest == 0) return detail::with_context(fn, first);
  *bytes = largest;  // written only on success
  return Status();
}

Status decode(const char* fn, const detail::DecodeProblem& p, int device, const Workspace& ws,
              DecodeStage stage, void* stream) {
  LaunchPlan plan;
  MLA_RETURN_IF_ERROR(detail::with_context(
      fn, make_plan(device, p.batch, p.rows(), p.page_size, p.dtype, p.kv_type, &plan)));
  MLA_RETURN_IF_ERROR(detail::check_workspace(fn, ws, plan.layout.bytes));
  if (p.batch == 0) return Status();
  MLA_RETURN_IF_ERROR(check_pointer_device(fn, "out", p.out, device));
  MLA_RETURN_IF_ERROR(check_pointer_device(fn, "workspace", ws.data, device));
  DeviceGuard guard(plan.device);
  MLA_RETURN_IF_ERROR(detail::with_context(fn, guard.status()));
  return run(fn, p, ws, stage, static_cast<cudaStream_t>(stream), plan);
}

Status check_data_errors(const char* fn, const Workspace& ws, int device, void* stream) {
  if (ws.data == nullptr || ws.bytes < sizeof(WorkspaceHeader)) {
    return detail::invalid_argument(fn, "workspace", "null or smaller than its header");
  }
  DeviceInfo info;
  MLA_RETURN_IF_ERROR(detail::with_context(fn, device_info(device, &info)));
  MLA_RETURN_IF_ERROR(check_pointer_device(fn, "workspace", ws.data, device));
  DeviceGuard guard(device);
  MLA_RETURN_IF_ERROR(detail::with_context(fn, guard.status()));
  WorkspaceHeader header{};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  MLA_RETURN_IF_ERROR(detail::with_context(
      fn, cuda_status(cudaMemcpyAsync(&header, ws.data, sizeof header, cudaMemcpyDeviceToHost, st),
                      "cudaMemcpyAsync of the workspace header")));
  MLA_RETURN_IF_ERROR(
      detail::with_context(fn, cuda_status(cudaStreamSynchronize(st), "cudaStreamSynchronize")));
  // Without a plan (or a sparse_decode) the key is whatever the memory held, unless a
  // decode_planned wrote kNoPlan.
  const unsigned long long no_plan = plan_error_key(DataError::kNoPlan, -1);
  if (header.magic != kPlanMagic && header.magic != kSparseMagic && header.error_key != no_plan) {
    return Status();
  }
  if (header.error_key == kNoError) return Status();
  return Status(StatusCode::kDataError,
                std::string(fn) + ": " + error_message(decode_error_key(header.error_key)));
}

}  // namespace mla::cuda
