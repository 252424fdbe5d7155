// KV cache write and LSE merge on the GPU, compared with the CPU backend (the reference) on
// the same inputs: destinations poisoned, values behind -inf LSEs NaN-filled, padding around
// every view checked bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>

#include "core/half.h"
#include "harness.h"

namespace mla::testing {
namespace {

constexpr Device kGpu{DeviceType::kCUDA, 0};
constexpr float kInf = std::numeric_limits<float>::infinity();

template <typename T>
std::unique_ptr<DeviceBuffer> to_device(const std::vector<T>& host) {
  return upload_vector(kGpu, host);
}

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// ---------------------------------------------------------------------------------------------
// KV cache write

struct KvWriteCase {
  int page_size;
  DType dtype;
  bool padded;  // row, page and source strides padded (still 16-byte multiples)
};

class KvWriteGpu : public GpuTest, public ::testing::WithParamInterface<KvWriteCase> {};

TEST_P(KvWriteGpu, MatchesCpuAndSkipsPaddingAndOutOfRangeSlots) {
  const KvWriteCase& k = GetParam();
  const int64_t num_pages = 7, page = k.page_size;
  const int64_t capacity = num_pages * page;
  const int64_t pad = k.padded ? 64 : 0;
  const int64_t kv_row = kHeadDimQK + pad, kv_page = page * kv_row + pad;
  const int64_t c_row = kHeadDimV + pad, pe_row = kHeadDimRope + (k.padded ? 8 : 0);
  std::mt19937_64 rng(static_cast<uint64_t>(page) * 31 + k.padded);

  // Distinct live slots in random order (a repeated slot would be a write race), interleaved
  // with padding (-1) and slots the GPU must skip: the CPU rejects those up front, so its
  // expected result treats them as padding.
  std::vector<int64_t> live(static_cast<size_t>(capacity));
  std::iota(live.begin(), live.end(), 0);
  std::shuffle(live.begin(), live.end(), rng);
  live.resize(std::min<size_t>(live.size(), 400));
  const int64_t bad[] = {-2, capacity, capacity + 7, std::numeric_limits<int64_t>::max(),
                         std::numeric_limits<int64_t>::min()};
  std::vector<int64_t> slots;
  for (size_t i = 0; i < live.size(); ++i) {
    slots.push_back(live[i]);
    if (i % 5 == 0) slots.push_back(-1);
    if (i % 7 == 0) slots.push_back(bad[(i / 7) % 5]);
  }
  const int64_t tokens = static_cast<int64_t>(slots.size());
  std::vector<int64_t> cpu_slots = slots;
  for (int64_t& s : cpu_slots) {
    if (s >= capacity || s < -1) s = -1;
  }

  std::uniform_int_distribution<int> bits(0, 0x3fff);  // finite bf16 / fp16 patterns
  std::vector<uint16_t> kv_c(static_cast<size_t>(tokens * c_row), kPoison16);
  std::vector<uint16_t> k_pe(static_cast<size_t>(tokens * pe_row), kPoison16);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int d = 0; d < kHeadDimV; ++d) kv_c[t * c_row + d] = static_cast<uint16_t>(bits(rng));
    for (int d = 0; d < kHeadDimRope; ++d) k_pe[t * pe_row + d] = static_cast<uint16_t>(bits(rng));
  }
  std::vector<uint16_t> expected(static_cast<size_t>(num_pages * kv_page), kPoison16);

  auto params = [&](Device dev, void* c, void* pe, void* sl, void* kv) {
    KvCacheWriteParams p;
    p.kv_c = make_tensor(c, k.dtype, {tokens, kHeadDimV}, {c_row, 1}, dev);
    p.k_pe = make_tensor(pe, k.dtype, {tokens, kHeadDimRope}, {pe_row, 1}, dev);
    p.slot_mapping = make_tensor(sl, DType::kInt64, {tokens}, dev);
    p.kv_cache = make_tensor(kv, k.dtype, {num_pages, page, kHeadDimQK}, {kv_page, kv_row, 1}, dev);
    return p;
  };
  ASSERT_TRUE(write_kv_cache(
                  params(Device{}, kv_c.data(), k_pe.data(), cpu_slots.data(), expected.data()), {})
                  .ok());

