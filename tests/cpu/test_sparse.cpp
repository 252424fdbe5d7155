// Sparse decode on the CPU: the fast path against the reference with every cache token that
// was not chosen NaN-filled (a read of one shows as NaN), -1 entries mixed in, duplicated and
// unsorted indices, all -1 rows, topk_lengths (entries beyond it hold garbage slots), the
// attention sink, poisoned out/lse/workspace, for bf16/fp16 caches and both fp8 formats (unchosen
// tokens hold the e4m3 NaN codes 0x7F / 0xFF, fp8_ds_mla's also NaN scales); the reference
// against dense decode and against hand-computed rows; write_kv_cache -> sparse_decode on fp8
// caches against the reference on the dequantised values; validation and data errors leaving
// out/lse untouched.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "harness.h"

namespace mla::testing {
namespace {

struct SparseCase {
  std::string name;
  int batch = 2, s_q = 1, h_q = 16, topk = 64, page_size = 64, num_pages = 8;
  DType dtype = DType::kBFloat16;
  bool split_q = false;
  bool lengths = false;      // topk_lengths given (some 0, some < topk)
  bool sink = false;         // attn_sink given
  bool padded = false;       // q/kv/out rows padded (padding NaN / poisoned)
  double none_share = 0.25;  // share of -1 entries
  bool empty_rows = true;    // some rows all -1
  int threads = 3;
  uint64_t seed = 1;
  // Cache format: fp8 caches hold the same drawn values as the 16-bit cache of the same case,
  // quantised by the harness (fp8_e4m3 with kv_scale, given as a one-element tensor with
  // scale_tensor; fp8_ds_mla with per-block scales amax / 448).
  KvFormat kv_format = KvFormat::kSameAsQ;
  float kv_scale = 1.0f / 256;
  bool scale_tensor = false;
};

float from_half(uint16_t v, DType dtype) {
  return dtype == DType::kBFloat16 ? detail::bf16_to_float(v) : detail::fp16_to_float(v);
}
uint16_t half_of(float v, DType dtype) {
  return dtype == DType::kBFloat16 ? detail::float_to_bf16(v) : detail::float_to_fp16(v);
}

// A generated problem in host memory; views point into its vectors. fp8 caches are held as
// bytes in `kv` (two per element) and kv_row counts bytes.
struct HostSparse {
  SparseCase c;
  int64_t q_row = 0, kv_row = 0, out_row = 0;
  std::vector<uint16_t> q, q_pe, kv, out;
  std::vector<int32_t> indices, lengths, chosen;  // chosen: the distinct slots entries name
  std::vector<float> sink, lse, kv_scale;         // kv_scale: [1], the scale tensor's buffer

