// Run-time choice of the CPU kernel. By default the widest variant both the build and the CPU
// (cpuid) support, except avx512bf16: on Sapphire Rapids vdpbf16ps retires at about 0.6x the
// multiply-add rate of fp32 FMA (measured), so the bf16-dot scores made decode 2x slower there;
// it stays available for CPUs where the instruction is faster. MLA_CPU_ISA=generic|avx2|avx512|
// avx512bf16 picks a variant (read on every call, so tests can force each one); a variant the
// CPU lacks, or an unknown name, falls back to the default.
#pragma once

#include "cpu/fast/kernel.h"

namespace mla::cpu::fast {

enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

inline constexpr Isa kAllIsas[] = {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16};

const char* isa_name(Isa isa);
// Whether this build has the variant and this CPU can run it.
bool isa_supported(Isa isa);
Isa default_isa();
// MLA_CPU_ISA when it names a supported variant, else default_isa().
Isa selected_isa();
// Kernels of `isa`, which must be supported.
const KernelTable& kernels(Isa isa);

}  // namespace mla::cpu::fast
