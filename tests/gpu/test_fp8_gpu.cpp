// fp8 KV caches on the GPU (docs/kv_formats.md), against the CPU: decode of fp8_e4m3 and
// fp8_ds_mla caches compared element by element with the CPU reference on the same cache, with
// poisoned out / lse / workspace, dead pages and page tails holding the e4m3 NaN codes 0x7F / 0xFF
// and NaN scales, and dead block-table entries at huge ids (harness.h); every fp8 kernel
// configuration forced on the corner cases; bad pages and a bad device-side scale written as NaN
// rows and flagged; write_kv_cache's quantiser byte for byte the CPU's; and a round trip
// CUDA write_kv_cache -> CUDA decode against the reference on the dequantised cache.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/backends.h"
#include "core/fp8.h"
#include "core/half.h"
#include "gpu_cases.h"
#include "harness.h"

namespace mla::testing {
namespace {

constexpr KvFormat kFormats[] = {KvFormat::kFp8E4M3, KvFormat::kFp8DsMla};

class Fp8Gpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// Each case in `format`, varying the other knobs from case to case so that the list covers them
// all: the e4m3 scale as a host float or a device tensor (and not always 1/256), no lse or a
// [B, H, S] lse, fp16 queries, padded strides, q as a (nope, rope) pair.
std::vector<DecodeCase> in_format(const std::vector<DecodeCase>& cases, KvFormat format) {
  std::vector<DecodeCase> out;
  int i = 0;
  for (DecodeCase c : cases) {
    c.kv_format = format;
    c.scale_tensor = format == KvFormat::kFp8E4M3 && i % 2 == 1;
    if (i % 3 == 1) c.kv_scale = 1.0f / 64;
    if (i % 4 == 1) c.lse = LseLayout::kNone;
    if (i % 4 == 3) c.lse = LseLayout::kBHS;
    if (i % 5 == 2) c.dtype = DType::kFloat16;
    if (i % 6 == 4) c.padded_strides = true;
    if (i % 7 == 5) c.split_q = true;
    c.name += format == KvFormat::kFp8E4M3 ? "_e4m3" : "_dsmla";
    out.push_back(c);
    ++i;
  }
  return out;
}

// Page sizes 1, 16, 64, 256 with seq_lens that end mid-page, h_q from 1 to 128, s_q 1 and 2
// (causal), both element types.
std::vector<DecodeCase> shape_cases() {
  std::vector<DecodeCase> cases;
  uint64_t seed = 500;
  for (int page : {1, 16, 64, 256}) {
    for (int h_q : {1, 7, 16, 33, 64, 128}) {
      for (int s_q : {1, 2}) {
        DecodeCase c = make_case(
            "p" + std::to_string(page) + "_h" + std::to_string(h_q) + "_s" + std::to_string(s_q), 3,
            s_q, h_q, page, {page * 3 + 5, 1, 700}, s_q == 2, seed++);
        if (h_q == 33) c.dtype = DType::kFloat16;
        cases.push_back(c);
      }
    }
  }
  return cases;
}

TEST_F(Fp8Gpu, DecodeCornerCases) {
  for (KvFormat f : kFormats) {
    for (const DecodeCase& c : in_format(corner_cases(), f)) expect_case_passes(c);
  }
}

TEST_F(Fp8Gpu, DecodeShapes) {
  for (KvFormat f : kFormats) {
    for (const DecodeCase& c : in_format(shape_cases(), f)) expect_case_passes(c);
    for (const DecodeCase& c : in_format(correctness_sweep(test_level()), f)) {
      expect_case_passes(c);
    }
  }
}

// Each compiled fp8 configuration, whatever the card would choose: the Ampere-class fallbacks
// (shared memory limited) and each registered name with an fp8 row.
TEST_F(Fp8Gpu, EveryKernelConfiguration) {
  for (KvFormat f : kFormats) {
    SCOPED_TRACE(kv_format_name(f));
    const std::vector<cuda::KernelOverride> configs = every_configuration(f);
    EXPECT_GE(configs.size(), 5u) << kv_format_name(f);
    expect_cases_pass_under(in_format(corner_cases(), f), configs);
    expect_cases_pass_under(in_format(correctness_sweep(0), f), configs);
  }
}

// The chooser serves fp8 caches on every architecture the portable kernel runs, Hopper included
// (whose sm_90a kernel reads 16-bit caches only): a case of more than 32 rows, which a 16-bit
// cache sends to the Hopper kernel there, decodes.
TEST_F(Fp8Gpu, ChosenForManyRows) {
  for (KvFormat f : kFormats) {
    DecodeCase c = make_case("rows128", 2, 1, 128, 64, {300, 65}, false, 41);
    c.kv_format = f;
    expect_case_passes(c);
  }
}

// The full-write contract under bad data, as DecodeGpu.BadDataIsFlaggedAndWrittenAsNaN checks it
// for 16-bit caches: a bad page id (in a short and in a split request) gives that request's rows
// as NaN and the error flag; the other requests are right.
TEST_F(Fp8Gpu, BadPageGivesNaNRowsAndErrorFlag) {
  for (KvFormat f : kFormats) {
    SCOPED_TRACE(kv_format_name(f));
    DecodeCase c = make_case("bad_page", 4, 1, 16, 16, {40, 50, 9000, 20}, false, 98);
    c.kv_format = f;
    const HostDecode good = make_decode(c);
    for (const auto& [bad_b, pos] : {std::pair<int, int>{1, 2}, std::pair<int, int>{2, 400}}) {
      HostDecode hd = good;
      hd.block_table[bad_b * hd.max_pages + pos] = static_cast<int32_t>(hd.num_pages);
      DeviceDecode dev(hd, kGpu);
      ASSERT_TRUE(dev.sized.ok()) << dev.sized.message();
      ASSERT_TRUE(decode(dev.params, dev.workspace(), ExecConfig{}).ok());
      const Status errors = check_data_errors(dev.workspace(), kGpu, ExecConfig{});
      EXPECT_EQ(errors.code(), StatusCode::kDataError);
      const std::string where =
          "block_table[" + std::to_string(bad_b) + "][" + std::to_string(pos) + "]";
      EXPECT_NE(errors.message().find(where), std::string::npos) << errors.message();
      HostDecode expected = good;
      const int64_t rows = static_cast<int64_t>(c.s_q) * c.h_q;
      for (int64_t r = bad_b * rows; r < (bad_b + 1) * rows; ++r) {
        for (int d = 0; d < kHeadDimV; ++d) expected.ref_out[r * hd.out_row + d] = kPoison16;
        expected.ref_lse[r] = std::nanf("");
      }
      const auto out = dev.out_host(hd);
      const auto lse = dev.lse_host(hd);
      const Comparison cmp = compare_decode(expected, out.data(), lse.data());
      EXPECT_TRUE(cmp.ok) << cmp.failure;
    }
  }
}

// A device-side fp8_e4m3 scale that is not finite and > 0 (the CPU rejects it up front): every
// row of a request with keys is NaN and check_data_errors names kv_scale_tensor; rows without
// keys keep out = 0, lse = -inf (they read no scale).
TEST_F(Fp8Gpu, BadDeviceScaleGivesNaNRowsAndErrorFlag) {
  DecodeCase c = make_case("bad_scale", 3, 1, 16, 16, {40, 0, 300}, false, 97);
  c.kv_format = KvFormat::kFp8E4M3;
  c.scale_tensor = true;
  const HostDecode good = make_decode(c);
  for (float bad : {std::nanf(""), 0.0f, -0.5f, std::numeric_limits<float>::infinity()}) {
    SCOPED_TRACE(bad);
    HostDecode hd = good;
    hd.kv_scale[0] = bad;
    DeviceDecode dev(hd, kGpu);
    ASSERT_TRUE(decode(dev.params, dev.workspace(), ExecConfig{}).ok());
    const Status errors = check_data_errors(dev.workspace(), kGpu, ExecConfig{});
    EXPECT_EQ(errors.code(), StatusCode::kDataError);
    EXPECT_NE(errors.message().find("kv_scale_tensor"), std::string::npos) << errors.message();
    HostDecode expected = good;
    for (int b : {0, 2}) {
      for (int64_t r = b * c.h_q; r < (b + 1) * c.h_q; ++r) {
        for (int d = 0; d < kHeadDimV; ++d) expected.ref_out[r * hd.out_row + d] = kPoison16;
        expected.ref_lse[r] = std::nanf("");
      }
    }
    const auto out = dev.out_host(hd);
    const auto lse = dev.lse_host(hd);
    const Comparison cmp = compare_decode(expected, out.data(), lse.data());
    EXPECT_TRUE(cmp.ok) << cmp.failure;
  }
}

// ---------------------------------------------------------------------------------------------
// write_kv_cache: the CUDA quantiser stores the CPU's bytes.

struct WriteInput {
  int64_t tokens = 0, num_pages = 0, page_size = 0, width = 0;
  DType dtype = DType::kBFloat16;
  std::vector<uint16_t> kv_c, k_pe;  // bf16 / fp16 bits
  std::vector<int64_t> slots;        // live slots, -1 padding, some out of range (GPU only)
  std::vector<uint8_t> cache;        // the initial cache: alternating NaN codes
};

// Values of mixed magnitudes (far beyond 448 * scale, tiny, zero blocks) with +-inf and NaN
// sprinkled in, every third slot -1.
WriteInput make_write_input(KvFormat format, DType dtype, int64_t page_size, uint64_t seed) {
  WriteInput w;
  w.num_pages = 6;
  w.page_size = page_size;
  w.width = kv_token_width(format);
  w.dtype = dtype;
  const int64_t capacity = w.num_pages * page_size;
  w.tokens = capacity + 9;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const float big = dtype == DType::kFloat16 ? 6e4f : 1e6f;
  for (int64_t t = 0; t < w.tokens; ++t) {
    const float mag = t % 6 == 4 ? big : t % 6 == 3 ? 1e-6f : t % 6 == 5 ? 3e-3f : 1.0f;
    for (int d = 0; d < kHeadDimQK; ++d) {
      float x = dist(rng) * mag;
      if (t % 6 == 2 && d >= 128 && d < 256) x = 0.0f;  // an all-zero block
      if (t % 7 == 6 && d % 97 == 5) x = std::numeric_limits<float>::infinity();
      if (t % 7 == 6 && d % 101 == 7) x = -std::numeric_limits<float>::infinity();
      if (t % 11 == 10 && d % 89 == 3) x = std::nanf("");
      (d < kHeadDimV ? w.kv_c : w.k_pe).push_back(to_half(x, dtype));
    }
  }
  std::vector<int64_t> perm(static_cast<size_t>(capacity));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  size_t next = 0;
  for (int64_t t = 0; t < w.tokens; ++t) {
    if (t % 3 == 1 || next == perm.size()) {
      w.slots.push_back(t % 9 == 4 ? capacity + t : -1);  // padding, or out of range
    } else {
      w.slots.push_back(perm[next++]);
    }
  }
  w.cache.resize(static_cast<size_t>(capacity * w.width));
  for (size_t i = 0; i < w.cache.size(); ++i) w.cache[i] = i % 2 ? 0xff : 0x7f;
  return w;
}

struct WriteOptions {
  KvFormat format;
  float kv_scale = 1.0f;
  bool scale_tensor = false;
  bool pow2 = false;
};

// write_kv_cache of `w` on `device`; returns the cache afterwards. On the CPU the out-of-range
// slots (which it rejects) are passed as -1, which the GPU must treat them like.
std::vector<uint8_t> run_write(const WriteInput& w, const WriteOptions& o, Device device,
                               Status* status) {
  std::vector<int64_t> slots = w.slots;
  if (device.type == DeviceType::kCPU) {
    for (int64_t& s : slots) {
      if (s >= w.num_pages * w.page_size) s = -1;
    }
  }
  auto kv_c = upload_vector(device, w.kv_c);
  auto k_pe = upload_vector(device, w.k_pe);
  auto slot_buf = upload_vector(device, slots);
  auto cache = upload_vector(device, w.cache);
  auto scale = upload_vector(device, std::vector<float>{o.kv_scale});
  KvCacheWriteParams p;
  p.kv_c = make_tensor(kv_c->data(), w.dtype, {w.tokens, kHeadDimV}, device);
  p.k_pe = make_tensor(k_pe->data(), w.dtype, {w.tokens, kHeadDimRope}, device);
  p.slot_mapping = make_tensor(slot_buf->data(), DType::kInt64, {w.tokens}, device);
  p.kv_cache =
      make_tensor(cache->data(), DType::kUInt8, {w.num_pages, w.page_size, w.width}, device);
  p.kv_format = o.format;
  if (o.format == KvFormat::kFp8E4M3) {
    if (o.scale_tensor) {
      p.kv_scale_tensor = make_tensor(scale->data(), DType::kFloat32, {1}, device);
    } else {
      p.kv_scale = o.kv_scale;
    }
  }
  p.ds_mla_pow2_scale = o.pow2;
  *status = write_kv_cache(p, ExecConfig{});
  synchronize(device);
  return download_vector<uint8_t>(*cache, w.cache.size());
}

TEST_F(Fp8Gpu, WriteKvCacheMatchesCpuByteForByte) {
  std::vector<WriteOptions> options = {
      {KvFormat::kFp8E4M3, 0.01f, false, false}, {KvFormat::kFp8E4M3, 1.0f / 256, true, false},
      {KvFormat::kFp8E4M3, 3.0f, false, false},  {KvFormat::kFp8DsMla, 1.0f, false, false},
      {KvFormat::kFp8DsMla, 1.0f, false, true},
  };
  uint64_t seed = 1;
  for (const WriteOptions& o : options) {
    for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
      for (int64_t page : {1, 16, 64}) {
        SCOPED_TRACE(std::string(kv_format_name(o.format)) + " scale " +
                     std::to_string(o.kv_scale) + (o.scale_tensor ? " tensor" : "") +
                     (o.pow2 ? " pow2" : "") + " " + dtype_name(dtype) + " page " +
                     std::to_string(page));
        const WriteInput w = make_write_input(o.format, dtype, page, seed++);
        Status cpu_status, gpu_status;
        const std::vector<uint8_t> cpu = run_write(w, o, Device{}, &cpu_status);
        const std::vector<uint8_t> gpu = run_write(w, o, kGpu, &gpu_status);
        ASSERT_TRUE(cpu_status.ok()) << cpu_status.message();
        ASSERT_TRUE(gpu_status.ok()) << gpu_status.message();
        ASSERT_NE(cpu, w.cache);  // the CPU wrote something
        for (size_t i = 0; i < cpu.size(); ++i) {
          ASSERT_EQ(int(gpu[i]), int(cpu[i]))
              << "byte " << i << " (slot " << i / w.width << ", byte " << i % w.width << ")";
        }
      }
    }
  }
}

// A device-side scale that is not finite and > 0 cannot be reported by write_kv_cache on CUDA:
// each row it would have written holds NaN codes instead; other rows are untouched.
TEST_F(Fp8Gpu, WriteKvCacheBadDeviceScaleWritesNaNCodes) {
  for (float bad : {std::nanf(""), 0.0f, -1.0f}) {
    SCOPED_TRACE(bad);
    WriteInput w = make_write_input(KvFormat::kFp8E4M3, DType::kBFloat16, 16, 3);
    std::fill(w.cache.begin(), w.cache.end(), uint8_t{0x11});
    Status status;
    const std::vector<uint8_t> gpu =
        run_write(w, {KvFormat::kFp8E4M3, bad, true, false}, kGpu, &status);
    ASSERT_TRUE(status.ok()) << status.message();
    std::vector<bool> written(static_cast<size_t>(w.num_pages * w.page_size), false);
    for (int64_t s : w.slots) {
      if (s >= 0 && s < w.num_pages * w.page_size) written[s] = true;
    }
    for (size_t i = 0; i < gpu.size(); ++i) {
      ASSERT_EQ(int(gpu[i]), written[i / w.width] ? 0x7f : 0x11) << "byte " << i;
    }
  }
}

// CUDA write_kv_cache -> CUDA decode: the GPU-written cache is the CPU's, byte for byte, and the
// GPU decode of it matches the CPU reference on that cache (which dequantises it exactly).
TEST_F(Fp8Gpu, RoundTripWriteThenDecode) {
  for (KvFormat f : kFormats) {
    for (int page : {1, 16, 64}) {
      SCOPED_TRACE(std::string(kv_format_name(f)) + " page " + std::to_string(page));
      DecodeCase c = make_case("roundtrip", 3, 2, 16, page, {37, 0, 150}, true, 77 + page);
      c.kv_format = f;
      c.kv_scale = 1.0f / 128;
      HostDecode hd = make_decode(c);  // pages, q, and the NaN-patterned fp8 cache
      std::mt19937_64 rng(78 + page);
      std::uniform_real_distribution<float> dist(-1.5f, 1.5f);
      std::vector<uint16_t> kv_c, k_pe;
      std::vector<int64_t> slots;
      for (int b = 0; b < c.batch; ++b) {
        for (int j = 0; j < c.seq_lens[b]; ++j) {
          const int64_t pg = hd.block_table[b * hd.max_pages + j / c.page_size];
          slots.push_back(pg * c.page_size + j % c.page_size);
          for (int d = 0; d < kHeadDimV; ++d) kv_c.push_back(detail::float_to_bf16(dist(rng)));
          for (int d = 0; d < kHeadDimRope; ++d) k_pe.push_back(detail::float_to_bf16(dist(rng)));
          slots.push_back(-1);  // a padding token after every real one, NaN-filled
          kv_c.insert(kv_c.end(), kHeadDimV, kPoison16);
          k_pe.insert(k_pe.end(), kHeadDimRope, kPoison16);
        }
      }
      const int64_t tokens = static_cast<int64_t>(slots.size());
      auto write = [&](Device device, std::vector<uint16_t>& cache_elems) {
        auto c_buf = upload_vector(device, kv_c);
        auto pe_buf = upload_vector(device, k_pe);
        auto slot_buf = upload_vector(device, slots);
        auto cache = upload_vector(device, cache_elems);
        KvCacheWriteParams w;
        w.kv_c = make_tensor(c_buf->data(), DType::kBFloat16, {tokens, kHeadDimV}, device);
        w.k_pe = make_tensor(pe_buf->data(), DType::kBFloat16, {tokens, kHeadDimRope}, device);
        w.slot_mapping = make_tensor(slot_buf->data(), DType::kInt64, {tokens}, device);
        w.kv_cache = make_tensor(cache->data(), DType::kUInt8,
                                 {hd.num_pages, c.page_size, kv_token_width(f)}, device);
        w.kv_format = f;
        if (f == KvFormat::kFp8E4M3) {
          w.kv_scale = c.kv_scale;
        } else {
          w.ds_mla_pow2_scale = true;
        }
        const Status s = write_kv_cache(w, ExecConfig{});
        synchronize(device);
        cache_elems = download_vector<uint16_t>(*cache, cache_elems.size());
        return s;
      };
      std::vector<uint16_t> cpu_cache = hd.kv, gpu_cache = hd.kv;
      ASSERT_TRUE(write(Device{}, cpu_cache).ok());
      const Status ws = write(kGpu, gpu_cache);
      ASSERT_TRUE(ws.ok()) << ws.message();
      ASSERT_EQ(gpu_cache, cpu_cache);

      // The reference on the written cache, then the GPU decode of it.
      hd.kv = gpu_cache;
      std::fill(hd.ref_out.begin(), hd.ref_out.end(), kPoison16);
      DecodeParams ref =
          hd.params(Device{}, hd.q.data(), hd.q_pe.data(), hd.kv.data(), hd.block_table.data(),
                    hd.seq_lens.data(), hd.ref_out.data(), hd.ref_lse.data(), hd.kv_scale.data());
      ExecConfig reference;
      reference.reference = true;
      ASSERT_TRUE(decode(ref, Workspace{}, reference).ok());
      DeviceDecode dev(hd, kGpu);
      ASSERT_TRUE(dev.sized.ok());
      const Status s = decode(dev.params, dev.workspace(), ExecConfig{});
      ASSERT_TRUE(s.ok()) << s.message();
      EXPECT_TRUE(check_data_errors(dev.workspace(), kGpu, ExecConfig{}).ok());
      const auto out = dev.out_host(hd);
      const auto lse = dev.lse_host(hd);
      const Comparison cmp = compare_decode(hd, out.data(), lse.data());
      EXPECT_TRUE(cmp.ok) << cmp.failure;
    }
  }
}

}  // namespace
}  // namespace mla::testing