  SparseDecodeParams params() {
    SparseDecodeParams p;
    const int64_t qw = c.split_q ? kHeadDimV : kHeadDimQK;
    p.q = make_tensor(q.data(), c.dtype, {c.batch, c.s_q, c.h_q, qw},
                      {c.s_q * c.h_q * q_row, c.h_q * q_row, q_row, 1});
    if (c.split_q) p.q_pe = make_tensor(q_pe.data(), c.dtype, {c.batch, c.s_q, c.h_q, 64});
    if (c.kv_format == KvFormat::kSameAsQ) {
      p.kv_cache = make_tensor(kv.data(), c.dtype, {c.num_pages, c.page_size, kHeadDimQK},
                               {c.page_size * kv_row, kv_row, 1});
    } else {
      p.kv_cache = make_tensor(kv.data(), DType::kUInt8,
                               {c.num_pages, c.page_size, kv_token_width(c.kv_format)},
                               {c.page_size * kv_row, kv_row, 1});
      p.kv_format = c.kv_format;
    }
    if (c.kv_format == KvFormat::kFp8E4M3) {
      if (c.scale_tensor) {
        p.kv_scale_tensor = make_tensor(kv_scale.data(), DType::kFloat32, {1});
      } else {
        p.kv_scale = c.kv_scale;
      }
    }
    p.indices = make_tensor(indices.data(), DType::kInt32, {c.batch, c.s_q, c.topk});
    if (c.lengths) p.topk_lengths = make_tensor(lengths.data(), DType::kInt32, {c.batch});
    if (c.sink) p.attn_sink = make_tensor(sink.data(), DType::kFloat32, {c.h_q});
    p.out = make_tensor(out.data(), c.dtype, {c.batch, c.s_q, c.h_q, kHeadDimV},
                        {c.s_q * c.h_q * out_row, c.h_q * out_row, out_row, 1});
    p.lse = make_tensor(lse.data(), DType::kFloat32, {c.batch, c.s_q, c.h_q});
    p.softmax_scale = 0.0721687836f;
    return p;
  }
  void poison() {
    std::fill(out.begin(), out.end(), kPoison16);
    uint32_t bits = kPoison32;
    float nan;
    std::memcpy(&nan, &bits, 4);
    std::fill(lse.begin(), lse.end(), nan);
  }
};

HostSparse make_sparse(const SparseCase& c) {
  HostSparse h;
  h.c = c;
  std::mt19937_64 rng(c.seed);
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  const int64_t slots = int64_t{c.num_pages} * c.page_size;
  h.q_row = (c.split_q ? kHeadDimV : kHeadDimQK) + (c.padded ? 64 : 0);
  const bool fp8 = c.kv_format != KvFormat::kSameAsQ;
  h.kv_row = kv_token_width(c.kv_format) + (c.padded ? 32 : 0);  // elements, or bytes for fp8
  h.out_row = kHeadDimV + (c.padded ? 16 : 0);
  const int64_t rows = int64_t{c.batch} * c.s_q * c.h_q;
  h.q.assign(rows * h.q_row, kPoison16);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = 0; d < (c.split_q ? kHeadDimV : kHeadDimQK); ++d) {
      h.q[r * h.q_row + d] = half_of(val(rng), c.dtype);
    }
  }
  if (c.split_q) {
    h.q_pe.resize(rows * kHeadDimRope);
    for (auto& x : h.q_pe) x = half_of(val(rng), c.dtype);
  }
  // Every token NaN until chosen: kPoison16, or for fp8 the NaN codes 0x7F / 0xFF alternating
  // (0xFF7F as an element) and NaN fp32 scales in every fp8_ds_mla row.
  h.kv.assign(fp8 ? slots * h.kv_row / 2 : slots * h.kv_row, fp8 ? uint16_t{0xff7f} : kPoison16);
  uint8_t* kv_bytes = reinterpret_cast<uint8_t*>(h.kv.data());
  if (c.kv_format == KvFormat::kFp8DsMla) {
    const float nan_scales[4] = {std::nanf(""), -std::nanf(""), std::nanf(""), std::nanf("")};
    for (int64_t r = 0; r < slots; ++r) {
      std::memcpy(kv_bytes + r * h.kv_row + 512, nan_scales, sizeof nan_scales);
    }
  }
  h.kv_scale.assign(1, c.kv_scale);
  std::vector<bool> filled(slots, false);
  auto fill = [&](int32_t slot) {
    if (filled[slot]) return;
    filled[slot] = true;
    h.chosen.push_back(slot);
    float values[kHeadDimQK];
    for (float& x : values) x = val(rng);
    if (fp8) {
      quantize_row(c.kv_format, c.kv_scale, values, kv_bytes + slot * h.kv_row);
    } else {
      for (int d = 0; d < kHeadDimQK; ++d) h.kv[slot * h.kv_row + d] = half_of(values[d], c.dtype);
    }
  };
  std::uniform_int_distribution<int32_t> any_slot(0, static_cast<int32_t>(slots - 1));
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  h.lengths.assign(c.batch, c.topk);
  if (c.lengths) {
    std::uniform_int_distribution<int32_t> len(0, c.topk);
    for (int b = 0; b < c.batch; ++b)
      h.lengths[b] = b % 3 == 0 ? 0 : b % 3 == 1 ? c.topk : len(rng);
  }
  h.indices.assign(int64_t{c.batch} * c.s_q * c.topk, -1);
  for (int b = 0; b < c.batch; ++b) {
    for (int s = 0; s < c.s_q; ++s) {
      int32_t* idx = h.indices.data() + (int64_t{b} * c.s_q + s) * c.topk;
      const bool all_none = c.empty_rows && (b + s) % 5 == 4;
      for (int k = 0; k < c.topk; ++k) {
        if (k >= h.lengths[b]) {
          // Beyond topk_lengths: never read, so garbage (a huge slot, a NaN token, or -7).
          idx[k] = k % 3 == 0 ? 2147480000 : k % 3 == 1 ? any_slot(rng) : -7;
          continue;
        }
        if (all_none || unit(rng) < c.none_share) continue;
        // A duplicate of an earlier entry (anywhere before: unsorted), or a fresh slot.
        const int earlier = k > 0 ? static_cast<int>(unit(rng) * k) : 0;
        idx[k] = k > 0 && idx[earlier] >= 0 && unit(rng) < 0.2 ? idx[earlier] : any_slot(rng);
        fill(idx[k]);
      }
    }
  }
  // Garbage beyond topk_lengths may name a filled token; that is fine (never read either way).
  h.sink.resize(c.h_q);
  std::uniform_real_distribution<float> sink_dist(-2.0f, 4.0f);
  for (auto& x : h.sink) x = sink_dist(rng);
  if (c.sink && c.h_q > 1) h.sink[1] = -std::numeric_limits<float>::infinity();
  h.out.resize(rows * h.out_row);
  h.lse.resize(rows);
  h.poison();
  return h;
}

struct Outputs {
  Status status;
  std::vector<uint16_t> out;
  std::vector<float> lse;
};

Outputs run(HostSparse h, const ExecConfig& config, uint8_t ws_fill) {
  const SparseDecodeParams p = h.params();
  size_t bytes = 0;
  Outputs o;
  o.status =
      sparse_workspace_size({h.c.batch, h.c.s_q, h.c.h_q, h.c.topk}, Device{}, config, &bytes);
  if (!o.status.ok()) return o;
  if (config.reference) bytes = 0;
  auto ws = allocate(Device{}, bytes + 1);
  std::memset(ws->data(), ws_fill, bytes + 1);
  o.status = sparse_decode(p, Workspace{ws->data(), bytes}, config);
  o.out = h.out;
  o.lse = h.lse;
  return o;
}

// NaN/Inf positions exactly, finite values within tolerance, row padding still poisoned.
std::string compare(const HostSparse& h, const Outputs& got, const Outputs& want) {
  const bool bf16 = h.c.dtype == DType::kBFloat16;
  const double atol = bf16 ? 8e-3 : 1e-3, rtol = bf16 ? 2e-2 : 4e-3;
  auto match = [](double g, double w, double a, double r) {
    if (std::isnan(w) || std::isnan(g)) return std::isnan(w) && std::isnan(g);
    if (std::isinf(w) || std::isinf(g)) return g == w;
    return std::fabs(g - w) <= a + r * std::fabs(w);
  };
  for (size_t i = 0; i < got.out.size(); ++i) {
    const int64_t d = static_cast<int64_t>(i) % h.out_row;
    if (d >= kHeadDimV) {
      if (got.out[i] != kPoison16) return "out padding written at " + std::to_string(i);
      continue;
    }
    const double g = from_half(got.out[i], h.c.dtype), w = from_half(want.out[i], h.c.dtype);
    if (!match(g, w, atol, rtol)) {
      return "out[row " + std::to_string(i / h.out_row) + ", " + std::to_string(d) +
             "] = " + std::to_string(g) + ", expected " + std::to_string(w);
    }
  }
  for (size_t i = 0; i < got.lse.size(); ++i) {
    if (!match(got.lse[i], want.lse[i], 1e-3, 1e-4)) {
      return "lse[" + std::to_string(i) + "] = " + std::to_string(got.lse[i]) + ", expected " +
             std::to_string(want.lse[i]);
    }
  }
  return "";
}

