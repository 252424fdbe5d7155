// KV cache write and LSE merge on the CPU: against direct expectations, with poisoned
// destinations, -inf on either and both sides, and NaN values behind -inf.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "core/half.h"
#include "harness.h"

namespace mla::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(KvCacheWrite, ScattersTokensAndSkipsPadding) {
  const int tokens = 6, num_pages = 4, page_size = 4;
  std::mt19937 rng(3);
  std::vector<uint16_t> kv_c(tokens * 512), k_pe(tokens * 64);
  for (auto& v : kv_c) v = static_cast<uint16_t>(rng() & 0x3fff);
  for (auto& v : k_pe) v = static_cast<uint16_t>(rng() & 0x3fff);
  std::vector<int64_t> slots = {5, -1, 0, 15, -1, 9};
  std::vector<uint16_t> cache(num_pages * page_size * 576, kPoison16);
  KvCacheWriteParams p;
  p.kv_c = make_tensor(kv_c.data(), DType::kBFloat16, {tokens, 512});
  p.k_pe = make_tensor(k_pe.data(), DType::kBFloat16, {tokens, 64});
  p.slot_mapping = make_tensor(slots.data(), DType::kInt64, {tokens});
  p.kv_cache = make_tensor(cache.data(), DType::kBFloat16, {num_pages, page_size, 576});
  ASSERT_TRUE(write_kv_cache(p, {}).ok());
  std::vector<bool> written(num_pages * page_size, false);
  for (int t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    written[slots[t]] = true;
    const uint16_t* row = &cache[slots[t] * 576];
    for (int d = 0; d < 512; ++d) ASSERT_EQ(row[d], kv_c[t * 512 + d]) << "t=" << t << " d=" << d;
    for (int d = 0; d < 64; ++d) ASSERT_EQ(row[512 + d], k_pe[t * 64 + d]) << "t=" << t;
  }
  for (int s = 0; s < num_pages * page_size; ++s) {
    if (written[s]) continue;
    for (int d = 0; d < 576; ++d) ASSERT_EQ(cache[s * 576 + d], kPoison16) << "slot " << s;
  }
}