  auto d_c = to_device(kv_c), d_pe = to_device(k_pe), d_slots = to_device(slots);
  auto d_kv = to_device(std::vector<uint16_t>(expected.size(), kPoison16));
  const Status s =
      write_kv_cache(params(kGpu, d_c->data(), d_pe->data(), d_slots->data(), d_kv->data()), {});
  ASSERT_TRUE(s.ok()) << s.message();
  synchronize(kGpu);
  const std::vector<uint16_t> got = download_vector<uint16_t>(*d_kv, expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const int64_t pg = static_cast<int64_t>(i) / kv_page,
                  in_page = static_cast<int64_t>(i) % kv_page;
    ASSERT_EQ(got[i], expected[i])
        << "page " << pg << " row " << in_page / kv_row << " col " << in_page % kv_row;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, KvWriteGpu,
                         ::testing::Values(KvWriteCase{1, DType::kBFloat16, false},
                                           KvWriteCase{16, DType::kBFloat16, true},
                                           KvWriteCase{64, DType::kFloat16, false},
                                           KvWriteCase{64, DType::kBFloat16, true},
                                           KvWriteCase{256, DType::kFloat16, true}),
                         [](const auto& param_info) {
                           return "page" + std::to_string(param_info.param.page_size) + "_" +
                                  dtype_name(param_info.param.dtype) +
                                  (param_info.param.padded ? "_padded" : "");
                         });

// ---------------------------------------------------------------------------------------------
// Merge

struct MergeLayout {
  int head_dim;
  int64_t row_pad;      // elements between rows beyond head_dim: a multiple of 16 bytes keeps the
                        // vector path, 1 forces the scalar path
  bool lse_transposed;  // vLLM's [H, T] LSE buffers viewed as [T, H]
  bool lse_out;
};

struct MergeCase {
  DType dtype;
  MergeLayout layout;
};

// Element access for bf16 / fp16 / fp32 buffers held as bytes.
struct Elems {
  DType dtype;
  std::vector<uint8_t> bytes;
  Elems(DType d, size_t n, uint8_t fill) : dtype(d), bytes(n * dtype_size(d), fill) {}
  size_t size() const { return bytes.size() / dtype_size(dtype); }
  void set(size_t i, float v) {
    if (dtype == DType::kFloat32) {
      std::memcpy(&bytes[i * 4], &v, 4);
      return;
    }
    const uint16_t h =
        dtype == DType::kBFloat16 ? detail::float_to_bf16(v) : detail::float_to_fp16(v);
    std::memcpy(&bytes[i * 2], &h, 2);
  }
  float get(size_t i) const {
    if (dtype == DType::kFloat32) {
      float v;
      std::memcpy(&v, &bytes[i * 4], 4);
      return v;
    }
    uint16_t h;
    std::memcpy(&h, &bytes[i * 2], 2);
    return dtype == DType::kBFloat16 ? detail::bf16_to_float(h) : detail::fp16_to_float(h);
  }
  bool same_bits(const Elems& o, size_t i) const {
    const size_t e = dtype_size(dtype);
    return std::memcmp(&bytes[i * e], &o.bytes[i * e], e) == 0;
  }
};

class MergeGpu : public GpuTest, public ::testing::WithParamInterface<MergeCase> {};

TEST_P(MergeGpu, MatchesCpuWithInfinitiesAndNaN) {
  const DType dtype = GetParam().dtype;
  const MergeLayout& l = GetParam().layout;
  const int64_t T = 37, H = 5, D = l.head_dim, row = D + l.row_pad;
  std::mt19937_64 rng(static_cast<uint64_t>(D) * 7 + l.row_pad);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f), lse_value(-5.0f, 5.0f);
  const float nan = std::numeric_limits<float>::quiet_NaN();

