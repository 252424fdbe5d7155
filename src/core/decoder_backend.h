// The memory behind an mla::Decoder, per device. src/core/decoder.cpp is device-neutral and
// holds the CPU version; src/cuda/decoder_cuda.cu the CUDA one (pinned staging, async upload,
// one event per staging slot); src/core/decoder_no_cuda.cpp stands in without the backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "mla/mla.h"

namespace mla::detail {

// Workspace + device metadata + host staging of one Decoder. The metadata buffer has a fixed
// address for the Decoder's lifetime, which is what lets a captured CUDA graph see each
// step's upload.
class DecoderMemory {
 public:
  virtual ~DecoderMemory() = default;
  virtual Workspace workspace() const = 0;
  // Device memory the step's metadata is uploaded to (metadata_bytes from creation).
  virtual int32_t* metadata() const = 0;
  // Host memory of metadata_bytes for the next step's metadata. On CUDA the staging slots
  // alternate; this waits only while the chosen slot's previous upload is still in flight, and
  // refuses while `stream` is capturing.
  virtual Status acquire_staging(void* stream, int32_t** host) = 0;
  // Copies the first `bytes` of the last acquired staging into metadata() on `stream`.
  virtual Status upload(size_t bytes, void* stream) = 0;
};

// CUDA memory on `device`; kUnsupported in builds without the CUDA backend.
Status make_cuda_decoder_memory(int device, size_t workspace_bytes, size_t metadata_bytes,
                                std::unique_ptr<DecoderMemory>* memory);

}  // namespace mla::detail
