// Every CUDA entry point runs on the device of its tensors, not on the current one: with GPU 0
// current, decode, plan, decode_planned, check_data_errors, write_kv_cache, merge_states and
// mla::Decoder get every tensor on GPU 1 and are checked against the CPU backend, and GPU 0
// stays current. Tensors on two devices are rejected naming both. Skips with fewer than two GPUs.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "harness.h"
#include "mla/decoder.h"

namespace mla::testing {
namespace {

constexpr Device kGpu0{DeviceType::kCUDA, 0};
constexpr Device kGpu1{DeviceType::kCUDA, 1};

class TwoDevices : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() < 2) GTEST_SKIP() << "fewer than two CUDA devices";
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  }
  void TearDown() override {
    if (IsSkipped()) return;
    int current = -1;
    EXPECT_EQ(cudaGetDevice(&current), cudaSuccess);
    EXPECT_EQ(current, 0) << "a call left another device current";
  }
};

template <typename T>
std::unique_ptr<DeviceBuffer> on_gpu1(const std::vector<T>& host) {
  return upload_vector(kGpu1, host);
}

TEST_F(TwoDevices, Decode) {
  std::vector<DecodeCase> cases = corner_cases();
  for (const DecodeCase& c : correctness_sweep(0)) cases.push_back(c);
  for (const DecodeCase& c : cases) {
    Status status;
    const Comparison cmp = run_decode_case(c, kGpu1, ExecConfig{}, &status);
    ASSERT_TRUE(status.ok()) << describe(c) << ": " << status.message();
    EXPECT_TRUE(cmp.ok) << describe(c) << ": " << cmp.failure;
  }
}

TEST_F(TwoDevices, PlanDecodePlannedAndDataErrors) {
  const DecodeCase c = make_case("two_devices", 6, 2, 32, 16, {40, 0, 300, 1, 70, 2000}, true, 9);
  HostDecode hd = make_decode(c);
  DeviceDecode dev(hd, kGpu1);
  ASSERT_TRUE(dev.sized.ok()) << dev.sized.message();
  ASSERT_TRUE(plan(dev.params, dev.workspace(), ExecConfig{}).ok());
  ASSERT_TRUE(decode_planned(dev.params, dev.workspace(), ExecConfig{}).ok());
  EXPECT_TRUE(check_data_errors(dev.workspace(), kGpu1, ExecConfig{}).ok());
  const std::vector<uint16_t> out = dev.out_host(hd);
  const std::vector<float> lse = dev.lse_host(hd);
  const Comparison cmp = compare_decode(hd, out.data(), lse.data());
  EXPECT_TRUE(cmp.ok) << cmp.failure;

  std::vector<int32_t> bad = hd.seq_lens;
  bad[1] = -3;
  dev.seq_lens->upload(bad.data(), bad.size() * sizeof(int32_t));
  ASSERT_TRUE(decode(dev.params, dev.workspace(), ExecConfig{}).ok());
  const Status errors = check_data_errors(dev.workspace(), kGpu1, ExecConfig{});
  EXPECT_EQ(errors.code(), StatusCode::kDataError);
  EXPECT_NE(errors.message().find("seq_lens[1] = -3"), std::string::npos) << errors.message();
}

TEST_F(TwoDevices, WriteKvCache) {
  const int64_t num_pages = 5, page = 16, tokens = 40;
  std::mt19937_64 rng(3);
  std::vector<int64_t> slots(static_cast<size_t>(num_pages * page));
  for (size_t i = 0; i < slots.size(); ++i) slots[i] = static_cast<int64_t>(i);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(tokens);
  slots[7] = -1;
  std::uniform_int_distribution<int> bits(0, 0x3fff);
  std::vector<uint16_t> kv_c(tokens * kHeadDimV), k_pe(tokens * kHeadDimRope);
  for (uint16_t& v : kv_c) v = static_cast<uint16_t>(bits(rng));
  for (uint16_t& v : k_pe) v = static_cast<uint16_t>(bits(rng));
  std::vector<uint16_t> expected(num_pages * page * kHeadDimQK, kPoison16);
  auto params = [&](Device d, void* c, void* pe, void* sl, void* kv) {
    KvCacheWriteParams p;
    p.kv_c = make_tensor(c, DType::kBFloat16, {tokens, kHeadDimV}, d);
    p.k_pe = make_tensor(pe, DType::kBFloat16, {tokens, kHeadDimRope}, d);
    p.slot_mapping = make_tensor(sl, DType::kInt64, {tokens}, d);
    p.kv_cache = make_tensor(kv, DType::kBFloat16, {num_pages, page, kHeadDimQK}, d);
    return p;
  };
  ASSERT_TRUE(
      write_kv_cache(params(Device{}, kv_c.data(), k_pe.data(), slots.data(), expected.data()), {})
          .ok());
  auto d_c = on_gpu1(kv_c), d_pe = on_gpu1(k_pe), d_slots = on_gpu1(slots);
  auto d_kv = on_gpu1(std::vector<uint16_t>(expected.size(), kPoison16));
  const Status s =
      write_kv_cache(params(kGpu1, d_c->data(), d_pe->data(), d_slots->data(), d_kv->data()), {});
  ASSERT_TRUE(s.ok()) << s.message();
  synchronize(kGpu1);
  EXPECT_EQ(download_vector<uint16_t>(*d_kv, expected.size()), expected);
}

