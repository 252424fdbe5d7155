// The CUDA backend's sparse decode entry points (src/core/sparse_backends.h): the configuration
// choice, the shape-only schedule and workspace, and the launches (sparse.h).
//
// Configurations (sparse/config.h), all 32-entry gather tiles (a top-k list is often short and
// cut into splits; 32 tokens keep a 64-row tile within 227 KB with 4 stages in flight):
//   m4n32s4w8 / m4n32s2w8  64 heads a CTA, 8 warps (h_q > 16);
//   m1n32s4w4 / m1n32s2w4  16 heads a CTA, 4 warps (h_q <= 16, and every h_q where a 64-head tile
//                          does not fit: about 100 KB of shared memory a block, sm_86 / sm_89).
// The 4-stage rings need Hopper's 227 KB; the 2-stage ones fit the A100's 163 KB.
// MLA_CUDA_SMEM_LIMIT (registry.h's override) caps the shared memory the choice may use, so a
// large card exercises the smaller cards' configurations; MLA_CUDA_KERNEL names dense kernels
// only and does not apply here.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <string>
#include <vector>

#include "core/sparse_backends.h"
#include "core/status.h"
#include "core/validate.h"
#include "cuda/common/check.h"
#include "cuda/common/device.h"
#include "cuda/common/elem.cuh"
#include "cuda/registry.h"
#include "cuda/sparse/config.h"
#include "cuda/sparse/sparse.h"

namespace mla::cuda {
namespace {

struct SparseEntry {
  const char* name;
  int rows_per_cta;
  int block_n;
  detail::ElemType elem;
  size_t smem_bytes;
  sparse::LaunchFn launch;
};

template <typename Cfg, typename Traits>
SparseEntry entry(const char* name) {
  return SparseEntry{name,          Cfg::kRows,      Cfg::kBlockN,
                     Traits::kElem, Cfg::kSmemBytes, &sparse::launch_sparse<Cfg, Traits>};
}

// In order of preference among the entries of one tile height: the first that fits is chosen.
const std::vector<SparseEntry>& sparse_registry() {
  using sparse::Config;
  // clang-format off
  static const std::vector<SparseEntry> table = {
      entry<Config<4, 32, 4, 8>, Bf16>("m4n32s4w8"), entry<Config<4, 32, 4, 8>, Fp16>("m4n32s4w8"),
      entry<Config<4, 32, 2, 8>, Bf16>("m4n32s2w8"), entry<Config<4, 32, 2, 8>, Fp16>("m4n32s2w8"),
      entry<Config<1, 32, 4, 4>, Bf16>("m1n32s4w4"), entry<Config<1, 32, 4, 4>, Fp16>("m1n32s4w4"),
      entry<Config<1, 32, 2, 4>, Bf16>("m1n32s2w4"), entry<Config<1, 32, 2, 4>, Fp16>("m1n32s2w4"),
  };
  // clang-format on
  return table;
}

// Everything the launches of one call need, from shapes and the device alone.
struct SparsePlan {
  const SparseEntry* kernel = nullptr;
  bool pdl = false;
  sparse::Schedule schedule;
  sparse::Layout layout;
};

Status make_plan(int device, int64_t batch, int64_t s_q, int64_t h_q, int64_t topk,
                 detail::ElemType elem, SparsePlan* plan) {
  DeviceInfo info;
  MLA_RETURN_IF_ERROR(device_info(device, &info));
  const size_t cap = active_override().smem_limit;
  const size_t smem_limit = cap > 0 && cap < info.smem_optin ? cap : info.smem_optin;
  const int height = h_q <= 16 ? 16 : 64;
  for (int pass = 0; pass < 2 && plan->kernel == nullptr; ++pass) {
    for (const SparseEntry& e : sparse_registry()) {
      if (e.elem != elem || e.smem_bytes > smem_limit) continue;
      if (pass == 0 && e.rows_per_cta != height) continue;
      plan->kernel = &e;
      break;
    }
  }
  if (plan->kernel == nullptr) {
    return Status(StatusCode::kUnsupported,
                  "CUDA device " + std::to_string(device) + " (" + std::to_string(smem_limit) +
                      " bytes of shared memory per block) fits no sparse decode kernel");
  }
  plan->pdl = info.major >= 9;
  plan->schedule = sparse::schedule(batch, s_q, h_q, topk, plan->kernel->rows_per_cta,
                                    plan->kernel->block_n, info.sm_count);
  const int64_t ctas = batch * s_q * plan->schedule.row_tiles * plan->schedule.num_splits;
  if (ctas > INT32_MAX) {
    return Status(StatusCode::kUnsupported, "batch * s_q = " + std::to_string(batch * s_q) +
                                                " query tokens exceed the sparse grid's limit");
  }
  plan->layout = sparse::Layout::make(batch, s_q, h_q, plan->schedule);
  return Status();
}

// The sparse kernels gather bf16/fp16 tokens only: fp8 caches (which the CPU serves) are refused
// before anything is checked against the device or launched.
Status check_kv_format(const char* fn, detail::KvType kv_type) {
  if (kv_type == detail::KvType::kHalf) return Status();
  return detail::argument_error(StatusCode::kUnsupported, fn, "kv_format",
                                kv_format_name(static_cast<KvFormat>(kv_type)),
                                " caches are not supported by sparse decode on CUDA yet (bf16 "
                                "and fp16 caches are; the CPU backend serves every format)");
}

}  // namespace

Status sparse_workspace_size(const char* fn, const SparseDecodeShape& shape, int device,
                             size_t* bytes) {
  // Both element types have the same configurations, so the same schedule and layout.
  SparsePlan plan;
  MLA_RETURN_IF_ERROR(
      detail::with_context(fn, make_plan(device, shape.batch, shape.s_q, shape.h_q, shape.topk,
                                         detail::ElemType::kBFloat16, &plan)));
  *bytes = plan.layout.bytes;
  return Status();
}

Status sparse_decode(const char* fn, const detail::SparseDecodeProblem& p, int device,
                     const Workspace& ws, void* stream) {
  MLA_RETURN_IF_ERROR(check_kv_format(fn, p.kv_type));
  SparsePlan plan;
  MLA_RETURN_IF_ERROR(
      detail::with_context(fn, make_plan(device, p.batch, p.s_q, p.h_q, p.topk, p.dtype, &plan)));
  MLA_RETURN_IF_ERROR(detail::check_workspace(fn, ws, plan.layout.bytes));
  if (p.batch == 0) return Status();
  MLA_RETURN_IF_ERROR(check_pointer_device(fn, "out", p.out, device));
  MLA_RETURN_IF_ERROR(check_pointer_device(fn, "workspace", ws.data, device));
  DeviceGuard guard(device);
  MLA_RETURN_IF_ERROR(detail::with_context(fn, guard.status()));
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const sparse::View view = sparse::View::make(ws.data, plan.layout, plan.schedule);
  MLA_RETURN_IF_ERROR(detail::with_context(fn, sparse::launch_reset(p, view, st, plan.pdl)));
  MLA_RETURN_IF_ERROR(detail::with_context(fn, plan.kernel->launch(p, view, st, plan.pdl)));
  if (plan.schedule.num_splits == 1) return Status();
  return detail::with_context(fn, sparse::launch_combine(p, view, st, plan.pdl));
}

}  // namespace mla::cuda
