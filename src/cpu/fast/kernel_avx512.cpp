// AVX-512 kernel (Skylake-SP / Zen 4 and later), selected only when cpuid reports AVX-512
// F/BW/DQ/VL.
#include "cpu/fast/kernel_impl.h"
#include "cpu/fast/ops_avx512.h"

namespace mla::cpu::fast {

const KernelTable& avx512_kernels() {
  static const KernelTable table{"avx512", run_piece<Avx512Ops, false>};
  return table;
}

}  // namespace mla::cpu::fast
