// mla::Decoder's CUDA memory for builds without the CUDA backend.
#include "core/decoder_backend.h"

namespace mla::detail {

Status make_cuda_decoder_memory(int, size_t, size_t, std::unique_ptr<DecoderMemory>*) {
  return Status(StatusCode::kUnsupported,
                "this build of mla-decode has no CUDA backend (configure with a CUDA toolkit)");
}

}  // namespace mla::detail