std::vector<SparseCase> cases() {
  std::vector<SparseCase> v;
  auto add = [&](SparseCase c) { v.push_back(c); };
  SparseCase base;
  base.name = "base";
  add(base);
  SparseCase c = base;
  c.name = "topk1";
  c.topk = 1;
  c.none_share = 0.1;
  add(c);
  c = base;
  c.name = "topk1_h1_page1";
  c.topk = 1;
  c.h_q = 1;
  c.page_size = 1;
  c.num_pages = 300;
  add(c);
  c = base;
  c.name = "lengths_sink";
  c.batch = 5;
  c.lengths = true;
  c.sink = true;
  add(c);
  c = base;
  c.name = "fp16_split_padded";
  c.dtype = DType::kFloat16;
  c.split_q = true;
  c.padded = true;
  c.sink = true;
  add(c);
  c = base;
  c.name = "mtp_h128";
  c.s_q = 2;
  c.h_q = 128;
  c.topk = 300;
  c.page_size = 16;
  c.num_pages = 64;
  add(c);
  c = base;
  c.name = "odd_heads_many_splits";
  c.batch = 2;  // with lengths, request 0 has none: request 1's list is split
  c.s_q = 3;
  c.h_q = 3;
  c.topk = 1000;
  c.num_pages = 40;
  c.threads = 7;
  c.sink = true;
  c.lengths = true;
  add(c);
  c = base;
  c.name = "latency_h8_splits";
  c.batch = 1;
  c.h_q = 8;
  c.topk = 2048;
  c.num_pages = 64;
  c.threads = 5;
  c.none_share = 0.05;
  c.empty_rows = false;
  add(c);
  c = base;
  c.name = "page256_h127";
  c.page_size = 256;
  c.num_pages = 3;
  c.h_q = 127;
  c.topk = 97;
  add(c);
  c = base;
  c.name = "all_none";
  c.none_share = 1.0;
  c.sink = true;
  add(c);
  // Every case again on both fp8 caches (fp8_e4m3 alternating between the float scale and the
  // scale tensor).
  const size_t num_16bit = v.size();
  for (size_t i = 0; i < num_16bit; ++i) {
    for (KvFormat format : {KvFormat::kFp8E4M3, KvFormat::kFp8DsMla}) {
      c = v[i];
      c.kv_format = format;
      c.scale_tensor = format == KvFormat::kFp8E4M3 && i % 2 == 1;
      c.name +=
          format == KvFormat::kFp8E4M3 ? (c.scale_tensor ? "_e4m3_tensor" : "_e4m3") : "_dsmla";
      add(c);
    }
  }
  for (size_t i = 0; i < v.size(); ++i) v[i].seed = 100 + i;
  return v;
}

class SparseDecode : public ::testing::TestWithParam<SparseCase> {};

