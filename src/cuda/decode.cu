// The CUDA backend's decode entry points (src/core/backends.h): device checks, workspace sizing,
// plan (scheduler kernel) and decode_planned (decode + combine kernels), data-error readback.
//
// Every launch is asynchronous on the caller's stream and capturable in a CUDA graph: no
// allocation, no host read of device data, and grids that depend on shapes and the SM count only.
//
// Two environment variables exist for tests and benchmarks only:
//   MLA_CUDA_SMEM_LIMIT  caps the shared memory per block the kernel choice may use (bytes), so a
//                        large card can exercise the configurations of smaller ones;
//   MLA_CUDA_KERNEL      restricts the choice to one configuration by name (e.g. "m4n64s2w8" or
//                        "sm90n64s2").
// workspace_size() and plan() read them alike; set them before sizing the workspace.
#include <cuda_runtime.h>

#include <cstdlib>
#include <string>

#include "core/backends.h"
#include "cuda/combine/combine.h"
#include "cuda/common/check.h"
#include "cuda/scheduler/scheduler.h"
#include "cuda/sm80/launch.h"
#if MLA_HAVE_SM90
#include "cuda/sm90/launch.h"
#endif
#include "cuda/workspace.h"

namespace mla::cuda {
namespace {

// Makes `device` current for the lifetime of the guard, restoring the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device) {
      set_ = cudaSetDevice(device) == cudaSuccess;
    }
  }
  ~DeviceGuard() {
    if (set_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool set_ = false;
};

// The device that owns `ptr` (device memory, or the current device for host-accessible memory).
Status device_of(const void* ptr, int* device) {
  cudaPointerAttributes attr{};
  MLA_CUDA_RETURN_IF_ERROR(cudaPointerGetAttributes(&attr, ptr));
  if (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged) {
    *device = attr.device;
    return Status();
  }
  MLA_CUDA_RETURN_IF_ERROR(cudaGetDevice(device));
  return Status();
}

struct DecodeLaunch {
  bool sm90 = false;          // the Hopper kernel (else the portable one)
  sm80::KernelChoice kernel;  // when !sm90
#if MLA_HAVE_SM90
  sm90::KernelChoice kernel90;  // when sm90
#endif
  WorkspaceLayout layout;
  bool pdl = false;  // programmatic dependent launch (sm_90+)

  int rows_per_cta() const {
#if MLA_HAVE_SM90
    if (sm90) return sm90::KernelChoice::kRowsPerCta;
#endif
    return kernel.rows_per_cta();
  }
};

// The Hopper kernel serves compute capability 9.0 (its sm_90a code runs there only) when a
// request has more than 32 rows, or when named by MLA_CUDA_KERNEL. Up to 32 rows the portable
// 16- and 32-row tiles do less padded work and measured faster on H100 (spec rows, same runs:
// h_q = 16, 240 vs 250 us; h_q = 32, 233 vs 237 us).
bool choose_sm90(int major, int minor, int rows, size_t smem_limit, const char* only,
                 DecodeLaunch* launch) {
#if MLA_HAVE_SM90
  const bool named = only != nullptr && std::string(only).rfind("sm90", 0) == 0;
  if (only != nullptr && !named) return false;
  if (major != 9 || minor != 0 || (!named && rows <= 32)) return false;
  if (!sm90::choose_kernel(smem_limit, only, &launch->kernel90)) return false;
  launch->sm90 = true;
  return true;
#else
  return false;
#endif
}

// Everything the launches need, from shapes and the device alone (never from seq_lens).
Status make_launch(int32_t batch, int32_t rows, int device, DecodeLaunch* launch) {
  int sm_count = 0, smem_optin = 0, major = 0, minor = 0;
  MLA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));
  MLA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  MLA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  launch->pdl = major >= 9;
  MLA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  size_t smem_limit = static_cast<size_t>(smem_optin);
  if (const char* env = std::getenv("MLA_CUDA_SMEM_LIMIT"); env != nullptr && *env != '\0') {
    smem_limit = std::min(smem_limit, static_cast<size_t>(std::strtoull(env, nullptr, 10)));
  }
  const char* only = std::getenv("MLA_CUDA_KERNEL");
  if (only != nullptr && *only == '\0') only = nullptr;
  if (!choose_sm90(major, minor, rows, smem_limit, only, launch) &&
      !sm80::choose_kernel(rows, smem_limit, only, &launch->kernel)) {
    return Status(StatusCode::kUnsupported,
                  "CUDA device " + std::to_string(device) + " offers " +
                      std::to_string(smem_limit) +
                      " bytes of shared memory per block, too few for any decode kernel" +
                      (only ? std::string(" (MLA_CUDA_KERNEL=") + only + ")" : std::string()));
  }
  // Every CTA of the grid (num_parts x row tiles) is resident at once: one per SM.
  const int row_tiles = (rows + launch->rows_per_cta() - 1) / launch->rows_per_cta();
  const int num_parts = std::max(1, sm_count / row_tiles);
  launch->layout = WorkspaceLayout::make(batch, rows, num_parts);
  return Status();
}