  // Every row gets one of these LSE pairs; values behind a -inf LSE are NaN.
  enum Kind { kFinite, kAEmpty, kBEmpty, kBothEmpty, kANan, kBNan, kAPosInf, kNanValue, kKinds };
  const size_t n = static_cast<size_t>(T * H * row);
  Elems a(dtype, n, 0xff), b(dtype, n, 0xff);
  // LSE buffers are [H, T + 3] when transposed (padding between rows), else [T, H].
  const int64_t lse_ld = T + 3;
  const int64_t lse_elems = l.lse_transposed ? H * lse_ld : T * H;
  auto lse_at = [&](int64_t t, int64_t h) { return l.lse_transposed ? h * lse_ld + t : t * H + h; };
  std::vector<float> la(static_cast<size_t>(lse_elems), nan), lb(la.size(), nan);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      const Kind kind = static_cast<Kind>((t * H + h) % kKinds);
      float x = lse_value(rng), y = lse_value(rng);
      if (kind == kAEmpty || kind == kBothEmpty) x = -kInf;
      if (kind == kBEmpty || kind == kBothEmpty) y = -kInf;
      if (kind == kANan) x = nan;
      if (kind == kBNan) y = nan;
      if (kind == kAPosInf) x = kInf;
      la[lse_at(t, h)] = x;
      lb[lse_at(t, h)] = y;
      for (int64_t d = 0; d < D; ++d) {
        const size_t i = static_cast<size_t>((t * H + h) * row + d);
        a.set(i, x == -kInf ? nan : value(rng));
        b.set(i, y == -kInf ? nan : value(rng));
      }
      if (kind == kNanValue) a.set(static_cast<size_t>((t * H + h) * row), nan);
    }
  }

  auto params = [&](Device dev, void* pa, void* pla, void* pb, void* plb, void* po, void* plo) {
    MergeParams p;
    p.out_a = make_tensor(pa, dtype, {T, H, D}, {H * row, row, 1}, dev);
    p.out_b = make_tensor(pb, dtype, {T, H, D}, {H * row, row, 1}, dev);
    p.out = make_tensor(po, dtype, {T, H, D}, {H * row, row, 1}, dev);
    const int64_t st = l.lse_transposed ? 1 : H, sh = l.lse_transposed ? lse_ld : 1;
    p.lse_a = make_tensor(pla, DType::kFloat32, {T, H}, {st, sh}, dev);
    p.lse_b = make_tensor(plb, DType::kFloat32, {T, H}, {st, sh}, dev);
    if (l.lse_out) p.lse = make_tensor(plo, DType::kFloat32, {T, H}, {st, sh}, dev);
    return p;
  };

  const float lse_poison = detail::bits_to_float(kPoison32);
  Elems want(dtype, n, 0xff);
  std::vector<float> want_lse(la.size(), lse_poison);
  ASSERT_TRUE(merge_states(params(Device{}, a.bytes.data(), la.data(), b.bytes.data(), lb.data(),
                                  want.bytes.data(), want_lse.data()),
                           {})
                  .ok());

  auto d_a = to_device(a.bytes), d_b = to_device(b.bytes), d_la = to_device(la),
       d_lb = to_device(lb);
  auto d_out = to_device(std::vector<uint8_t>(a.bytes.size(), 0xff));
  auto d_lse = to_device(std::vector<float>(la.size(), lse_poison));
  const Status s = merge_states(params(kGpu, d_a->data(), d_la->data(), d_b->data(), d_lb->data(),
                                       d_out->data(), d_lse->data()),
                                {});
  ASSERT_TRUE(s.ok()) << s.message();
  synchronize(kGpu);
  Elems got(dtype, n, 0);
  got.bytes = download_vector<uint8_t>(*d_out, got.bytes.size());
  const std::vector<float> got_lse = download_vector<float>(*d_lse, la.size());

  // The CPU accumulates in double, the GPU in fp32: one rounding step of the output type apart.
  const double atol = dtype == DType::kFloat32 ? 1e-6 : dtype == DType::kFloat16 ? 5e-4 : 2e-3;
  const double rtol = dtype == DType::kFloat32 ? 1e-5 : dtype == DType::kFloat16 ? 1e-3 : 8e-3;
  for (size_t i = 0; i < n; ++i) {
    const int64_t r = static_cast<int64_t>(i) / row, d = static_cast<int64_t>(i) % row;
    std::ostringstream where;
    where << "t=" << r / H << " h=" << r % H << " d=" << d << " kind=" << r % kKinds;
    if (d >= D) {
      ASSERT_TRUE(got.same_bits(want, i)) << "row padding written at " << where.str();
      continue;
    }
    const double g = got.get(i), w = want.get(i);
    if (std::isnan(w) || std::isnan(g)) {
      ASSERT_TRUE(std::isnan(w) && std::isnan(g)) << where.str() << ": got " << g << " want " << w;
    } else {
      ASSERT_NEAR(g, w, atol + rtol * std::fabs(w)) << where.str();
    }
  }
  for (size_t i = 0; i < got_lse.size(); ++i) {
    const double g = got_lse[i], w = want_lse[i];
    const bool in_view = l.lse_out && (!l.lse_transposed || static_cast<int64_t>(i) % lse_ld < T);
    if (!in_view) {
      ASSERT_EQ(detail::float_to_bits(got_lse[i]), kPoison32) << "lse element " << i << " written";
    } else if (std::isnan(w) || std::isnan(g)) {
      ASSERT_TRUE(std::isnan(w) && std::isnan(g)) << "lse element " << i << ": got " << g;
    } else if (std::isinf(w)) {
      ASSERT_EQ(g, w) << "lse element " << i;
    } else {
      ASSERT_NEAR(g, w, 1e-5 + 1e-6 * std::fabs(w)) << "lse element " << i;
    }
  }
}

std::vector<MergeCase> merge_cases() {
  const MergeLayout layouts[] = {
      {512, 0, false, true},  // decode-shaped, packed, vector path
      {128, 8, true, true},   // vLLM's transposed LSE, padded rows (still 16-byte multiples)
      {40, 0, true, false},   // no LSE output
      {7, 0, false, true},    // head_dim not a multiple of 16 bytes: scalar path
      {64, 1, true, true},    // rows not 16-byte aligned: scalar path
  };
  std::vector<MergeCase> cases;
  for (DType d : {DType::kBFloat16, DType::kFloat16, DType::kFloat32}) {
    for (const MergeLayout& l : layouts) cases.push_back({d, l});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Layouts, MergeGpu, ::testing::ValuesIn(merge_cases()),
                         [](const auto& param_info) {
                           const MergeLayout& l = param_info.param.layout;
                           return std::string(dtype_name(param_info.param.dtype)) + "_d" +
                                  std::to_string(l.head_dim) + "_pad" + std::to_string(l.row_pad) +
                                  (l.lse_transposed ? "_lseHT" : "_lseTH") +
                                  (l.lse_out ? "" : "_nolse");
                         });

}  // namespace
}  // namespace mla::testing