TEST_P(SparseDecode, FastMatchesReferenceAndWritesEverything) {
  const HostSparse h = make_sparse(GetParam());
  ExecConfig ref_config;
  ref_config.reference = true;
  const Outputs want = run(h, ref_config, 0);
  ASSERT_TRUE(want.status.ok()) << want.status.message();
  for (int threads : {1, GetParam().threads}) {
    for (uint8_t fill : {kPoisonByte, uint8_t{0x3c}}) {
      ExecConfig config;
      config.num_threads = threads;
      const Outputs got = run(h, config, fill);
      ASSERT_TRUE(got.status.ok()) << got.status.message();
      const std::string failure = compare(h, got, want);
      EXPECT_TRUE(failure.empty()) << GetParam().name << " threads=" << threads << ": " << failure;
    }
  }
  // The reference itself never reads a token that was not chosen: no NaN anywhere.
  for (float x : want.lse) EXPECT_FALSE(std::isnan(x));
  for (size_t i = 0; i < want.out.size(); ++i) {
    if (static_cast<int64_t>(i) % h.out_row < kHeadDimV) {
      ASSERT_FALSE(std::isnan(from_half(want.out[i], h.c.dtype))) << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, SparseDecode, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<SparseCase>& param_info) {
                           return param_info.param.name;
                         });

// Sparse decode over tokens 0..L-1 of a request's pages, in order, is dense decode.
TEST(SparseReference, MatchesDenseDecodeOverAllTokens) {
  DecodeCase dc = make_case("dense", 2, 2, 16, 16, {37, 50}, false, 7);
  dc.lse = LseLayout::kBSH;
  HostDecode hd = make_decode(dc);
  const int topk = 50;
  std::vector<int32_t> indices(2 * 2 * topk, -1);
  for (int b = 0; b < 2; ++b) {
    for (int s = 0; s < 2; ++s) {
      for (int j = 0; j < hd.seq_lens[b]; ++j) {
        const int32_t page = hd.block_table[b * hd.max_pages + j / dc.page_size];
        indices[(b * 2 + s) * topk + j] = page * dc.page_size + j % dc.page_size;
      }
    }
  }
  std::vector<uint16_t> out(hd.out_elems, kPoison16);
  std::vector<float> lse(hd.lse_elems);
  const DecodeParams dense =
      hd.params(Device{}, hd.q.data(), hd.q_pe.data(), hd.kv.data(), hd.block_table.data(),
                hd.seq_lens.data(), out.data(), lse.data());
  SparseDecodeParams p;
  p.q = dense.q;
  p.kv_cache = dense.kv_cache;
  p.indices = make_tensor(indices.data(), DType::kInt32, {2, 2, topk});
  p.out = dense.out;
  p.lse = dense.lse;
  p.softmax_scale = dc.scale;
  ExecConfig config;
  config.reference = true;
  ASSERT_TRUE(sparse_decode(p, Workspace{}, config).ok());
  const Comparison r = compare_decode(hd, out.data(), lse.data());
  EXPECT_TRUE(r.ok) << r.failure;
}

// Hand-computed rows: one token (out = its value, lse = its logit), the same token twice (lse
// + ln 2), a sink (Z + e^sink), an empty row with and without a sink.
TEST(SparseReference, HandComputedRows) {
  const int slots = 4;
  std::vector<uint16_t> kv(slots * kHeadDimQK), q(kHeadDimQK), out(5 * kHeadDimV);
  for (int d = 0; d < kHeadDimQK; ++d) {
    q[d] = detail::float_to_bf16(d < 8 ? 0.5f : 0.0f);
    for (int s = 0; s < slots; ++s) {
      kv[s * kHeadDimQK + d] = detail::float_to_bf16(d < 8 ? 0.25f * (s + 1) : (d % 7) * 0.125f);
    }
  }
  // Rows (b = 0..4, s_q = 1, h_q = 1, topk 2): {2, -1}, {2, 2}, {2, -1} with sink, {-1, -1},
  // {-1, -1} with sink. Sinks apply per head, so the sink cases are separate calls.
  const float scale = 0.5f;
  const double logit = scale * 8 * 0.5 * 0.75;  // q . kv[2] over the first 8 entries
  auto call = [&](std::vector<int32_t> idx, const float* sink, float* lse_out) {
    const int b = static_cast<int>(idx.size() / 2);
    SparseDecodeParams p;
    p.q = make_tensor(q.data(), DType::kBFloat16, {1, 1, 1, kHeadDimQK}, {0, 0, 0, 1});
    p.q.shape[0] = b;
    p.kv_cache = make_tensor(kv.data(), DType::kBFloat16, {slots, 1, kHeadDimQK});
    p.indices = make_tensor(idx.data(), DType::kInt32, {b, 1, 2});
    if (sink != nullptr) p.attn_sink = make_tensor(const_cast<float*>(sink), DType::kFloat32, {1});
    p.out = make_tensor(out.data(), DType::kBFloat16, {b, 1, 1, kHeadDimV});
    p.lse = make_tensor(lse_out, DType::kFloat32, {b, 1, 1});
    p.softmax_scale = scale;
    for (bool reference : {true, false}) {
      ExecConfig config;
      config.reference = reference;
      config.num_threads = 2;
      size_t bytes = 0;
      ASSERT_TRUE(sparse_workspace_size({b, 1, 1, 2}, Device{}, config, &bytes).ok());
      auto ws = allocate(Device{}, bytes);
      const Status st = sparse_decode(p, Workspace{ws->data(), bytes}, config);
      ASSERT_TRUE(st.ok()) << st.message();
      for (int d = 0; d < kHeadDimV; ++d) {
        ASSERT_EQ(out[d], kv[2 * kHeadDimQK + d]) << "row 0 d=" << d << " ref=" << reference;
      }
    }
  };
  float lse[3];
  call({2, -1, 2, 2, -1, -1}, nullptr, lse);
  EXPECT_NEAR(lse[0], logit, 1e-5);
  EXPECT_NEAR(lse[1], logit + std::log(2.0), 1e-5);
  EXPECT_EQ(lse[2], -std::numeric_limits<float>::infinity());
  for (int d = 0; d < kHeadDimV; ++d) {
    EXPECT_EQ(out[kHeadDimV + d], kv[2 * kHeadDimQK + d]);
    EXPECT_EQ(out[2 * kHeadDimV + d], 0);
  }
  // With a sink equal to the token's logit: out = value / 2, lse = logit + ln 2; empty: sink.
  const float sink = static_cast<float>(logit);
  std::vector<uint16_t> kv_half(kHeadDimV);
  SparseDecodeParams p;
  float lse_s[2];
  std::vector<int32_t> idx = {2, -1, -1, -1};
  p.q = make_tensor(q.data(), DType::kBFloat16, {2, 1, 1, kHeadDimQK}, {0, 0, 0, 1});
  p.kv_cache = make_tensor(kv.data(), DType::kBFloat16, {slots, 1, kHeadDimQK});
  p.indices = make_tensor(idx.data(), DType::kInt32, {2, 1, 2});
  p.attn_sink = make_tensor(const_cast<float*>(&sink), DType::kFloat32, {1});
  p.out = make_tensor(out.data(), DType::kBFloat16, {2, 1, 1, kHeadDimV});
  p.lse = make_tensor(lse_s, DType::kFloat32, {2, 1, 1});
  p.softmax_scale = scale;
  for (bool reference : {true, false}) {
    ExecConfig config;
    config.reference = reference;
    config.num_threads = 1;
    size_t bytes = 0;
    ASSERT_TRUE(sparse_workspace_size({2, 1, 1, 2}, Device{}, config, &bytes).ok());
    auto ws = allocate(Device{}, bytes);
    ASSERT_TRUE(sparse_decode(p, Workspace{ws->data(), bytes}, config).ok());
    EXPECT_NEAR(lse_s[0], logit + std::log(2.0), 1e-5);
    EXPECT_EQ(lse_s[1], sink);
    for (int d = 0; d < kHeadDimV; ++d) {
      EXPECT_NEAR(detail::bf16_to_float(out[d]),
                  0.5f * detail::bf16_to_float(kv[2 * kHeadDimQK + d]), 1e-6);
      EXPECT_EQ(out[kHeadDimV + d], 0);
    }
  }
}

// write_kv_cache -> sparse_decode on both fp8 formats: the chosen tokens are rewritten with fresh
// values by write_kv_cache (a NaN padding token, slot -1, after every real one); then the
// reference on the fp8 cache equals, bit for bit, the reference on a bf16 cache holding the
// dequantised values (power-of-two scales make every dequantised value exact in bf16), and the
// fast path on the fp8 cache matches it element by element.
TEST(SparseFp8RoundTrip, WriteThenDecodeEqualsReferenceOnDequantisedValues) {
  for (KvFormat format : {KvFormat::kFp8E4M3, KvFormat::kFp8DsMla}) {
    SCOPED_TRACE(kv_format_name(format));
    SparseCase c;
    c.batch = 3;
    c.s_q = 2;
    c.topk = 300;
    c.page_size = 16;
    c.num_pages = 48;
    c.lengths = true;
    c.sink = true;
    c.kv_format = format;
    c.kv_scale = 1.0f / 128;
    c.seed = 61;
    HostSparse h = make_sparse(c);
    std::mt19937_64 rng(62);
    std::uniform_real_distribution<float> dist(-1.5f, 1.5f);
    std::vector<uint16_t> kv_c, k_pe;
    std::vector<int64_t> slots;
    for (int32_t slot : h.chosen) {
      slots.push_back(slot);
      for (int d = 0; d < kHeadDimV; ++d) kv_c.push_back(detail::float_to_bf16(dist(rng)));
      for (int d = 0; d < kHeadDimRope; ++d) k_pe.push_back(detail::float_to_bf16(dist(rng)));
      slots.push_back(-1);
      kv_c.insert(kv_c.end(), kHeadDimV, kPoison16);
      k_pe.insert(k_pe.end(), kHeadDimRope, kPoison16);
    }
    const int64_t tokens = static_cast<int64_t>(slots.size());
    KvCacheWriteParams w;
    w.kv_c = make_tensor(kv_c.data(), DType::kBFloat16, {tokens, kHeadDimV});
    w.k_pe = make_tensor(k_pe.data(), DType::kBFloat16, {tokens, kHeadDimRope});
    w.slot_mapping = make_tensor(slots.data(), DType::kInt64, {tokens});
    w.kv_cache = h.params().kv_cache;
    w.kv_format = format;
    if (format == KvFormat::kFp8E4M3) {
      w.kv_scale = c.kv_scale;
    } else {
      w.ds_mla_pow2_scale = true;
    }
    const Status written = write_kv_cache(w, {});
    ASSERT_TRUE(written.ok()) << written.message();

    // The same problem on a bf16 cache of the dequantised values (unchosen tokens NaN).
    HostSparse deq = h;
    deq.c.kv_format = KvFormat::kSameAsQ;
    deq.kv_row = kHeadDimQK;
    deq.kv.assign(static_cast<size_t>(c.num_pages) * c.page_size * kHeadDimQK, kPoison16);
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(h.kv.data());
    for (int32_t slot : h.chosen) {
      float values[kHeadDimQK];
      dequantize_row(format, c.kv_scale, bytes + slot * h.kv_row, values);
      for (int d = 0; d < kHeadDimQK; ++d) {
        const uint16_t bits = detail::float_to_bf16(values[d]);
        ASSERT_EQ(detail::bf16_to_float(bits), values[d]) << "not exact in bf16: " << values[d];
        deq.kv[slot * kHeadDimQK + d] = bits;
      }
    }
    ExecConfig ref_config;
    ref_config.reference = true;
    const Outputs ref_fp8 = run(h, ref_config, 0);
    const Outputs ref_deq = run(deq, ref_config, 0);
    ASSERT_TRUE(ref_fp8.status.ok()) << ref_fp8.status.message();
    ASSERT_TRUE(ref_deq.status.ok()) << ref_deq.status.message();
    EXPECT_EQ(ref_fp8.out, ref_deq.out);
    EXPECT_EQ(std::memcmp(ref_fp8.lse.data(), ref_deq.lse.data(), ref_fp8.lse.size() * 4), 0);
    ExecConfig fast_config;
    fast_config.num_threads = 3;
    const Outputs fast = run(h, fast_config, kPoisonByte);
    ASSERT_TRUE(fast.status.ok()) << fast.status.message();
    const std::string failure = compare(h, fast, ref_deq);
    EXPECT_TRUE(failure.empty()) << failure;
  }
}

// A fresh valid problem, for the error tests.
HostSparse small(KvFormat format = KvFormat::kSameAsQ) {
  SparseCase c;
  c.batch = 2;
  c.topk = 8;
  c.lengths = true;
  c.sink = true;
  c.kv_format = format;
  return make_sparse(c);
}

void expect_untouched(const HostSparse& h, const HostSparse& after) {
  for (size_t i = 0; i < h.out.size(); ++i) ASSERT_EQ(after.out[i], kPoison16) << i;
  for (float x : after.lse) ASSERT_TRUE(std::isnan(x));
}

Status call(HostSparse& h, bool reference = false) {
  ExecConfig config;
  config.reference = reference;
  config.num_threads = 2;
  size_t bytes = 0;
  EXPECT_TRUE(
      sparse_workspace_size({h.c.batch, h.c.s_q, h.c.h_q, h.c.topk}, Device{}, config, &bytes)
          .ok());
  auto ws = allocate(Device{}, bytes);
  return sparse_decode(h.params(), Workspace{ws->data(), bytes}, config);
}

TEST(SparseDataErrors, RejectedBeforeAnythingIsWritten) {
  for (bool reference : {false, true}) {
    HostSparse h = small();
    // Request 1 counts all its entries (small() gives request 0 none: its are all garbage).
    h.indices[h.c.topk + 1] = h.c.num_pages * h.c.page_size;  // one past the cache
    Status st = call(h, reference);
    EXPECT_EQ(st.code(), StatusCode::kDataError) << st.message();
    EXPECT_NE(st.message().find("mla::sparse_decode: argument 'indices': indices[1][0][1] = "),
              std::string::npos)
        << st.message();
    expect_untouched(h, h);

    h = small();
    h.indices[h.c.topk + 2] = -2;
    st = call(h, reference);
    EXPECT_EQ(st.code(), StatusCode::kDataError) << st.message();
    expect_untouched(h, h);

    h = small();
    h.lengths[1] = h.c.topk + 1;
    st = call(h, reference);
    EXPECT_EQ(st.code(), StatusCode::kDataError) << st.message();
    EXPECT_NE(st.message().find("'topk_lengths'"), std::string::npos) << st.message();
    expect_untouched(h, h);

    h = small();
    h.lengths[1] = -1;
    EXPECT_EQ(call(h, reference).code(), StatusCode::kDataError);
    expect_untouched(h, h);
  }
}

TEST(SparseValidation, ArgumentsNamed) {
  struct Bad {
    const char* arg;
    StatusCode code;
    void (*mutate)(SparseDecodeParams&);
  };
  static std::vector<int64_t> big(8);
  const Bad bads[] = {
      {"indices", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) { p.indices.dtype = DType::kInt64; }},
      {"indices", StatusCode::kInvalidArgument, [](SparseDecodeParams& p) { p.indices.ndim = 0; }},
      {"indices", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) { p.indices.shape[0] = 3; }},
      {"indices", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) { p.indices.shape[2] = 0; }},
      {"indices", StatusCode::kUnsupported,
       [](SparseDecodeParams& p) {
         p.indices.shape[2] = kMaxTopK + 1;
         p.indices.strides[1] = kMaxTopK + 1;
         p.indices.strides[0] = 2 * (kMaxTopK + 1);
       }},
      {"topk_lengths", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) { p.topk_lengths.shape[0] = 1; }},
      {"topk_lengths", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) { p.topk_lengths.dtype = DType::kFloat32; }},
      {"attn_sink", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) { p.attn_sink.shape[0] = 15; }},
      {"attn_sink", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) { p.attn_sink.dtype = DType::kBFloat16; }},
      {"kv_cache", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) { p.kv_cache.dtype = DType::kFloat16; }},
      {"kv_cache", StatusCode::kUnsupported,
       [](SparseDecodeParams& p) { p.kv_cache.shape[1] = 48; }},
      {"q", StatusCode::kUnsupported, [](SparseDecodeParams& p) { p.q.shape[2] = 129; }},
      {"out", StatusCode::kInvalidArgument, [](SparseDecodeParams& p) { p.out.shape[3] = 576; }},
      {"out", StatusCode::kInvalidArgument, [](SparseDecodeParams& p) { p.lse.data = p.out.data; }},
      {"out", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) { p.out.data = p.indices.data; }},
      {"softmax_scale", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) { p.softmax_scale = 0.0f; }},
      {"indices", StatusCode::kInvalidArgument,
       [](SparseDecodeParams& p) {
         p.indices.device = Device{DeviceType::kCUDA, 0};
       }},
  };
  for (const Bad& bad : bads) {
    HostSparse h = small();
    SparseDecodeParams p = h.params();
    bad.mutate(p);
    size_t bytes = 0;
    ExecConfig config;
    ASSERT_TRUE(sparse_workspace_size({2, 1, 16, 8}, Device{}, config, &bytes).ok());
    auto ws = allocate(Device{}, bytes);
    const Status st = sparse_decode(p, Workspace{ws->data(), bytes}, config);
    EXPECT_EQ(st.code(), bad.code) << bad.arg << ": " << st.message();
    EXPECT_NE(st.message().find(std::string("mla::sparse_decode: argument '") + bad.arg + "'"),
              std::string::npos)
        << st.message();
    expect_untouched(h, h);
  }
}