TEST_F(TwoDevices, MergeStates) {
  const int64_t t = 9, h = 4, d = 64;
  std::mt19937_64 rng(4);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  std::vector<float> out_a(t * h * d), out_b(t * h * d), lse_a(t * h), lse_b(t * h);
  for (float& v : out_a) v = dist(rng);
  for (float& v : out_b) v = dist(rng);
  for (float& v : lse_a) v = dist(rng);
  for (float& v : lse_b) v = dist(rng);
  lse_a[1] = -std::numeric_limits<float>::infinity();
  lse_b[2] = -std::numeric_limits<float>::infinity();
  std::vector<float> expected(t * h * d, std::nanf("")), expected_lse(t * h, std::nanf(""));
  auto params = [&](Device dev, void* oa, void* la, void* ob, void* lb, void* o, void* l) {
    MergeParams p;
    p.out_a = make_tensor(oa, DType::kFloat32, {t, h, d}, dev);
    p.lse_a = make_tensor(la, DType::kFloat32, {t, h}, dev);
    p.out_b = make_tensor(ob, DType::kFloat32, {t, h, d}, dev);
    p.lse_b = make_tensor(lb, DType::kFloat32, {t, h}, dev);
    p.out = make_tensor(o, DType::kFloat32, {t, h, d}, dev);
    p.lse = make_tensor(l, DType::kFloat32, {t, h}, dev);
    return p;
  };
  ASSERT_TRUE(merge_states(params(Device{}, out_a.data(), lse_a.data(), out_b.data(), lse_b.data(),
                                  expected.data(), expected_lse.data()),
                           {})
                  .ok());
  auto oa = on_gpu1(out_a), la = on_gpu1(lse_a), ob = on_gpu1(out_b), lb = on_gpu1(lse_b);
  auto o = on_gpu1(std::vector<float>(expected.size(), std::nanf("")));
  auto l = on_gpu1(std::vector<float>(expected_lse.size(), std::nanf("")));
  const Status s = merge_states(
      params(kGpu1, oa->data(), la->data(), ob->data(), lb->data(), o->data(), l->data()), {});
  ASSERT_TRUE(s.ok()) << s.message();
  synchronize(kGpu1);
  const std::vector<float> got = download_vector<float>(*o, expected.size());
  const std::vector<float> got_lse = download_vector<float>(*l, expected_lse.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], 1e-5f) << i;
  for (size_t i = 0; i < got_lse.size(); ++i) ASSERT_NEAR(got_lse[i], expected_lse[i], 1e-5f) << i;
}

TEST_F(TwoDevices, Decoder) {
  const DecodeCase c = make_case("decoder", 5, 1, 16, 32, {300, 0, 65, 1, 1000}, false, 11);
  const HostDecode hd = make_decode(c);
  DecoderConfig config;
  config.device = kGpu1;
  config.max_batch = 8;
  config.h_q = 16;
  config.max_pages_per_seq = hd.max_pages;
  std::unique_ptr<Decoder> decoder;
  Status s = Decoder::create(config, &decoder);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(decoder->check_data_errors(nullptr).ok());  // nothing ran yet
  StepMetadata step;
  step.batch = c.batch;
  step.seq_lens = hd.seq_lens.data();
  step.block_table = hd.block_table.data();
  step.pages_per_seq = hd.max_pages;
  ASSERT_TRUE(decoder->begin_step(step, nullptr).ok());
  DeviceDecode dev(hd, kGpu1);
  LayerParams layer;
  layer.q = dev.params.q;
  layer.q_pe = dev.params.q_pe;
  layer.kv_cache = dev.params.kv_cache;
  layer.out = dev.params.out;
  layer.lse = dev.params.lse;
  layer.softmax_scale = dev.params.softmax_scale;
  s = decoder->decode(layer, nullptr);
  ASSERT_TRUE(s.ok()) << s.message();
  s = decoder->check_data_errors(nullptr);
  ASSERT_TRUE(s.ok()) << s.message();
  const std::vector<uint16_t> out = dev.out_host(hd);
  const std::vector<float> lse = dev.lse_host(hd);
  const Comparison cmp = compare_decode(hd, out.data(), lse.data());
  EXPECT_TRUE(cmp.ok) << cmp.failure;
}

// Views on two devices: rejected before anything runs, naming both arguments. Views that say
// cuda:0 over memory of GPU 1: rejected naming the argument.
TEST_F(TwoDevices, TensorsOnTwoDevicesAreRejected) {
  const DecodeCase c = make_case("mixed", 2, 1, 16, 16, {40, 7}, false, 12);
  const HostDecode hd = make_decode(c);
  DeviceDecode dev(hd, kGpu1);
  DecodeParams p = dev.params;
  p.kv_cache.device = kGpu0;
  Status s = decode(p, dev.workspace(), ExecConfig{});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'kv_cache'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("'q'"), std::string::npos) << s.message();

  DeviceDecode on0(hd, kGpu0);
  p = dev.params;
  for (TensorView* t : {&p.q, &p.q_pe, &p.kv_cache, &p.block_table, &p.seq_lens, &p.out, &p.lse}) {
    t->device = kGpu0;
  }
  s = decode(p, on0.workspace(), ExecConfig{});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'out'"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace mla::testing
