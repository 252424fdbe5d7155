#include "cpu/fast/isa.h"

#include <cstdlib>
#include <cstring>

namespace mla::cpu::fast {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kGeneric: return "generic";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "unknown";
}

Isa best_isa() {
#if MLA_CPU_X86
  static const Isa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
      return Isa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
      return Isa::kAvx2;
    }
    return Isa::kGeneric;
  }();
  return best;
#else
  return Isa::kGeneric;
#endif
}

Isa selected_isa() {
  const Isa best = best_isa();
  const char* env = std::getenv("MLA_CPU_ISA");
  if (env == nullptr) return best;
  for (Isa isa : {Isa::kGeneric, Isa::kAvx2, Isa::kAvx512}) {
    if (std::strcmp(env, isa_name(isa)) == 0) return isa < best ? isa : best;
  }
  return best;
}

const KernelTable& kernels(Isa isa) {
#if MLA_CPU_X86
  if (isa == Isa::kAvx512) return avx512_kernels();
  if (isa == Isa::kAvx2) return avx2_kernels();
#endif
  return generic_kernels();
}

}  // namespace mla::cpu::fast
