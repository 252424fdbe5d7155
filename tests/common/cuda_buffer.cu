// CUDA memory for the harness: plain cudaMalloc and synchronous copies (tests only).
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "harness.h"

namespace mla::testing {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "harness: %s failed: %s\n", what, cudaGetErrorString(e));
    std::abort();
  }
}

// Runs `body` with `device` current, then makes the caller's device current again: the harness
// never changes which device a test has current.
template <typename Body>
void on_device(int device, Body&& body) {
  int previous = 0;
  check(cudaGetDevice(&previous), "cudaGetDevice");
  check(cudaSetDevice(device), "cudaSetDevice");
  body();
  check(cudaSetDevice(previous), "cudaSetDevice");
}

class CudaBuffer final : public DeviceBuffer {
 public:
  CudaBuffer(int device, size_t bytes) : device_(device), bytes_(bytes) {
    on_device(device_,
              [&] { check(cudaMalloc(&data_, bytes_ == 0 ? 256 : bytes_), "cudaMalloc"); });
  }
  ~CudaBuffer() override {
    on_device(device_, [&] { cudaFree(data_); });
  }
  void* data() override { return data_; }
  size_t bytes() const override { return bytes_; }
  void upload(const void* src, size_t n) override {
    check(cudaMemcpy(data_, src, n, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  void download(void* dst, size_t n) const override {
    check(cudaMemcpy(dst, data_, n, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }

 private:
  int device_;
  size_t bytes_;
  void* data_ = nullptr;
};

}  // namespace

std::unique_ptr<DeviceBuffer> allocate_cuda(int device, size_t bytes) {
  return std::make_unique<CudaBuffer>(device, bytes);
}

void synchronize_cuda(int device) {
  on_device(device, [] { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); });
}

}  // namespace mla::testing
