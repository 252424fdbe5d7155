// Tensor maps (TMA descriptors) of paged KV caches, built on the host through the runtime's
// driver entry point (no libcuda link) and cached per (pointer, shape, strides, dtype): an
// engine's per-layer caches are encoded once, and a captured CUDA graph keeps the map it was
// captured with, which stays valid as long as the cache does.
#pragma once

#include <cuda.h>

#include "core/problem.h"

namespace mla::cuda::sm90 {

// Smallest page size loaded by TMA: a box of fewer rows than 8 (1 KB) would not start on the
// 128-byte swizzle's 1 KB atom in a tile.
inline constexpr int kMinTmaPageSize = 8;

// The 3-D map (576 columns, page_size tokens, num_pages) of `p.kv` with boxes of 64 columns x
// min(page_size, 64) tokens and the 128-byte swizzle, for page_size >= kMinTmaPageSize. False
// (and nothing written) when the cache cannot be described (alignment, strides, a driver without
// TMA): callers then use cp.async.
bool kv_tensor_map(const detail::DecodeProblem& p, CUtensorMap* map);

}  // namespace mla::cuda::sm90
