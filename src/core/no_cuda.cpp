// The CUDA backend's entry points for builds without CUDA: every call reports kUnsupported.
#include <string>

#include "core/backends.h"

namespace mla::cuda {
namespace {

Status unsupported() {
  return Status(StatusCode::kUnsupported,
                "this build of mla-decode has no CUDA backend (configure with a CUDA toolkit)");
}

}  // namespace

bool available_in_build() { return false; }
int device_count() { return 0; }
Status check_device(int) { return unsupported(); }
Status workspace_size(const DecodeShape&, int, size_t*) { return unsupported(); }
Status plan(const detail::DecodeProblem&, void*, size_t, void*) { return unsupported(); }
Status decode_planned(const detail::DecodeProblem&, void*, size_t, void*) { return unsupported(); }
Status check_data_errors(const void*, size_t, int, void*) { return unsupported(); }
Status write_kv_cache(const detail::KvWriteProblem&, void*) { return unsupported(); }
Status merge_states(const detail::MergeProblem&, void*) { return unsupported(); }

}  // namespace mla::cuda
