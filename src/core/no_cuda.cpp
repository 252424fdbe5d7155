// The CUDA backend's entry points for builds without CUDA: every call reports kUnsupported.
#include <string>

#include "core/backends.h"
#include "core/sparse_backends.h"

namespace mla::cuda {
namespace {

Status unsupported(const char* fn) {
  return Status(
      StatusCode::kUnsupported,
      std::string(fn) +
          ": this build of mla-decode has no CUDA backend (configure with a CUDA toolkit)");
}

}  // namespace

bool available_in_build() { return false; }
int device_count() { return 0; }
Status workspace_size(const char* fn, const DecodeShape&, int, size_t*) { return unsupported(fn); }
Status decode(const char* fn, const detail::DecodeProblem&, int, const Workspace&, DecodeStage,
              void*) {
  return unsupported(fn);
}
Status check_data_errors(const char* fn, const Workspace&, int, void*) { return unsupported(fn); }
Status write_kv_cache(const char* fn, const detail::KvWriteProblem&, int, void*) {
  return unsupported(fn);
}
Status merge_states(const char* fn, const detail::MergeProblem&, int, void*) {
  return unsupported(fn);
}
Status sparse_workspace_size(const char* fn, const SparseDecodeShape&, int, size_t*) {
  return unsupported(fn);
}
Status sparse_decode(const char* fn, const detail::SparseDecodeProblem&, int, const Workspace&,
                     void*) {
  return unsupported(fn);
}
std::vector<std::string> kernel_names(int, KvFormat) { return {}; }
KernelOverride kernel_override() { return {}; }
void set_kernel_override(const KernelOverride&) {}

}  // namespace mla::cuda
