// Inline-PTX wrappers for Hopper's warpgroup MMA (wgmma.mma_async, sm_90a only): shared-memory
// matrix descriptors, the fence / commit / wait protocol and the two shapes the sm90 decode
// kernel issues.
//
// Accumulator layout of m64nNk16 (fp32): warp w of the warpgroup holds rows 16w..16w+15 exactly
// as mma.sync m16n8 holds a 16 x 8 tile, repeated over N / 8 column tiles: d[4 * nt + e] is row
// 16w + g + 8 * (e / 2), column 8 * nt + 2 * c + e % 2 (g = lane / 4, c = lane % 4).
// https://docs.nvidia.com/cuda/parallel-thread-execution/#asynchronous-warpgroup-level-matrix-instructions
#pragma once

#include <cstdint>

// wgmma exists only in the arch-specific sm_90a target.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MLA_HAS_WGMMA 1
#else
#define MLA_HAS_WGMMA 0
#endif

namespace mla::cuda::wgmma {

// Shared-memory matrix descriptor for the 128-byte swizzle: start address, leading and stride
// byte offsets (all in 16-byte units), swizzle mode 1 in bits 62..63. Swizzle atoms (8 rows of
// 128 bytes, chunk ^ (row & 7)) must sit on 1024-byte boundaries.
//   K-major (rows contiguous along K): SBO = distance between 8-row groups; LBO unused.
//   MN-major: LBO = distance between 64-element groups along M / N, SBO = between 8-row groups
//   along K.
// https://docs.nvidia.com/cuda/parallel-thread-execution/#asynchronous-warpgroup-level-matrix-shared-memory-layout-matrix-descriptor
__device__ __forceinline__ uint64_t desc_sw128(uint32_t smem_addr, uint32_t lbo_bytes,
                                               uint32_t sbo_bytes) {
  return static_cast<uint64_t>((smem_addr & 0x3ffff) >> 4) |
         (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3fff) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3fff) << 32) | (uint64_t{1} << 62);
}

// The descriptor `desc` with its start address moved by `bytes` (a multiple of 16). Shared
// addresses are below 2^18, so the 14-bit field cannot carry into the next one.
__device__ __forceinline__ uint64_t desc_add(uint64_t desc, uint32_t bytes) {
  return desc + (bytes >> 4);
}

// Orders this thread's register and shared-memory accesses before the wgmma that follow.
__device__ __forceinline__ void fence() {
#if MLA_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void commit_group() {
#if MLA_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most kPending committed wgmma groups of the warpgroup are in flight.
template <int kPending>
__device__ __forceinline__ void wait_group() {
#if MLA_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Makes generic-proxy writes to shared memory (st.shared, cp.async) visible to the async proxy
// that wgmma reads through. Each writing thread issues it before the barrier that publishes them.
__device__ __forceinline__ void fence_proxy_async() {
#if MLA_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Keeps the compiler from moving accesses of `r` across a wgmma wait: the register is treated as
// rewritten here.
template <int N>
__device__ __forceinline__ void fence_operands(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// Operand lists of the accumulators: registers {%0, ..} in the instruction, "+f" bindings.
#define MLA_WGMMA_REGS_16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define MLA_WGMMA_OUTS_16                                                                         \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
      "+f"(d[15])
#define MLA_WGMMA_REGS_128                                                                 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "  \
  "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, "  \
  "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, "  \
  "%70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, "  \
  "%87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, "    \
  "%103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, "   \
  "%117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define MLA_WGMMA_OUTS_128                                                                        \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),  \
      "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),  \
      "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),  \
      "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),  \
      "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),  \
      "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]),  \
      "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),  \
      "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]),  \
      "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]),  \
      "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]),  \
      "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]),          \
      "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]),         \
      "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]),         \
      "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]),         \
      "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

#define MLA_WGMMA_REGS_32                                                                  \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, " \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define MLA_WGMMA_OUTS_32                                                                         \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

// D[64 x 32] (+)= A[64 x 16] * B[16 x 32], A and B from shared memory (K-major); TYPE is the
// PTX element type of A and B ("bf16" or "f16").
#define MLA_WGMMA_M64N32K16_SS(TYPE)                                                    \
  asm volatile(                                                                         \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"                                      \
      "wgmma.mma_async.sync.aligned.m64n32k16.f32." TYPE "." TYPE " " MLA_WGMMA_REGS_16 \
      ", %16, %17, p, 1, 1, 0, 0;\n}\n"                                                 \
      : MLA_WGMMA_OUTS_16                                                               \
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)))

