// AVX-512 kernel with AVX512-BF16 (Cooper Lake, Sapphire Rapids, Zen 4 and later): for bf16
// data the scores come from vdpbf16ps on raw bf16 pairs (kernel_impl.h); fp16 data and fp8
// caches take the plain AVX-512 path. Selected only when cpuid reports AVX512_BF16 besides
// F/BW/DQ/VL.
#include <cstring>

#include "cpu/fast/kernel_impl.h"
#include "cpu/fast/ops_avx512.h"

namespace mla::cpu::fast {
namespace {

struct Avx512Bf16Ops : Avx512Ops {
  using VI = __m512i;
  static VI load_pairs(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static VI bcast_pair(const uint16_t* p) {
    uint32_t pair;
    std::memcpy(&pair, p, sizeof pair);
    return _mm512_set1_epi32(static_cast<int>(pair));
  }
  // acc[j] += a[2j] * b[2j] + a[2j + 1] * b[2j + 1], products of bf16 exact in fp32.
  static V dot_bf16(V acc, VI a, VI b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);  // bit casts
  }
};

void run_piece_bf16(const detail::DecodeProblem& p, const Piece& pc, float* scratch) {
  if (p.dtype == detail::ElemType::kBFloat16 && p.kv_type == detail::KvType::kHalf) {
    run_piece<Avx512Bf16Ops, true>(p, pc, scratch);
  } else {
    run_piece<Avx512Bf16Ops, false>(p, pc, scratch);
  }
}

}  // namespace

const KernelTable& avx512_bf16_kernels() {
  static const KernelTable table{"avx512bf16", run_piece_bf16};
  return table;
}

}  // namespace mla::cpu::fast
