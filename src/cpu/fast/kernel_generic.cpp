// Portable kernel: 8-lane "vectors" as plain arrays, left to the compiler's auto-vectoriser
// for the baseline ISA. Used where neither AVX2 nor AVX-512 is available, and by the tests.
#include <cmath>

#include "core/half.h"
#include "cpu/fast/kernel_impl.h"

namespace mla::cpu::fast {
namespace {

struct GenericOps {
  static constexpr int kWidth = 8;
  static constexpr int kQkTokens2 = 2, kQkTokens1 = 4;
  static constexpr int kPvCols2 = 2, kPvCols1 = 4;
  struct V {
    float x[kWidth];
  };

  template <typename F>
  static V map(F f) {
    V r;
    for (int i = 0; i < kWidth; ++i) r.x[i] = f(i);
    return r;
  }
  static V zero() { return set1(0.0f); }
  static V set1(float a) {
    return map([&](int) { return a; });
  }
  static V load(const float* p) {
    return map([&](int i) { return p[i]; });
  }
  static V bcast(const float* p) { return set1(*p); }
  static void store(float* p, V a) {
    for (int i = 0; i < kWidth; ++i) p[i] = a.x[i];
  }
  static V fma(V a, V b, V c) {
    return map([&](int i) { return a.x[i] * b.x[i] + c.x[i]; });
  }
  static V add(V a, V b) {
    return map([&](int i) { return a.x[i] + b.x[i]; });
  }
  static V sub(V a, V b) {
    return map([&](int i) { return a.x[i] - b.x[i]; });
  }
  static V max(V a, V b) {
    return map([&](int i) { return a.x[i] > b.x[i] ? a.x[i] : b.x[i]; });
  }
  static V mask_ge(V a, V t, V lim, V fill) {
    return map([&](int i) { return t.x[i] >= lim.x[i] ? fill.x[i] : a.x[i]; });
  }
  static V mask_eq(V a, V value, V fill) {
    return map([&](int i) { return a.x[i] == value.x[i] ? fill.x[i] : a.x[i]; });
  }
  static V exp2(V a) {
    return map([&](int i) { return std::exp2(a.x[i]); });
  }

  static void load_halves(const uint16_t* src, float* dst, int n, detail::ElemType type) {
    if (type == detail::ElemType::kBFloat16) {
      for (int i = 0; i < n; ++i) dst[i] = detail::bf16_to_float(src[i]);
    } else {
      for (int i = 0; i < n; ++i) dst[i] = detail::fp16_to_float(src[i]);
    }
  }
  static void store_halves(const float* src, uint16_t* dst, int n, detail::ElemType type) {
    if (type == detail::ElemType::kBFloat16) {
      for (int i = 0; i < n; ++i) dst[i] = detail::float_to_bf16(src[i]);
    } else {
      for (int i = 0; i < n; ++i) dst[i] = detail::float_to_fp16(src[i]);
    }
  }
};

}  // namespace

const KernelTable& generic_kernels() {
  static const KernelTable table{"generic", run_piece<GenericOps, false>};
  return table;
}

}  // namespace mla::cpu::fast