TEST(KvCacheWrite, RejectsOutOfRangeSlotsBeforeWriting) {
  std::vector<uint16_t> kv_c(2 * 512, 0), k_pe(2 * 64, 0);
  std::vector<int64_t> slots = {3, 16};  // capacity 16
  std::vector<uint16_t> cache(4 * 4 * 576, kPoison16);
  KvCacheWriteParams p;
  p.kv_c = make_tensor(kv_c.data(), DType::kBFloat16, {2, 512});
  p.k_pe = make_tensor(k_pe.data(), DType::kBFloat16, {2, 64});
  p.slot_mapping = make_tensor(slots.data(), DType::kInt64, {2});
  p.kv_cache = make_tensor(cache.data(), DType::kBFloat16, {4, 4, 576});
  const Status s = write_kv_cache(p, {});
  EXPECT_EQ(s.code(), StatusCode::kDataError);
  EXPECT_NE(s.message().find("slot_mapping[1] = 16"), std::string::npos) << s.message();
  for (uint16_t v : cache) ASSERT_EQ(v, kPoison16);
  slots[1] = -2;
  EXPECT_EQ(write_kv_cache(p, {}).code(), StatusCode::kDataError);
  p.slot_mapping.dtype = DType::kInt32;
  const Status dtype = write_kv_cache(p, {});
  EXPECT_EQ(dtype.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(dtype.message().find("'slot_mapping'"), std::string::npos) << dtype.message();
}

struct MergeCase {
  float lse_a, lse_b;
};

class Merge : public ::testing::TestWithParam<DType> {};

TEST_P(Merge, MatchesFormulaWithInfinities) {
  const DType dtype = GetParam();
  const int T = 5, H = 3, D = 40;
  // Per token: both finite, a = -inf, b = -inf, both -inf, a much larger than b.
  const MergeCase lses[T] = {
      {1.5f, 0.25f}, {-kInf, 2.0f}, {0.5f, -kInf}, {-kInf, -kInf}, {40.f, -3.f}};
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-1, 1);
  const size_t esize = dtype_size(dtype);
  std::vector<uint8_t> a(T * H * D * esize), b(a.size()), out(a.size(), 0xff);
  std::vector<float> va(T * H * D), vb(T * H * D);
  auto put = [&](std::vector<uint8_t>& buf, int i, float v) {
    if (dtype == DType::kFloat32) {
      reinterpret_cast<float*>(buf.data())[i] = v;
    } else {
      reinterpret_cast<uint16_t*>(buf.data())[i] =
          dtype == DType::kBFloat16 ? detail::float_to_bf16(v) : detail::float_to_fp16(v);
    }
  };
  auto get = [&](const std::vector<uint8_t>& buf, int i) -> float {
    if (dtype == DType::kFloat32) return reinterpret_cast<const float*>(buf.data())[i];
    const uint16_t h = reinterpret_cast<const uint16_t*>(buf.data())[i];
    return dtype == DType::kBFloat16 ? detail::bf16_to_float(h) : detail::fp16_to_float(h);
  };
  // lse in [H, T] layout (vLLM's), viewed as [T, H] through strides.
  std::vector<float> la(H * T), lb(H * T), lo(H * T, std::nanf(""));
  for (int t = 0; t < T; ++t) {
    for (int h = 0; h < H; ++h) {
      la[h * T + t] = lses[t].lse_a;
      lb[h * T + t] = lses[t].lse_b;
      for (int d = 0; d < D; ++d) {
        const int i = (t * H + h) * D + d;
        // Values behind a -inf LSE are NaN: they must never be read.
        put(a, i, lses[t].lse_a == -kInf ? std::nanf("") : dist(rng));
        put(b, i, lses[t].lse_b == -kInf ? std::nanf("") : dist(rng));
        va[i] = get(a, i);
        vb[i] = get(b, i);
      }
    }
  }
  MergeParams p;
  p.out_a = make_tensor(a.data(), dtype, {T, H, D});
  p.out_b = make_tensor(b.data(), dtype, {T, H, D});
  p.out = make_tensor(out.data(), dtype, {T, H, D});
  p.lse_a = make_tensor(la.data(), DType::kFloat32, {T, H}, {1, T});
  p.lse_b = make_tensor(lb.data(), DType::kFloat32, {T, H}, {1, T});
  p.lse = make_tensor(lo.data(), DType::kFloat32, {T, H}, {1, T});
  ASSERT_TRUE(merge_states(p, {}).ok());
  const double tol = dtype == DType::kFloat32 ? 1e-6 : dtype == DType::kFloat16 ? 2e-3 : 1e-2;
  for (int t = 0; t < T; ++t) {
    const double x = lses[t].lse_a, y = lses[t].lse_b;
    const double m = std::max(x, y);
    const bool empty = x == -kInf && y == -kInf;
    const double wa = x == -kInf ? 0 : std::exp(x - m), wb = y == -kInf ? 0 : std::exp(y - m);
    for (int h = 0; h < H; ++h) {
      const float lse = lo[h * T + t];
      if (empty) {
        EXPECT_EQ(lse, -kInf) << "t=" << t;
      } else {
        EXPECT_NEAR(lse, m + std::log(wa + wb), 1e-5) << "t=" << t;
      }
      for (int d = 0; d < D; ++d) {
        const int i = (t * H + h) * D + d;
        double want = 0;
        if (wa > 0) want += wa * va[i];
        if (wb > 0) want += wb * vb[i];
        if (!empty) want /= wa + wb;
        ASSERT_NEAR(get(out, i), want, tol) << "t=" << t << " h=" << h << " d=" << d;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Merge,
                         ::testing::Values(DType::kBFloat16, DType::kFloat16, DType::kFloat32),
                         [](const auto& param_info) {
                           return std::string(dtype_name(param_info.param));
                         });

TEST(MergeValidation, NamesTheArgument) {
  std::vector<float> a(2 * 3 * 8), b(a.size()), o(a.size()), la(6), lb(6);
  MergeParams p;
  p.out_a = make_tensor(a.data(), DType::kFloat32, {2, 3, 8});
  p.out_b = make_tensor(b.data(), DType::kFloat32, {2, 3, 7});
  p.out = make_tensor(o.data(), DType::kFloat32, {2, 3, 8});
  p.lse_a = make_tensor(la.data(), DType::kFloat32, {2, 3});
  p.lse_b = make_tensor(lb.data(), DType::kFloat32, {2, 3});
  const Status s = merge_states(p, {});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'out_b'"), std::string::npos) << s.message();
  p.out_b.shape[2] = 8;
  p.lse_b.shape[1] = 2;
  const Status l = merge_states(p, {});
  EXPECT_NE(l.message().find("'lse_b'"), std::string::npos) << l.message();
}

}  // namespace
}  // namespace mla::testing
