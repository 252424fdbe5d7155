// mla::Decoder's CUDA memory: the workspace and metadata buffer in device memory, and two
// pinned staging buffers the host fills alternately. An upload is one cudaMemcpyAsync from
// pinned memory (truly asynchronous, unlike a pageable copy, which stages through a driver
// buffer and may block) followed by an event record on the same stream. Before the host
// rewrites a staging slot, the slot's event says whether its previous copy (two steps back)
// has finished; the host waits only when it has not, which needs the GPU to be two whole steps
// behind.
#include <cuda_runtime.h>

#include <cstring>

#include "core/decoder_backend.h"
#include "core/status.h"
#include "cuda/common/check.h"
#include "cuda/common/device.h"
#include "cuda/workspace.h"

namespace mla::detail {
namespace {

using cuda::cuda_status;
using cuda::DeviceGuard;

class CudaMemory final : public DecoderMemory {
 public:
  CudaMemory(int device, size_t workspace_bytes, size_t metadata_bytes)
      : device_(device), workspace_bytes_(workspace_bytes), metadata_bytes_(metadata_bytes) {}

  ~CudaMemory() override {
    DeviceGuard guard(device_);
    for (Slot& slot : slots_) {
      // The copy engine may still be reading the staging buffer.
      if (slot.pending) cudaEventSynchronize(slot.copied);
      if (slot.copied != nullptr) cudaEventDestroy(slot.copied);
      if (slot.host != nullptr) cudaFreeHost(slot.host);
    }
    cudaFree(metadata_);
    cudaFree(workspace_);
  }

  Status allocate() {
    DeviceGuard guard(device_);
    MLA_RETURN_IF_ERROR(guard.status());
    // cudaMalloc returns 256-byte aligned memory, as decode() requires of the workspace.
    if (workspace_bytes_ > 0) {
      MLA_CUDA_RETURN_IF_ERROR(cudaMalloc(&workspace_, workspace_bytes_));
      // A header that says "no plan, no error": check_data_errors() reports OK until a plan.
      MLA_CUDA_RETURN_IF_ERROR(cudaMemset(workspace_, 0xff, sizeof(cuda::WorkspaceHeader)));
    }
    MLA_CUDA_RETURN_IF_ERROR(cudaMalloc(&metadata_, metadata_bytes_));
    for (Slot& slot : slots_) {
      MLA_CUDA_RETURN_IF_ERROR(cudaMallocHost(&slot.host, metadata_bytes_));
      // Zeroed once so that the unused seq_lens entries inside an upload are defined bytes.
      std::memset(slot.host, 0, metadata_bytes_);
      MLA_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&slot.copied, cudaEventDisableTiming));
    }
    return Status();
  }

  Workspace workspace() const override { return Workspace{workspace_, workspace_bytes_}; }
  int32_t* metadata() const override { return metadata_; }

  Status acquire_staging(void* stream, int32_t** host) override {
    DeviceGuard guard(device_);  // the legacy default stream is the device's
    MLA_RETURN_IF_ERROR(guard.status());
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    MLA_CUDA_RETURN_IF_ERROR(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &capture));
    if (capture != cudaStreamCaptureStatusNone) {
      return Status(StatusCode::kInvalidArgument,
                    "argument 'stream': is capturing a CUDA graph; begin_step() must run "
                    "outside the capture (a captured upload would replay from a staging buffer "
                    "that later steps overwrite)");
    }
    Slot& slot = slots_[next_];
    if (slot.pending) {
      cudaError_t e = cudaEventQuery(slot.copied);
      if (e == cudaErrorNotReady) e = cudaEventSynchronize(slot.copied);
      if (e != cudaSuccess) {
        return cuda_status(e, "waiting for the previous copy out of a pinned staging buffer");
      }
      slot.pending = false;
    }
    *host = slot.host;
    return Status();
  }

  Status upload(size_t bytes, void* stream) override {
    DeviceGuard guard(device_);
    MLA_RETURN_IF_ERROR(guard.status());
    Slot& slot = slots_[next_];
    const auto s = static_cast<cudaStream_t>(stream);
    MLA_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(metadata_, slot.host, bytes, cudaMemcpyHostToDevice, s));
    if (cudaError_t e = cudaEventRecord(slot.copied, s); e != cudaSuccess) {
      // The copy is queued but cannot be tracked: wait for it rather than risk overwriting.
      cudaStreamSynchronize(s);
      return cuda_status(e, "cudaEventRecord after the metadata upload");
    }
    slot.pending = true;
    next_ ^= 1;
    return Status();
  }

 private:
  struct Slot {
    int32_t* host = nullptr;       // pinned, metadata_bytes_
    cudaEvent_t copied = nullptr;  // recorded after the copy out of `host`
    bool pending = false;          // `copied` was recorded and not yet seen complete
  };

  int device_;
  size_t workspace_bytes_;
  size_t metadata_bytes_;
  void* workspace_ = nullptr;
  int32_t* metadata_ = nullptr;
  Slot slots_[2];
  int next_ = 0;  // the slot the next step fills
};

}  // namespace

Status make_cuda_decoder_memory(int device, size_t workspace_bytes, size_t metadata_bytes,
                                std::unique_ptr<DecoderMemory>* memory) {
  auto m = std::make_unique<CudaMemory>(device, workspace_bytes, metadata_bytes);
  if (Status s = m->allocate(); !s.ok()) return s;
  *memory = std::move(m);
  return Status();
}

}  // namespace mla::detail