TEST(SparseValidation, WorkspaceAndShapes) {
  HostSparse h = small();
  ExecConfig config;
  config.num_threads = 2;
  size_t bytes = 0;
  ASSERT_TRUE(sparse_workspace_size({2, 1, 16, 8}, Device{}, config, &bytes).ok());
  EXPECT_GT(bytes, 0u);
  auto ws = allocate(Device{}, bytes);
  Status st = sparse_decode(h.params(), Workspace{ws->data(), bytes - 1}, config);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("'workspace'"), std::string::npos) << st.message();
  expect_untouched(h, h);
  EXPECT_EQ(sparse_workspace_size({2, 1, 16, 0}, Device{}, config, &bytes).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(sparse_workspace_size({2, 1, 16, kMaxTopK + 1}, Device{}, config, &bytes).code(),
            StatusCode::kUnsupported);
  EXPECT_EQ(sparse_workspace_size({2, 17, 16, 8}, Device{}, config, &bytes).code(),
            StatusCode::kUnsupported);
  EXPECT_EQ(sparse_workspace_size({2, 1, 16, 8}, Device{}, config, nullptr).code(),
            StatusCode::kInvalidArgument);
  // The workspace depends on shapes and threads only; batch 0 is a no-op.
  size_t other = 0;
  ASSERT_TRUE(sparse_workspace_size({2, 1, 16, 8}, Device{}, config, &other).ok());
  EXPECT_EQ(bytes, other);
}

