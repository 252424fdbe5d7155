// Run-time choice of the CPU kernel: the widest ISA that both the build and the CPU (cpuid)
// support, optionally capped by the environment variable MLA_CPU_ISA=generic|avx2|avx512
// (read on every call, so tests can force each variant).
#pragma once

#include "cpu/fast/kernel.h"

namespace mla::cpu::fast {

enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa);
// Widest variant this build has and this CPU can run.
Isa best_isa();
// best_isa() capped by MLA_CPU_ISA; an unknown value is ignored.
Isa selected_isa();
// Kernels of `isa`, which must be <= best_isa().
const KernelTable& kernels(Isa isa);

}  // namespace mla::cpu::fast
