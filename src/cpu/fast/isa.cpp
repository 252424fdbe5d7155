#include "cpu/fast/isa.h"

#include <cstdlib>
#include <cstring>

#if MLA_CPU_X86
#include <cpuid.h>
#endif

namespace mla::cpu::fast {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return "generic";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx512Bf16:
      return "avx512bf16";
  }
  return "unknown";
}

namespace {

// Widest variant this build has and this CPU can run; the variants are nested (each needs the
// features of the ones below it).
Isa widest_isa() {
#if MLA_CPU_X86
  static const Isa widest = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
      // AVX512_BF16: CPUID leaf 7, sub-leaf 1, EAX bit 5 (the OS support of the zmm state is
      // already implied by the avx512f check above).
      unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
      const bool bf16 = __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5));
      return bf16 ? Isa::kAvx512Bf16 : Isa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
      return Isa::kAvx2;
    }
    return Isa::kGeneric;
  }();
  return widest;
#else
  return Isa::kGeneric;
#endif
}

}  // namespace

bool isa_supported(Isa isa) { return isa <= widest_isa(); }

Isa default_isa() {
  const Isa widest = widest_isa();
  return widest == Isa::kAvx512Bf16 ? Isa::kAvx512 : widest;
}

Isa selected_isa() {
  const char* env = std::getenv("MLA_CPU_ISA");
  if (env != nullptr) {
    for (Isa isa : kAllIsas) {
      if (std::strcmp(env, isa_name(isa)) == 0 && isa_supported(isa)) return isa;
    }
  }
  return default_isa();
}

const KernelTable& kernels([[maybe_unused]] Isa isa) {
#if MLA_CPU_X86
  if (isa == Isa::kAvx512Bf16) return avx512_bf16_kernels();
  if (isa == Isa::kAvx512) return avx512_kernels();
  if (isa == Isa::kAvx2) return avx2_kernels();
#endif
  return generic_kernels();
}

}  // namespace mla::cpu::fast
