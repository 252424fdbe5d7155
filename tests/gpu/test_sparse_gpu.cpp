// Sparse decode on the GPU against the CPU reference, element by element: out, lse and the
// workspace poisoned before every call, every cache token that was not chosen NaN-filled (a read
// of one shows as NaN), -1 entries mixed in, duplicated and unsorted indices, all -1 rows, topk 1
// and odd topk, topk_lengths (entries beyond them hold garbage slots), the attention sink, h_q
// 1..128, s_q 1, 2 and 16, page sizes 1, 16 and 64, split and unsplit calls, each sparse kernel
// configuration (through the shared-memory cap), bad slots and bad topk_lengths written as NaN
// rows and flagged, a CUDA-graph replay with new indices, and fp8 caches refused (kUnsupported,
// nothing written) until the sparse kernel reads them.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/backends.h"
#include "core/half.h"
#include "gpu_cases.h"
#include "harness.h"

namespace mla::testing {
namespace {

class SparseGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

struct SparseCase {
  std::string name;
  int batch = 2, s_q = 1, h_q = 16, topk = 64, page_size = 64, num_pages = 8;
  DType dtype = DType::kBFloat16;
  bool split_q = false;      // q as (q_nope, q_pe)
  bool lengths = false;      // topk_lengths given (some 0, some full, some in between)
  bool sink = false;         // attn_sink given (head 1's is -inf)
  bool padded = false;       // q / kv / out rows padded (out padding must stay poisoned)
  bool lse = true;           // lse requested
  double none_share = 0.25;  // share of -1 entries
  bool empty_rows = true;    // every fifth query token all -1
  uint64_t seed = 1;
};

std::string describe(const SparseCase& c) {
  return c.name + " (batch " + std::to_string(c.batch) + ", s_q " + std::to_string(c.s_q) +
         ", h_q " + std::to_string(c.h_q) + ", topk " + std::to_string(c.topk) + ", page " +
         std::to_string(c.page_size) + ")";
}

float from_half(uint16_t v, DType dtype) {
  return dtype == DType::kBFloat16 ? detail::bf16_to_float(v) : detail::fp16_to_float(v);
}

float nan_poison() {
  float f;
  const uint32_t bits = kPoison32;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// A generated problem in host memory; params() views it at any addresses.
struct HostSparse {
  SparseCase c;
  int64_t q_row = 0, kv_row = 0, out_row = 0, rows = 0;
  std::vector<uint16_t> q, q_pe, kv;
  std::vector<int32_t> indices, lengths;
  std::vector<float> sink;

  int64_t q_width() const { return c.split_q ? kHeadDimV : kHeadDimQK; }
  int64_t capacity() const { return int64_t{c.num_pages} * c.page_size; }
  int32_t& index(int b, int s, int k) { return indices[(int64_t{b} * c.s_q + s) * c.topk + k]; }

  SparseDecodeParams params(Device d, void* q_p, void* q_pe_p, void* kv_p, void* indices_p,
                            void* lengths_p, void* sink_p, void* out_p, void* lse_p) const {
    SparseDecodeParams p;
    p.q = make_tensor(q_p, c.dtype, {c.batch, c.s_q, c.h_q, q_width()},
                      {c.s_q * c.h_q * q_row, c.h_q * q_row, q_row, 1}, d);
    if (c.split_q) p.q_pe = make_tensor(q_pe_p, c.dtype, {c.batch, c.s_q, c.h_q, 64}, d);
    p.kv_cache = make_tensor(kv_p, c.dtype, {c.num_pages, c.page_size, kHeadDimQK},
                             {c.page_size * kv_row, kv_row, 1}, d);
    p.indices = make_tensor(indices_p, DType::kInt32, {c.batch, c.s_q, c.topk}, d);
    if (c.lengths) p.topk_lengths = make_tensor(lengths_p, DType::kInt32, {c.batch}, d);
    if (c.sink) p.attn_sink = make_tensor(sink_p, DType::kFloat32, {c.h_q}, d);
    p.out = make_tensor(out_p, c.dtype, {c.batch, c.s_q, c.h_q, kHeadDimV},
                        {c.s_q * c.h_q * out_row, c.h_q * out_row, out_row, 1}, d);
    if (c.lse) p.lse = make_tensor(lse_p, DType::kFloat32, {c.batch, c.s_q, c.h_q}, d);
    p.softmax_scale = 0.0721687836f;
    return p;
  }
};

HostSparse make_sparse(const SparseCase& c) {
  HostSparse h;
  h.c = c;
  std::mt19937_64 rng(c.seed);
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  h.q_row = h.q_width() + (c.padded ? 64 : 0);
  h.kv_row = kHeadDimQK + (c.padded ? 32 : 0);
  h.out_row = kHeadDimV + (c.padded ? 16 : 0);
  h.rows = int64_t{c.batch} * c.s_q * c.h_q;
  h.q.assign(h.rows * h.q_row, kPoison16);
  for (int64_t r = 0; r < h.rows; ++r) {
    for (int64_t d = 0; d < h.q_width(); ++d) h.q[r * h.q_row + d] = to_half(val(rng), c.dtype);
  }
  if (c.split_q) {
    h.q_pe.resize(h.rows * kHeadDimRope);
    for (auto& x : h.q_pe) x = to_half(val(rng), c.dtype);
  }
  // Every token NaN (and every row padding) until chosen.
  h.kv.assign(h.capacity() * h.kv_row, kPoison16);
  std::vector<bool> filled(h.capacity(), false);
  auto fill = [&](int32_t slot) {
    if (filled[slot]) return;
    filled[slot] = true;
    for (int d = 0; d < kHeadDimQK; ++d) h.kv[slot * h.kv_row + d] = to_half(val(rng), c.dtype);
  };
  std::uniform_int_distribution<int32_t> any_slot(0, static_cast<int32_t>(h.capacity() - 1));
  h.lengths.assign(c.batch, c.topk);
  if (c.lengths) {
    std::uniform_int_distribution<int32_t> len(0, c.topk);
    for (int b = 0; b < c.batch; ++b) {
      h.lengths[b] = b % 3 == 0 ? 0 : b % 3 == 1 ? c.topk : len(rng);
    }
  }
  h.indices.assign(int64_t{c.batch} * c.s_q * c.topk, -1);
  for (int b = 0; b < c.batch; ++b) {
    for (int s = 0; s < c.s_q; ++s) {
      const bool all_none = c.empty_rows && (b + s) % 5 == 4;
      for (int k = 0; k < c.topk; ++k) {
        int32_t& e = h.index(b, s, k);
        if (k >= h.lengths[b]) {
          // Beyond topk_lengths: never read, so garbage (a huge slot, an unchosen NaN token, -7).
          e = k % 3 == 0 ? kDeadPageId : k % 3 == 1 ? any_slot(rng) : -7;
          continue;
        }
        if (all_none || unit(rng) < c.none_share) continue;
        // A duplicate of an earlier entry (unsorted lists), or a fresh slot.
        const int earlier = k > 0 ? static_cast<int>(unit(rng) * k) : 0;
        const int32_t prev = k > 0 ? h.index(b, s, earlier) : -1;
        e = prev >= 0 && unit(rng) < 0.2 ? prev : any_slot(rng);
        fill(e);
      }
    }
  }
  // A garbage entry beyond topk_lengths may name a chosen token: it is not read either way.
  h.sink.resize(c.h_q);
  std::uniform_real_distribution<float> sink_dist(-2.0f, 4.0f);
  for (auto& x : h.sink) x = sink_dist(rng);
  if (c.sink && c.h_q > 1) h.sink[1] = -std::numeric_limits<float>::infinity();
  return h;
}

struct Result {
  Status status;
  std::vector<uint16_t> out;  // [batch, s_q, h_q, out_row]
  std::vector<float> lse;     // [batch, s_q, h_q]
};

Result reference(const HostSparse& h) {
  HostSparse copy = h;
  Result r;
  r.out.assign(h.rows * h.out_row, kPoison16);
  r.lse.assign(h.rows, nan_poison());
  const SparseDecodeParams p =
      copy.params(Device{}, copy.q.data(), copy.q_pe.data(), copy.kv.data(), copy.indices.data(),
                  copy.lengths.data(), copy.sink.data(), r.out.data(), r.lse.data());
  ExecConfig config;
  config.reference = true;
  r.status = sparse_decode(p, Workspace{}, config);
  return r;
}

// The problem's buffers on GPU 0: inputs uploaded, out / lse poisoned, a workspace of
// sparse_workspace_size() bytes NaN-filled.
struct DeviceSparse {
  std::unique_ptr<DeviceBuffer> q, q_pe, kv, indices, lengths, sink, out, lse, ws;
  size_t ws_bytes = 0;
  Status sized;
  SparseDecodeParams params;

  explicit DeviceSparse(const HostSparse& h) {
    q = upload_vector(kGpu, h.q);
    q_pe = upload_vector(kGpu, h.q_pe);
    kv = upload_vector(kGpu, h.kv);
    indices = upload_vector(kGpu, h.indices);
    lengths = upload_vector(kGpu, h.lengths);
    sink = upload_vector(kGpu, h.sink);
    out = allocate(kGpu, h.rows * h.out_row * sizeof(uint16_t));
    lse = allocate(kGpu, h.rows * sizeof(float));
    poison(h);
    sized = sparse_workspace_size({h.c.batch, h.c.s_q, h.c.h_q, h.c.topk}, kGpu, ExecConfig{},
                                  &ws_bytes);
    ws = allocate(kGpu, ws_bytes + 1);
    const std::vector<uint8_t> fill(ws_bytes + 1, kPoisonByte);
    ws->upload(fill.data(), fill.size());
    params = h.params(kGpu, q->data(), q_pe->data(), kv->data(), indices->data(), lengths->data(),
                      sink->data(), out->data(), lse->data());
  }
  void poison(const HostSparse& h) {
    const std::vector<uint16_t> out_fill(h.rows * h.out_row, kPoison16);
    out->upload(out_fill.data(), out_fill.size() * sizeof(uint16_t));
    const std::vector<float> lse_fill(h.rows, nan_poison());
    lse->upload(lse_fill.data(), lse_fill.size() * sizeof(float));
  }
  Workspace workspace() { return Workspace{ws->data(), ws_bytes}; }
  Result result(const HostSparse& h) const {
    synchronize(kGpu);
    Result r;
    r.out = download_vector<uint16_t>(*out, h.rows * h.out_row);
    r.lse = download_vector<float>(*lse, h.rows);
    return r;
  }
};

// Every element: NaN / Inf positions exactly, finite values within atol + rtol * |expected|
// (the tolerances of the dense GPU comparison, harness.cpp), the cosine difference of all finite
// outputs, row padding still poisoned, lse untouched (poison) when not requested.
std::string compare(const HostSparse& h, const Result& got, const Result& want) {
  const bool bf16 = h.c.dtype == DType::kBFloat16;
  const double atol = bf16 ? 8e-3 : 1e-3, rtol = bf16 ? 2e-2 : 4e-3;
  const double cos_tol = bf16 ? 5e-5 : 2e-6;
  auto match = [](double g, double w, double a, double r) {
    if (std::isnan(w) || std::isnan(g)) return std::isnan(w) && std::isnan(g);
    if (std::isinf(w) || std::isinf(g)) return g == w;
    return std::fabs(g - w) <= a + r * std::fabs(w);
  };
  double dot = 0, norm_g = 0, norm_w = 0;
  for (size_t i = 0; i < got.out.size(); ++i) {
    const int64_t row = static_cast<int64_t>(i) / h.out_row,
                  d = static_cast<int64_t>(i) % h.out_row;
    if (d >= kHeadDimV) {
      if (got.out[i] != kPoison16) return "out padding written at row " + std::to_string(row);
      continue;
    }
    const double g = from_half(got.out[i], h.c.dtype), w = from_half(want.out[i], h.c.dtype);
    if (!match(g, w, atol, rtol)) {
      return "out[row " + std::to_string(row) + ", " + std::to_string(d) +
             "] = " + std::to_string(g) + ", expected " + std::to_string(w);
    }
    if (std::isfinite(w)) {
      dot += g * w;
      norm_g += g * g;
      norm_w += w * w;
    }
  }
  if (norm_g > 0 && norm_w > 0) {
    const double cos_diff = 1.0 - dot / std::sqrt(norm_g * norm_w);
    if (cos_diff > cos_tol) return "cosine difference " + std::to_string(cos_diff);
  }
  for (size_t i = 0; i < got.lse.size(); ++i) {
    if (!h.c.lse) {
      uint32_t bits;
      std::memcpy(&bits, &got.lse[i], sizeof bits);
      if (bits != kPoison32) return "lse written though not requested at " + std::to_string(i);
      continue;
    }
    if (!match(got.lse[i], want.lse[i], 1e-3, 1e-4)) {
      return "lse[" + std::to_string(i) + "] = " + std::to_string(got.lse[i]) + ", expected " +
             std::to_string(want.lse[i]);
    }
  }
  return "";
}

// Runs `h` on the GPU twice on the same workspace (the second call sees the first one's partials
// and error key: workspace contents never matter) and compares both with `want`.
void expect_matches(const HostSparse& h, const Result& want, const std::string& what) {
  DeviceSparse dev(h);
  ASSERT_TRUE(dev.sized.ok()) << dev.sized.message();
  for (int call = 0; call < 2; ++call) {
    dev.poison(h);
    const Status st = sparse_decode(dev.params, dev.workspace(), ExecConfig{});
    ASSERT_TRUE(st.ok()) << what << ": " << st.message();
    const std::string failure = compare(h, dev.result(h), want);
    EXPECT_TRUE(failure.empty()) << what << " call " << call << ": " << failure;
    const Status errors = check_data_errors(dev.workspace(), kGpu, ExecConfig{});
    EXPECT_TRUE(errors.ok()) << what << ": " << errors.message();
  }
}

std::vector<SparseCase> cases() {
  std::vector<SparseCase> v;
  SparseCase base;
  base.name = "base";
  v.push_back(base);
  SparseCase c = base;
  c.name = "topk1_h1_page1";
  c.topk = 1;
  c.h_q = 1;
  c.page_size = 1;
  c.num_pages = 300;
  c.none_share = 0.1;
  v.push_back(c);
  c = base;
  c.name = "odd_topk_h3_mtp_lengths_sink";
  c.batch = 4;
  c.s_q = 2;
  c.h_q = 3;
  c.topk = 97;
  c.page_size = 16;
  c.num_pages = 40;
  c.lengths = true;
  c.sink = true;
  v.push_back(c);
  c = base;
  c.name = "h128_mtp_sink_lengths";
  c.batch = 3;
  c.s_q = 2;
  c.h_q = 128;
  c.topk = 150;
  c.page_size = 16;
  c.num_pages = 64;
  c.lengths = true;
  c.sink = true;
  v.push_back(c);
  c = base;
  c.name = "h64_s16";
  c.s_q = 16;
  c.h_q = 64;
  c.topk = 40;
  v.push_back(c);
  c = base;
  c.name = "h32_page1_no_lse";
  c.h_q = 32;
  c.topk = 200;
  c.page_size = 1;
  c.num_pages = 1500;
  c.lse = false;
  v.push_back(c);
  c = base;
  c.name = "fp16_split_q_padded_sink";
  c.dtype = DType::kFloat16;
  c.split_q = true;
  c.padded = true;
  c.sink = true;
  c.h_q = 17;
  v.push_back(c);
  c = base;
  c.name = "all_none_sink";
  c.none_share = 1.0;
  c.sink = true;
  v.push_back(c);
  c = base;
  c.name = "latency_h8_topk2048";
  c.batch = 1;
  c.h_q = 8;
  c.topk = 2048;
  c.num_pages = 64;
  c.none_share = 0.05;
  c.empty_rows = false;
  c.sink = true;
  v.push_back(c);
  c = base;
  c.name = "h127_topk1001";
  c.batch = 1;
  c.h_q = 127;
  c.topk = 1001;
  c.num_pages = 64;
  c.none_share = 0.05;
  c.empty_rows = false;
  v.push_back(c);
  c = base;  // enough CTAs for any GPU: no split
  c.name = "unsplit_h8_b200";
  c.batch = 200;
  c.h_q = 8;
  c.topk = 33;
  c.page_size = 16;
  c.num_pages = 200;
  c.lengths = true;
  c.sink = true;
  v.push_back(c);
  c = base;  // two 64-row tiles per query token, no split
  c.name = "unsplit_h100_mtp_b40";
  c.batch = 40;
  c.s_q = 2;
  c.h_q = 100;
  c.topk = 12;
  c.num_pages = 40;
  c.sink = true;
  v.push_back(c);
  for (size_t i = 0; i < v.size(); ++i) v[i].seed = 500 + i;
  return v;
}

// The cases with their reference results, computed once for the tests that share them.
struct Expected {
  HostSparse h;
  Result want;
};
const std::vector<Expected>& expected_cases() {
  static const std::vector<Expected> all = [] {
    std::vector<Expected> v;
    for (const SparseCase& c : cases()) {
      HostSparse h = make_sparse(c);
      Result want = reference(h);
      v.push_back({std::move(h), std::move(want)});
    }
    return v;
  }();
  return all;
}

TEST_F(SparseGpu, MatchesReference) {
  for (const Expected& e : expected_cases()) {
    ASSERT_TRUE(e.want.status.ok()) << describe(e.h.c) << ": " << e.want.status.message();
    expect_matches(e.h, e.want, describe(e.h.c));
  }
}

// Every sparse configuration: 2-stage rings (the A100's 163 KB) and 16-head tiles for every
// h_q (about 100 KB, sm_86 / sm_89), on every case (sparse decode honours the override's
// shared-memory cap only).
TEST_F(SparseGpu, SmallerCardsConfigurations) {
  for (size_t limit : {size_t{163000}, size_t{101376}}) {
    ScopedKernelOverride o({"", limit});
    for (const Expected& e : expected_cases()) {
      ASSERT_TRUE(e.want.status.ok()) << e.want.status.message();
      expect_matches(e.h, e.want,
                     describe(e.h.c) + " MLA_CUDA_SMEM_LIMIT=" + std::to_string(limit));
    }
  }
}

// Every entry the same slot: each occurrence counts (lse = logit + ln topk, out = the value).
TEST_F(SparseGpu, DuplicatesCountTwice) {
  SparseCase c;
  c.name = "one_slot_five_times";
  c.batch = 1;
  c.topk = 5;
  c.none_share = 0.0;
  c.empty_rows = false;
  HostSparse h = make_sparse(c);
  for (int k = 0; k < c.topk; ++k) h.index(0, 0, k) = h.index(0, 0, 0);
  const Result want = reference(h);
  ASSERT_TRUE(want.status.ok());
  expect_matches(h, want, describe(c));
}

// A bad slot (past the cache, or below -1) among the entries that count: the rows of its query
// token are NaN (out and lse), every other row is right, nothing is read out of bounds
// (memcheck), and check_data_errors names the lowest bad entry. Split and unsplit calls.
TEST_F(SparseGpu, BadSlotIsFlaggedAndWrittenAsNaN) {
  for (int batch : {2, 140}) {  // split, and unsplit on any GPU with up to 280 SMs
    SparseCase c;
    c.name = "bad_slot";
    c.batch = batch;
    c.s_q = 2;
    c.h_q = 16;
    c.topk = batch == 2 ? 300 : 16;
    c.page_size = 16;
    c.num_pages = 40;
    c.empty_rows = false;
    c.sink = true;
    c.seed = 77 + batch;
    // Reference: the lists with the bad entries as -1; the bad query token's rows NaN.
    HostSparse clean = make_sparse(c);
    const int k_a = c.topk - 1, k_b = c.topk / 2;
    clean.index(1, 1, k_a) = -1;
    clean.index(1, 1, k_b) = -1;
    const Result clean_want = reference(clean);
    ASSERT_TRUE(clean_want.status.ok());
    for (int32_t bad_value : {static_cast<int32_t>(clean.capacity()), -5, kDeadPageId}) {
      SCOPED_TRACE("batch " + std::to_string(batch) + ", bad slot " + std::to_string(bad_value));
      HostSparse bad = clean;
      bad.index(1, 1, k_a) = bad_value;
      bad.index(1, 1, k_b) = bad_value;
      Result want = clean_want;
      for (int h = 0; h < c.h_q; ++h) {
        const int64_t row = (int64_t{1} * c.s_q + 1) * c.h_q + h;
        for (int d = 0; d < kHeadDimV; ++d) want.out[row * bad.out_row + d] = kPoison16;
        want.lse[row] = std::nanf("");
      }
      DeviceSparse dev(bad);
      ASSERT_TRUE(dev.sized.ok());
      ASSERT_TRUE(sparse_decode(dev.params, dev.workspace(), ExecConfig{}).ok());
      const std::string failure = compare(bad, dev.result(bad), want);
      EXPECT_TRUE(failure.empty()) << failure;
      const Status errors = check_data_errors(dev.workspace(), kGpu, ExecConfig{});
      EXPECT_EQ(errors.code(), StatusCode::kDataError);
      EXPECT_NE(errors.message().find("indices[1][1][" + std::to_string(k_b) + "]"),
                std::string::npos)
          << errors.message();
      // The next clean call on the same workspace clears the flag.
      DeviceSparse fresh(clean);
      ASSERT_TRUE(sparse_decode(fresh.params, dev.workspace(), ExecConfig{}).ok());
      EXPECT_TRUE(check_data_errors(dev.workspace(), kGpu, ExecConfig{}).ok());
    }
  }
}

// topk_lengths[b] outside [0, topk]: every row of request b is NaN, the others are right.
TEST_F(SparseGpu, BadTopkLengthIsFlaggedAndWrittenAsNaN) {
  for (int batch : {3, 140}) {
    SparseCase c;
    c.name = "bad_length";
    c.batch = batch;
    c.s_q = 2;
    c.h_q = 8;
    c.topk = batch == 3 ? 256 : 16;
    c.page_size = 16;
    c.num_pages = 40;
    c.lengths = true;
    c.seed = 91 + batch;
    const HostSparse good = make_sparse(c);
    const Result good_want = reference(good);
    ASSERT_TRUE(good_want.status.ok());
    for (int32_t bad_value : {c.topk + 1, -1}) {
      SCOPED_TRACE("batch " + std::to_string(batch) + ", length " + std::to_string(bad_value));
      HostSparse bad = good;
      bad.lengths[2] = bad_value;
      Result want = good_want;
      for (int64_t row = 2 * c.s_q * c.h_q; row < 3 * c.s_q * c.h_q; ++row) {
        for (int d = 0; d < kHeadDimV; ++d) want.out[row * bad.out_row + d] = kPoison16;
        want.lse[row] = std::nanf("");
      }
      DeviceSparse dev(bad);
      ASSERT_TRUE(dev.sized.ok());
      ASSERT_TRUE(sparse_decode(dev.params, dev.workspace(), ExecConfig{}).ok());
      const std::string failure = compare(bad, dev.result(bad), want);
      EXPECT_TRUE(failure.empty()) << failure;
      const Status errors = check_data_errors(dev.workspace(), kGpu, ExecConfig{});
      EXPECT_EQ(errors.code(), StatusCode::kDataError);
      EXPECT_NE(errors.message().find("topk_lengths[2] = " + std::to_string(bad_value)),
                std::string::npos)
          << errors.message();
    }
  }
}

// Captured once in a CUDA graph on a non-default stream, replayed after the indices changed:
// nothing of the call depends on their contents at capture time.
TEST_F(SparseGpu, GraphReplayWithNewIndices) {
  SparseCase c;
  c.name = "graph";
  c.batch = 3;
  c.s_q = 2;
  c.h_q = 32;
  c.topk = 256;
  c.sink = true;
  c.lengths = true;
  c.seed = 3;
  const HostSparse first = make_sparse(c);
  c.seed = 4;
  HostSparse second = make_sparse(c);
  second.q = first.q;  // same queries, sinks, and cache contents where both chose tokens
  second.sink = first.sink;
  for (int64_t i = 0; i < first.capacity() * first.kv_row; ++i) {
    if (second.kv[i] == kPoison16) second.kv[i] = first.kv[i];
  }
  HostSparse merged_first = first;
  merged_first.kv = second.kv;
  DeviceSparse dev(merged_first);
  ASSERT_TRUE(dev.sized.ok());
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  ExecConfig config;
  config.stream = stream;
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  const Status captured = sparse_decode(dev.params, dev.workspace(), config);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_TRUE(captured.ok()) << captured.message();
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (const HostSparse* h : {&merged_first, &second}) {
    HostSparse expected_input = *h;
    expected_input.kv = second.kv;
    dev.indices->upload(h->indices.data(), h->indices.size() * sizeof(int32_t));
    dev.lengths->upload(h->lengths.data(), h->lengths.size() * sizeof(int32_t));
    dev.poison(*h);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const Result want = reference(expected_input);
    ASSERT_TRUE(want.status.ok());
    const std::string failure = compare(*h, dev.result(*h), want);
    EXPECT_TRUE(failure.empty()) << failure;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// Host-checkable mistakes on CUDA tensors: a short workspace is rejected before anything runs.
TEST_F(SparseGpu, ShortWorkspaceIsRejected) {
  SparseCase c;
  c.name = "short_workspace";
  const HostSparse h = make_sparse(c);
  DeviceSparse dev(h);
  ASSERT_TRUE(dev.sized.ok());
  ASSERT_GT(dev.ws_bytes, 0u);
  const Status st =
      sparse_decode(dev.params, Workspace{dev.ws->data(), dev.ws_bytes - 1}, ExecConfig{});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.message();
  EXPECT_NE(st.message().find("'workspace'"), std::string::npos) << st.message();
  const Result r = dev.result(h);
  for (uint16_t x : r.out) ASSERT_EQ(x, kPoison16);
}

// fp8 caches are not read by the CUDA sparse kernel yet: a call with either fp8 format (and a
// valid cache, scale and workspace) is kUnsupported naming kv_format, and out and lse keep their
// poison. The same call on the 16-bit cache then runs and matches the reference.
TEST_F(SparseGpu, Fp8CachesAreUnsupported) {
  SparseCase c;
  c.name = "fp8_unsupported";
  const HostSparse h = make_sparse(c);
  DeviceSparse dev(h);
  ASSERT_TRUE(dev.sized.ok()) << dev.sized.message();
  auto scale = upload_vector(kGpu, std::vector<float>{0.5f});
  for (KvFormat format : {KvFormat::kFp8E4M3, KvFormat::kFp8DsMla}) {
    for (bool scale_tensor : {false, true}) {
      if (scale_tensor && format != KvFormat::kFp8E4M3) continue;
      SCOPED_TRACE(std::string(kv_format_name(format)) + (scale_tensor ? " scale tensor" : ""));
      const int64_t width = kv_token_width(format);
      // Every byte 0x38 (e4m3 1.0; fp8_ds_mla scales 0x38383838, finite and > 0).
      auto kv8 = upload_vector(kGpu, std::vector<uint8_t>(h.capacity() * width, 0x38));
      SparseDecodeParams p = dev.params;
      p.kv_cache = make_tensor(kv8->data(), DType::kUInt8, {c.num_pages, c.page_size, width}, kGpu);
      p.kv_format = format;
      if (scale_tensor) {
        p.kv_scale_tensor = make_tensor(scale->data(), DType::kFloat32, {1}, kGpu);
      } else if (format == KvFormat::kFp8E4M3) {
        p.kv_scale = 0.5f;
      }
      dev.poison(h);
      const Status st = sparse_decode(p, dev.workspace(), ExecConfig{});
      EXPECT_EQ(st.code(), StatusCode::kUnsupported) << st.message();
      EXPECT_EQ(st.message().rfind("mla::sparse_decode: argument 'kv_format': ", 0), 0u)
          << st.message();
      EXPECT_NE(st.message().find(kv_format_name(format)), std::string::npos) << st.message();
      const Result r = dev.result(h);
      for (uint16_t x : r.out) ASSERT_EQ(x, kPoison16);
      for (float x : r.lse) {
        uint32_t bits;
        std::memcpy(&bits, &x, sizeof bits);
        ASSERT_EQ(bits, kPoison32);
      }
    }
  }
  const Result want = reference(h);
  ASSERT_TRUE(want.status.ok()) << want.status.message();
  expect_matches(h, want, describe(c));
}

}  // namespace
}  // namespace mla::testing
