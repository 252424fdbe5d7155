// Host side of tensor_map.h.
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "cuda/sm90/tensor_map.h"

namespace mla::cuda::sm90 {
namespace {

struct Key {
  const void* ptr;
  int64_t num_pages, page_size, stride_page, stride_row;
  int32_t dtype;
  bool operator==(const Key& o) const {
    return ptr == o.ptr && num_pages == o.num_pages && page_size == o.page_size &&
           stride_page == o.stride_page && stride_row == o.stride_row && dtype == o.dtype;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = std::hash<const void*>()(k.ptr);
    for (int64_t v : {k.num_pages, k.page_size, k.stride_page, k.stride_row, int64_t{k.dtype}}) {
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    }
    return h;
  }
};

// Entries kept at most; an engine has one cache per layer (and maybe one per dtype or draft
// model), so this bounds a process that allocates caches over and over, not a real engine.
constexpr size_t kMaxEntries = 1024;

PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      f = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

bool encode(const detail::DecodeProblem& p, CUtensorMap* map) {
  const auto fn = encode_fn();
  if (fn == nullptr || p.page_size < kMinTmaPageSize) return false;
  const uint64_t elem = 2;
  const uint64_t row_bytes = static_cast<uint64_t>(p.kv_stride_row) * elem;
  const uint64_t page_bytes = static_cast<uint64_t>(p.kv_stride_page) * elem;
  if (reinterpret_cast<uintptr_t>(p.kv) % 16 != 0 || row_bytes % 16 != 0 || page_bytes % 16 != 0 ||
      row_bytes >= (uint64_t{1} << 40) || page_bytes >= (uint64_t{1} << 40)) {
    return false;
  }
  const cuuint64_t dims[3] = {576, static_cast<cuuint64_t>(p.page_size),
                              static_cast<cuuint64_t>(p.num_pages)};
  const cuuint64_t strides[2] = {row_bytes, page_bytes};
  // One box: 64 columns (128 bytes, the swizzle span) of one page's rows of a 64-token tile.
  const cuuint32_t box[3] = {64, static_cast<cuuint32_t>(std::min(p.page_size, 64)), 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  const CUtensorMapDataType type = p.dtype == detail::ElemType::kBFloat16
                                       ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                       : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return fn(map, type, 3, const_cast<void*>(p.kv), dims, strides, box, elem_strides,
            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace

bool kv_tensor_map(const detail::DecodeProblem& p, CUtensorMap* map) {
  if (p.page_size < kMinTmaPageSize) return false;
  static std::mutex mutex;
  static std::unordered_map<Key, CUtensorMap, KeyHash> cache;
  const Key key{p.kv,
                p.num_pages,
                p.page_size,
                p.kv_stride_page,
                p.kv_stride_row,
                static_cast<int32_t>(p.dtype)};
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = cache.find(key); it != cache.end()) {
    *map = it->second;
    return true;
  }
  CUtensorMap m;
  std::memset(&m, 0, sizeof m);
  if (!encode(p, &m)) return false;
  if (cache.size() >= kMaxEntries) cache.clear();
  cache.emplace(key, m);
  *map = m;
  return true;
}

}  // namespace mla::cuda::sm90