Status workspace_too_small(const char* fn, size_t given, size_t needed) {
  return Status(StatusCode::kInvalidArgument,
                std::string(fn) + ": argument 'workspace': " + std::to_string(given) +
                    " bytes given, " + std::to_string(needed) + " required");
}

// Shared front half of plan() and decode_planned().
Status prepare(const char* fn, const detail::DecodeProblem& p, void* workspace,
               size_t workspace_bytes, int* device, DecodeLaunch* launch) {
  if (Status s = device_of(p.out, device); !s.ok()) return s;
  if (Status s = make_launch(p.batch, p.rows(), *device, launch); !s.ok()) return s;
  if (workspace_bytes < launch->layout.bytes) {
    return workspace_too_small(fn, workspace_bytes, launch->layout.bytes);
  }
  return Status();
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

Status check_device(int device) {
  const int count = device_count();
  if (device < 0 || device >= count) {
    return Status(StatusCode::kUnsupported, "CUDA device " + std::to_string(device) +
                                                " does not exist (" + std::to_string(count) +
                                                " visible)");
  }
  int major = 0;
  MLA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 8) {
    cudaDeviceProp prop{};  // slow to query: only for the message
    MLA_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
    return Status(StatusCode::kUnsupported,
                  "CUDA device " + std::to_string(device) + " (" + prop.name +
                      ") has compute capability " + std::to_string(prop.major) + "." +
                      std::to_string(prop.minor) + "; mla-decode needs sm_80 or newer");
  }
  return Status();
}

Status workspace_size(const DecodeShape& shape, int device, size_t* bytes) {
  DecodeLaunch launch;
  if (Status s = make_launch(static_cast<int32_t>(shape.batch),
                             static_cast<int32_t>(shape.s_q * shape.h_q), device, &launch);
      !s.ok()) {
    return s;
  }
  *bytes = launch.layout.bytes;
  return Status();
}

Status plan(const detail::DecodeProblem& p, void* workspace, size_t workspace_bytes, void* stream) {
  int device = 0;
  DecodeLaunch launch;
  if (Status s = prepare("mla::plan", p, workspace, workspace_bytes, &device, &launch); !s.ok()) {
    return s;
  }
  DeviceGuard guard(device);
  return launch_scheduler(p, ScheduleView::make(workspace, launch.layout),
                          static_cast<cudaStream_t>(stream), launch.pdl);
}

Status decode_planned(const detail::DecodeProblem& p, void* workspace, size_t workspace_bytes,
                      void* stream) {
  int device = 0;
  DecodeLaunch launch;
  if (Status s = prepare("mla::decode_planned", p, workspace, workspace_bytes, &device, &launch);
      !s.ok()) {
    return s;
  }
  DeviceGuard guard(device);
  const ScheduleView schedule = ScheduleView::make(workspace, launch.layout);
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  Status s;
#if MLA_HAVE_SM90
  if (launch.sm90) s = sm90::launch_decode(launch.kernel90, p, schedule, st, launch.pdl);
#endif
  if (!launch.sm90) s = sm80::launch_decode(launch.kernel, p, schedule, st, launch.pdl);
  if (!s.ok()) return s;
  return launch_combine(p, schedule, st, launch.pdl);
}

Status check_data_errors(const void* workspace, size_t workspace_bytes, int device, void* stream) {
  const char* fn = "mla::check_data_errors";
  if (workspace == nullptr || workspace_bytes < sizeof(WorkspaceHeader)) {
    return Status(StatusCode::kInvalidArgument,
                  std::string(fn) + ": argument 'workspace': null or smaller than its header");
  }
  if (Status s = check_device(device); !s.ok())
    return Status(s.code(), std::string(fn) + ": " + s.message());
  DeviceGuard guard(device);
  WorkspaceHeader header{};
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  MLA_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(&header, workspace, sizeof header, cudaMemcpyDeviceToHost, st));
  MLA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  if (header.error_key == kNoError) return Status();
  const int32_t request = static_cast<int32_t>(header.error_key >> 36);
  const auto reason = static_cast<DataError>((header.error_key >> 32) & 0xf);
  const int32_t value = static_cast<int32_t>(header.error_key & 0xffffffffu);
  const std::string req = std::to_string(request);
  std::string what;
  switch (reason) {
    case DataError::kNegativeSeqLen:
      what =
          "argument 'seq_lens': seq_lens[" + req + "] = " + std::to_string(value) + " is negative";
      break;
    case DataError::kSeqLenTooLong:
      what = "argument 'seq_lens': seq_lens[" + req + "] = " + std::to_string(value) +
             " exceeds max_pages_per_seq * page_size";
      break;
    case DataError::kBadPage:
      what = "argument 'block_table': block_table[" + req + "][" + std::to_string(value) +
             "] is outside [0, num_pages)";
      break;
    default:
      what = "unknown data error code";
      break;
  }
  return Status(StatusCode::kDataError, std::string(fn) + ": " + what + " (first bad request " +
                                            req + "; its rows were written as NaN)");
}

}  // namespace mla::cuda
