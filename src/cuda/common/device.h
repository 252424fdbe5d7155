// Devices for the CUDA entry points: every call runs on the device of its tensors, whatever
// device the calling thread has current, through DeviceGuard; the attributes the kernel choice
// needs are queried once per device and cached (device_info).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "mla/mla.h"

namespace mla::cuda {

// Makes `device` current for the guard's lifetime and restores the caller's device after.
// status() reports a failed switch; nothing may be launched then.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  const Status& status() const { return status_; }

 private:
  int previous_ = -1;  // the caller's device, -1 when nothing is to be restored
  Status status_;
};

// What the kernel choice and the grid need of a device; constant for the process's lifetime.
struct DeviceInfo {
  int sm_count = 0;
  int major = 0, minor = 0;  // compute capability
  size_t smem_optin = 0;     // shared memory a block may opt in to, bytes
};

// The cached attributes of `device`, queried at its first use (thread-safe). kUnsupported when
// the device does not exist or is older than sm_80; messages carry no function name.
Status device_info(int device, DeviceInfo* info);

// kInvalidArgument when `ptr` is device memory of another device than `device`: the message
// names `name`, its memory's device and `device`. Host-accessible and managed memory pass.
Status check_pointer_device(const char* fn, const char* name, const void* ptr, int device);

}  // namespace mla::cuda