// fp8 caches: a bad kv_scale_tensor value (data, read on the CPU) and a bad slot are rejected
// before anything is written, by the reference and the fast path.
TEST(SparseDataErrors, Fp8RejectedBeforeAnythingIsWritten) {
  for (bool reference : {false, true}) {
    for (float bad : {0.0f, -2.0f, std::nanf(""), std::numeric_limits<float>::infinity()}) {
      HostSparse h = small(KvFormat::kFp8E4M3);
      h.c.scale_tensor = true;
      h.kv_scale[0] = bad;
      const Status st = call(h, reference);
      EXPECT_EQ(st.code(), StatusCode::kDataError) << st.message();
      EXPECT_NE(st.message().find("mla::sparse_decode: argument 'kv_scale_tensor': "),
                std::string::npos)
          << st.message();
      expect_untouched(h, h);
    }
    for (KvFormat format : {KvFormat::kFp8E4M3, KvFormat::kFp8DsMla}) {
      HostSparse h = small(format);
      h.indices[h.c.topk + 1] = h.c.num_pages * h.c.page_size;
      const Status st = call(h, reference);
      EXPECT_EQ(st.code(), StatusCode::kDataError) << st.message();
      EXPECT_NE(st.message().find("argument 'indices'"), std::string::npos) << st.message();
      expect_untouched(h, h);
    }
  }
}