template <bool kBf16>
__device__ __forceinline__ void wgmma_m64n32k16_ss(float (&d)[16], uint64_t desc_a, uint64_t desc_b,
                                                   bool accumulate) {
#if MLA_HAS_WGMMA
  if constexpr (kBf16) {
    MLA_WGMMA_M64N32K16_SS("bf16");
  } else {
    MLA_WGMMA_M64N32K16_SS("f16");
  }
#else
  __trap();
#endif
}

// D[64 x 64] (+)= A[64 x 16] * B[16 x 64], A and B from shared memory (K-major).
#define MLA_WGMMA_M64N64K16_SS(TYPE)                                                    \
  asm volatile(                                                                         \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                      \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " " MLA_WGMMA_REGS_32 \
      ", %32, %33, p, 1, 1, 0, 0;\n}\n"                                                 \
      : MLA_WGMMA_OUTS_32                                                               \
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)))

template <bool kBf16>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                                   bool accumulate) {
#if MLA_HAS_WGMMA
  if constexpr (kBf16) {
    MLA_WGMMA_M64N64K16_SS("bf16");
  } else {
    MLA_WGMMA_M64N64K16_SS("f16");
  }
#else
  __trap();
#endif
}

// D[64 x 64] += A[64 x 16] * B[16 x 64], A from registers (the mma.sync m16n8k16 A fragment of
// each warp's 16 rows: {(g, 2c), (g + 8, 2c), (g, 2c + 8), (g + 8, 2c + 8)}, two values each),
// B from shared memory (K-major).
#define MLA_WGMMA_M64N64K16_RS(TYPE)                                                    \
  asm volatile(                                                                         \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                      \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE " " MLA_WGMMA_REGS_32 \
      ", {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                   \
      : MLA_WGMMA_OUTS_32                                                               \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1))

template <bool kBf16>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const uint32_t (&a)[4],
                                                   uint64_t desc_b) {
#if MLA_HAS_WGMMA
  if constexpr (kBf16) {
    MLA_WGMMA_M64N64K16_RS("bf16");
  } else {
    MLA_WGMMA_M64N64K16_RS("f16");
  }
#else
  __trap();
#endif
}

// D[64 x 256] += A[64 x 16] * B[16 x 256], A from shared memory (K-major), B from shared memory
// MN-major (transposed).
#define MLA_WGMMA_M64N256K16_SS_TB(TYPE)                                                  \
  asm volatile(                                                                           \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                       \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE " " MLA_WGMMA_REGS_128 \
      ", %128, %129, p, 1, 1, 0, 1;\n}\n"                                                 \
      : MLA_WGMMA_OUTS_128                                                                \
      : "l"(desc_a), "l"(desc_b), "r"(1))

template <bool kBf16>
__device__ __forceinline__ void wgmma_m64n256k16_ss_tb(float (&d)[128], uint64_t desc_a,
                                                       uint64_t desc_b) {
#if MLA_HAS_WGMMA
  if constexpr (kBf16) {
    MLA_WGMMA_M64N256K16_SS_TB("bf16");
  } else {
    MLA_WGMMA_M64N256K16_SS_TB("f16");
  }
#else
  __trap();
#endif
}

// D[64 x 256] += A[64 x 16] * B[16 x 256], A from registers (layout as in wgmma_m64n64k16_rs),
// B from shared memory MN-major (transposed).
#define MLA_WGMMA_M64N256K16_RS_TB(TYPE)                                                  \
  asm volatile(                                                                           \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"                                       \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPE "." TYPE " " MLA_WGMMA_REGS_128 \
      ", {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"                                \
      : MLA_WGMMA_OUTS_128                                                                \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1))

template <bool kBf16>
__device__ __forceinline__ void wgmma_m64n256k16_rs_tb(float (&d)[128], const uint32_t (&a)[4],
                                                       uint64_t desc_b) {
#if MLA_HAS_WGMMA
  if constexpr (kBf16) {
    MLA_WGMMA_M64N256K16_RS_TB("bf16");
  } else {
    MLA_WGMMA_M64N256K16_RS_TB("f16");
  }
#else
  __trap();
#endif
}

#undef MLA_WGMMA_M64N256K16_RS_TB
#undef MLA_WGMMA_M64N64K16_RS
#undef MLA_WGMMA_M64N64K16_SS
#undef MLA_WGMMA_OUTS_32
#undef MLA_WGMMA_REGS_32
#undef MLA_WGMMA_M64N256K16_SS_TB
#undef MLA_WGMMA_M64N32K16_SS
#undef MLA_WGMMA_OUTS_128
#undef MLA_WGMMA_REGS_128
#undef MLA_WGMMA_OUTS_16
#undef MLA_WGMMA_REGS_16

}  // namespace mla::cuda::wgmma
