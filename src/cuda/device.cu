// DeviceGuard and the per-device attribute cache (common/device.h).
#include <mutex>
#include <string>
#include <vector>

#include "core/status.h"
#include "cuda/common/check.h"
#include "cuda/common/device.h"

namespace mla::cuda {

DeviceGuard::DeviceGuard(int device) {
  int current = 0;
  if (cudaGetDevice(&current) == cudaSuccess && current == device) return;
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    status_ = cuda_status(e, "cudaSetDevice");
    return;
  }
  previous_ = current;
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

namespace {

Status query(int device, DeviceInfo* info) {
  int smem_optin = 0;
  MLA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&info->sm_count, cudaDevAttrMultiProcessorCount, device));
  MLA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&info->major, cudaDevAttrComputeCapabilityMajor, device));
  MLA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&info->minor, cudaDevAttrComputeCapabilityMinor, device));
  MLA_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  info->smem_optin = static_cast<size_t>(smem_optin);
  if (info->major < 8) {
    cudaDeviceProp prop{};  // slow to query: only for the message
    MLA_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
    return Status(StatusCode::kUnsupported,
                  "CUDA device " + std::to_string(device) + " (" + prop.name +
                      ") has compute capability " + std::to_string(prop.major) + "." +
                      std::to_string(prop.minor) + "; mla-decode needs sm_80 or newer");
  }
  return Status();
}

// The devices seen so far. Entries are filled once and never change afterwards; the lock is
// held for the lookup only (a vector of a few entries).
struct DeviceTable {
  std::mutex mutex;
  bool counted = false;
  std::vector<DeviceInfo> devices;  // sized by the device count; sm_count 0: not queried yet
};

DeviceTable& table() {
  static DeviceTable t;
  return t;
}

}  // namespace

Status device_info(int device, DeviceInfo* info) {
  DeviceTable& t = table();
  std::lock_guard<std::mutex> lock(t.mutex);
  if (!t.counted) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "no device / no driver" error
      count = 0;
    }
    t.devices.resize(static_cast<size_t>(count));
    t.counted = true;
  }
  if (device < 0 || static_cast<size_t>(device) >= t.devices.size()) {
    return Status(StatusCode::kUnsupported, "CUDA device " + std::to_string(device) +
                                                " does not exist (" +
                                                std::to_string(t.devices.size()) + " visible)");
  }
  DeviceInfo& cached = t.devices[static_cast<size_t>(device)];
  if (cached.sm_count == 0) {
    DeviceInfo fresh;
    MLA_RETURN_IF_ERROR(query(device, &fresh));
    cached = fresh;
  }
  *info = cached;
  return Status();
}

Status check_pointer_device(const char* fn, const char* name, const void* ptr, int device) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    cudaGetLastError();  // not a pointer the runtime knows: leave it to the kernels' owner
    return Status();
  }
  if (attr.type == cudaMemoryTypeDevice && attr.device != device) {
    return detail::invalid_argument(
        fn, name,
        "points to memory of cuda:" + std::to_string(attr.device) +
            " but the call's tensors are on cuda:" + std::to_string(device));
  }
  return Status();
}

}  // namespace mla::cuda