float g_scale = 1.0f / 256;
float g_two_scales[2] = {1.0f, 1.0f};

// The scale of `p` given by a valid one-element tensor instead of kv_scale.
void use_scale_tensor(SparseDecodeParams& p) {
  p.kv_scale = 1.0f;
  p.kv_scale_tensor = make_tensor(&g_scale, DType::kFloat32, {1});
}

// The KV-format arguments (checked by the code decode() uses): every mistake is named, with the
// expected code and a telling fragment, and out and lse keep their poison. Each row starts from a
// valid call on a cache of `base`'s format.
TEST(SparseValidation, KvFormatArgumentsNamed) {
  struct Bad {
    KvFormat base;
    const char* arg;
    StatusCode code;
    const char* fragment;
    void (*mutate)(SparseDecodeParams&);
  };
  const KvFormat e4m3 = KvFormat::kFp8E4M3, ds_mla = KvFormat::kFp8DsMla, same = KvFormat::kSameAsQ;
  const StatusCode invalid = StatusCode::kInvalidArgument;
  const Bad bads[] = {
      {e4m3, "kv_format", invalid, "unknown value 7",
       [](SparseDecodeParams& p) { p.kv_format = static_cast<KvFormat>(7); }},
      // The cache's dtype and width must be the format's.
      {e4m3, "kv_cache", invalid, "expected dtype uint8, got bfloat16",
       [](SparseDecodeParams& p) { p.kv_cache.dtype = DType::kBFloat16; }},
      {same, "kv_cache", invalid, "expected dtype uint8, got bfloat16",
       [](SparseDecodeParams& p) { p.kv_format = KvFormat::kFp8DsMla; }},
      {e4m3, "kv_cache", invalid, "uint8 differs from q's bfloat16",
       [](SparseDecodeParams& p) {
         p.kv_format = KvFormat::kSameAsQ;
         p.kv_scale = 1.0f;
       }},
      {e4m3, "kv_cache", invalid, "656",
       [](SparseDecodeParams& p) {
         p.kv_format = KvFormat::kFp8DsMla;
         p.kv_scale = 1.0f;
       }},
      {ds_mla, "kv_cache", invalid, "576",
       [](SparseDecodeParams& p) { p.kv_format = KvFormat::kFp8E4M3; }},
      // kv_scale: finite and > 0 for fp8_e4m3, 1 for the other formats.
      {e4m3, "kv_scale", invalid, "finite and > 0",
       [](SparseDecodeParams& p) { p.kv_scale = 0.0f; }},
      {e4m3, "kv_scale", invalid, "finite and > 0",
       [](SparseDecodeParams& p) { p.kv_scale = -1.0f; }},
      {e4m3, "kv_scale", invalid, "finite and > 0",
       [](SparseDecodeParams& p) { p.kv_scale = std::nanf(""); }},
      {e4m3, "kv_scale", invalid, "finite and > 0",
       [](SparseDecodeParams& p) { p.kv_scale = std::numeric_limits<float>::infinity(); }},
      {ds_mla, "kv_scale", invalid, "must stay 1 for fp8_ds_mla",
       [](SparseDecodeParams& p) { p.kv_scale = 0.5f; }},
      {same, "kv_scale", invalid, "must stay 1 for same_as_q",
       [](SparseDecodeParams& p) { p.kv_scale = 2.0f; }},
      // kv_scale_tensor: fp8_e4m3 only, kv_scale then 1, fp32 [1] on the call's device, and no
      // output may overlap it.
      {ds_mla, "kv_scale_tensor", invalid, "only used with kv_format fp8_e4m3", use_scale_tensor},
      {same, "kv_scale_tensor", invalid, "only used with kv_format fp8_e4m3", use_scale_tensor},
      {e4m3, "kv_scale", invalid, "must stay 1 when kv_scale_tensor",
       [](SparseDecodeParams& p) {
         use_scale_tensor(p);
         p.kv_scale = 1.0f / 256;
       }},
      {e4m3, "kv_scale_tensor", invalid, "float32",
       [](SparseDecodeParams& p) {
         use_scale_tensor(p);
         p.kv_scale_tensor.dtype = DType::kBFloat16;
       }},
      {e4m3, "kv_scale_tensor", invalid, "[1]",
       [](SparseDecodeParams& p) {
         p.kv_scale = 1.0f;
         p.kv_scale_tensor = make_tensor(g_two_scales, DType::kFloat32, {2});
       }},
      {e4m3, "kv_scale_tensor", invalid, "cuda:0",
       [](SparseDecodeParams& p) {
         use_scale_tensor(p);
         p.kv_scale_tensor.device = Device{DeviceType::kCUDA, 0};
       }},
      {e4m3, "kv_scale_tensor", invalid, "ndim",
       [](SparseDecodeParams& p) {
         use_scale_tensor(p);
         p.kv_scale_tensor.ndim = kMaxDims + 1;
       }},
      {e4m3, "lse", invalid, "overlaps the memory of 'kv_scale_tensor'",
       [](SparseDecodeParams& p) {
         p.kv_scale = 1.0f;
         p.kv_scale_tensor = make_tensor(p.lse.data, DType::kFloat32, {1});
       }},
  };
  for (const Bad& bad : bads) {
    for (bool reference : {false, true}) {
      HostSparse h = small(bad.base);
      SparseDecodeParams p = h.params();
      bad.mutate(p);
      ExecConfig config;
      config.reference = reference;
      size_t bytes = 0;
      ASSERT_TRUE(sparse_workspace_size({2, 1, 16, 8}, Device{}, config, &bytes).ok());
      auto ws = allocate(Device{}, bytes);
      const Status st = sparse_decode(p, Workspace{ws->data(), bytes}, config);
      const std::string what = std::string(kv_format_name(bad.base)) + " " + bad.arg + " (" +
                               bad.fragment + "): " + st.message();
      EXPECT_EQ(st.code(), bad.code) << what;
      EXPECT_EQ(
          st.message().rfind(std::string("mla::sparse_decode: argument '") + bad.arg + "'", 0), 0u)
          << what;
      EXPECT_NE(st.message().find(bad.fragment), std::string::npos) << what;
      expect_untouched(h, h);
    }
  }
  // The valid calls these rows start from succeed, on both paths and with the scale tensor.
  for (KvFormat format : {same, e4m3, ds_mla}) {
    for (bool reference : {false, true}) {
      HostSparse h = small(format);
      EXPECT_TRUE(call(h, reference).ok()) << kv_format_name(format);
      if (format != e4m3) continue;
      h = small(format);
      h.c.scale_tensor = true;
      EXPECT_TRUE(call(h, reference).ok());
    }
  }
}

