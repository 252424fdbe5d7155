// The contract between the CPU schedule (decode.cpp) and the per-ISA attention kernels
// (kernel_generic.cpp, kernel_avx2.cpp, kernel_avx512.cpp, kernel_avx512_bf16.cpp, all built
// from kernel_impl.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/problem.h"
#include "mla/mla.h"

namespace mla::cpu::fast {

// Query rows of one request are packed row = s * h_q + h and cut into row tiles of at most
// kMaxTileRows, so every row of a tile shares each converted KV tile.
inline constexpr int kMaxTileRows = 64;
// Rows of a tile are padded to a multiple of the widest vector (16 fp32 lanes, AVX-512), so
// the scratch layout, and hence workspace_size(), does not depend on the ISA chosen.
inline constexpr int kRowPad = 16;
// Tokens per KV tile: converted to fp32 once per tile and reused by every row of the tile.
// A multiple of every micro-kernel's token block (2, 4, 6, 12, 24). 96 measured best on Zen 3
// (against 48 and 144): it amortises the per-tile softmax and out^T rescale, while the fp32
// tile (216 KiB) with q^T and out^T of a 64-row tile still fits a 512 KiB L2.
inline constexpr int kKvTile = 96;

inline constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Row-tile capacity for a request of `rows` query rows: the padded size of its largest tile.
inline constexpr int64_t tile_capacity(int64_t rows) {
  return round_up(rows < kMaxTileRows ? rows : kMaxTileRows, kRowPad);
}

// Per-thread scratch of the kernels, in floats, for row-tile capacity `cap` (a multiple of 16).
// Layout (each part 64-byte aligned): q^T [576][cap], scores [kKvTile][cap], out^T [512][cap],
// KV tile [kKvTile][576], four per-row vectors (max, sum, rescale, visible count) [cap], and
// the raw 16-bit KV tile [kKvTile][576] that the AVX512-BF16 kernel's dot products read.
inline constexpr int64_t scratch_floats(int64_t cap) {
  return (kHeadDimQK + kKvTile + kHeadDimV) * cap + kKvTile * kHeadDimQK + 4 * cap +
         kKvTile * kHeadDimQK / 2;
}

// A split partial result: per row the normalised fp32 output [cap][512] then the base-2 LSE
// (m + log2(l), -inf for a row that saw no key) [cap].
inline constexpr int64_t partial_floats(int64_t cap) { return cap * kHeadDimV + cap; }

// One piece of work: request b, query rows [row0, row0 + nrows), keys [k0, k1) (k1 <= seq_len).
// With `partial` null the piece covers all keys of its rows and writes out/lse itself; else it
// writes its normalised output and base-2 LSE to `partial` for the merge.
struct Piece {
  int32_t b;
  int32_t row0;
  int32_t nrows;
  int64_t k0;
  int64_t k1;
  float* partial;
};

struct KernelTable {
  const char* name;
  // Runs one piece with `scratch` of scratch_floats(cap) floats, 64-byte aligned, where cap is
  // tile_capacity(problem.rows()).
  void (*run_piece)(const detail::DecodeProblem& problem, const Piece& piece, float* scratch);
};

// One table per kernel translation unit; all but the generic one exist on x86-64 builds only
// (MLA_CPU_X86, see CMakeLists.txt), and isa.cpp references them only there.
const KernelTable& generic_kernels();
const KernelTable& avx2_kernels();
const KernelTable& avx512_kernels();
const KernelTable& avx512_bf16_kernels();

}  // namespace mla::cpu::fast