// CUDA tensors are validated like CPU ones before the CUDA backend sees them: a host-checkable
// mistake is named and nothing is launched or written (the memory here is host memory that the
// call must never touch). Without a usable CUDA device (this suite's machines), a valid call is
// kUnsupported and writes nothing; tests/gpu/test_sparse_gpu.cpp runs the kernels.
TEST(SparseValidation, CudaCallsAreValidatedFirst) {
  HostSparse h = small();
  SparseDecodeParams p = h.params();
  const Device cuda{DeviceType::kCUDA, 0};
  // CUDA requires 16-byte aligned rows: run on 256-byte aligned copies.
  auto q = allocate(Device{}, h.q.size() * 2);
  auto kv = allocate(Device{}, h.kv.size() * 2);
  auto out = allocate(Device{}, h.out.size() * 2);
  std::memcpy(out->data(), h.out.data(), h.out.size() * 2);
  p.q.data = q->data();
  p.kv_cache.data = kv->data();
  p.out.data = out->data();
  for (TensorView* t :
       {&p.q, &p.kv_cache, &p.indices, &p.topk_lengths, &p.attn_sink, &p.out, &p.lse}) {
    t->device = cuda;
  }
  auto expect_out_untouched = [&] {
    for (size_t i = 0; i < h.out.size(); ++i) {
      ASSERT_EQ(static_cast<uint16_t*>(out->data())[i], kPoison16);
    }
    expect_untouched(h, h);
  };
  SparseDecodeParams bad = p;
  bad.softmax_scale = -1.0f;
  Status st = sparse_decode(bad, Workspace{}, ExecConfig{});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.message();
  EXPECT_NE(st.message().find("mla::sparse_decode: argument 'softmax_scale'"), std::string::npos)
      << st.message();
  expect_out_untouched();
  if (cuda_device_count() > 0) return;  // the host memory above must not reach a kernel
  st = sparse_decode(p, Workspace{}, ExecConfig{});
  EXPECT_EQ(st.code(), StatusCode::kUnsupported) << st.message();
  EXPECT_EQ(st.message().rfind("mla::sparse_decode: ", 0), 0u) << st.message();
  expect_out_untouched();
  // fp8 caches: the CUDA backend refuses the format before anything else (the empty workspace
  // is not reached); a build without it refuses every CUDA call.
  for (KvFormat format : {KvFormat::kFp8E4M3, KvFormat::kFp8DsMla}) {
    const int64_t width = kv_token_width(format);
    auto kv8 = allocate(Device{}, static_cast<size_t>(h.c.num_pages) * h.c.page_size * width);
    SparseDecodeParams fp8 = p;
    fp8.kv_cache =
        make_tensor(kv8->data(), DType::kUInt8, {h.c.num_pages, h.c.page_size, width}, cuda);
    fp8.kv_format = format;
    st = sparse_decode(fp8, Workspace{}, ExecConfig{});
    EXPECT_EQ(st.code(), StatusCode::kUnsupported) << st.message();
    if (cuda_available_in_build()) {
      EXPECT_EQ(st.message().rfind("mla::sparse_decode: argument 'kv_format': ", 0), 0u)
          << st.message();
      EXPECT_NE(st.message().find(kv_format_name(format)), std::string::npos) << st.message();
    }
    expect_out_untouched();
  }
  size_t bytes = 0;
  EXPECT_EQ(sparse_workspace_size({2, 1, 16, 8}, cuda, ExecConfig{}, &bytes).code(),
            StatusCode::kUnsupported);
}

}  // namespace
}  // namespace mla::testing
