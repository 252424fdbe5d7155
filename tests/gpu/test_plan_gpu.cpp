// decode_planned without a matching plan(): a workspace that never saw plan(), a plan() for
// another batch, seq_lens changed after plan(), and a captured decode_planned replayed with new
// seq_lens and no new plan(). Each returns OK (the mismatch is on the device), writes every
// element of out and lse as NaN, and check_data_errors() names the cause.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "harness.h"

namespace mla::testing {
namespace {

constexpr Device kGpu{DeviceType::kCUDA, 0};
constexpr uint16_t kFinite16 = 0x3c3c;  // finite in bf16 and fp16: a NaN read back was written

class PlanGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

DecodeCase plan_case(int batch, uint64_t seed) {
  DecodeCase c;
  c.name = "plan" + std::to_string(batch);
  c.batch = batch;
  c.h_q = 64;
  c.page_size = 64;
  const std::vector<int32_t> lens = {1000, 0, 3000, 64, 1, 2500, 700, 129};
  for (int b = 0; b < batch; ++b) c.seq_lens.push_back(lens[b % lens.size()] + (b / 8) * 17);
  c.seed = seed;
  return c;
}

// Fills out and lse with finite values, so that a NaN read back proves a write.
void fill_finite(DeviceDecode& dev, const HostDecode& hd) {
  const std::vector<uint16_t> out(hd.out_elems, kFinite16);
  dev.out->upload(out.data(), out.size() * sizeof(uint16_t));
  const std::vector<float> lse(std::max<size_t>(hd.lse_elems, 1), 1.5f);
  dev.lse->upload(lse.data(), lse.size() * sizeof(float));
}

bool is_nan16(uint16_t v, DType dtype) {
  return dtype == DType::kBFloat16 ? (v & 0x7fff) > 0x7f80 : (v & 0x7fff) > 0x7c00;
}

// Every element of out and lse is NaN.
void expect_all_nan(const DeviceDecode& dev, const HostDecode& hd) {
  const std::vector<uint16_t> out = dev.out_host(hd);
  const std::vector<float> lse = dev.lse_host(hd);
  size_t not_nan = 0;
  for (uint16_t v : out) not_nan += !is_nan16(v, hd.c.dtype);
  for (size_t i = 0; i < hd.lse_elems; ++i) not_nan += !std::isnan(lse[i]);
  EXPECT_EQ(not_nan, 0u) << "of " << out.size() << " out and " << hd.lse_elems << " lse elements";
}

void expect_matches_reference(const DeviceDecode& dev, const HostDecode& hd) {
  const std::vector<uint16_t> out = dev.out_host(hd);
  const std::vector<float> lse = dev.lse_host(hd);
  const Comparison cmp = compare_decode(hd, out.data(), lse.data());
  EXPECT_TRUE(cmp.ok) << cmp.failure;
}

void expect_plan_error(Workspace ws, const std::string& what) {
  const Status s = check_data_errors(ws, kGpu, ExecConfig{});
  EXPECT_EQ(s.code(), StatusCode::kDataError) << s.message();
  EXPECT_NE(s.message().find("plan()"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(what), std::string::npos) << s.message();
}

// A workspace fresh from allocation, whatever it holds (NaN bytes, zeros, a finite pattern).
TEST_F(PlanGpu, NeverPlannedWorkspace) {
  const HostDecode hd = make_decode(plan_case(8, 1));
  for (uint8_t fill : {uint8_t{0xff}, uint8_t{0x00}, uint8_t{0x3c}}) {
    SCOPED_TRACE(static_cast<int>(fill));
    DeviceDecode dev(hd, kGpu);
    ASSERT_TRUE(dev.sized.ok());
    const std::vector<uint8_t> bytes(dev.ws_bytes, fill);
    dev.ws->upload(bytes.data(), bytes.size());
    fill_finite(dev, hd);
    const Status s = decode_planned(dev.params, dev.workspace(), ExecConfig{});
    ASSERT_TRUE(s.ok()) << s.message();
    synchronize(kGpu);
    expect_all_nan(dev, hd);
    expect_plan_error(dev.workspace(), "no plan()");
  }
}

// plan() for batch 64, then decode_planned for batch 3 on the same workspace.
TEST_F(PlanGpu, PlanForAnotherBatch) {
  const HostDecode big = make_decode(plan_case(64, 2));
  const HostDecode small = make_decode(plan_case(3, 3));
  DeviceDecode planned(big, kGpu), run(small, kGpu);
  ASSERT_TRUE(planned.sized.ok() && run.sized.ok());
  ASSERT_GE(planned.ws_bytes, run.ws_bytes);
  ASSERT_TRUE(plan(planned.params, planned.workspace(), ExecConfig{}).ok());
  fill_finite(run, small);
  const Status s = decode_planned(run.params, planned.workspace(), ExecConfig{});
  ASSERT_TRUE(s.ok()) << s.message();
  synchronize(kGpu);
  expect_all_nan(run, small);
  expect_plan_error(planned.workspace(), "batch, s_q, h_q");
}

// plan(), then one request's seq_len grows before decode_planned.
TEST_F(PlanGpu, SeqLensGrewAfterPlan) {
  const HostDecode hd = make_decode(plan_case(8, 4));
  DeviceDecode dev(hd, kGpu);
  ASSERT_TRUE(dev.sized.ok());
  ASSERT_TRUE(plan(dev.params, dev.workspace(), ExecConfig{}).ok());
  // Unchanged seq_lens: the plan matches.
  ASSERT_TRUE(decode_planned(dev.params, dev.workspace(), ExecConfig{}).ok());
  synchronize(kGpu);
  expect_matches_reference(dev, hd);
  EXPECT_TRUE(check_data_errors(dev.workspace(), kGpu, ExecConfig{}).ok());

  std::vector<int32_t> grown = hd.seq_lens;
  grown[4] += 1;  // 1 -> 2 tokens: still within the block table
  dev.seq_lens->upload(grown.data(), grown.size() * sizeof(int32_t));
  fill_finite(dev, hd);
  ASSERT_TRUE(decode_planned(dev.params, dev.workspace(), ExecConfig{}).ok());
  synchronize(kGpu);
  expect_all_nan(dev, hd);
  expect_plan_error(dev.workspace(), "seq_lens[4]");
}

// A graph that holds decode_planned only, replayed after seq_lens changed without a new plan().
TEST_F(PlanGpu, GraphReplayWithoutNewPlan) {
  const HostDecode hd = make_decode(plan_case(8, 5));
  DeviceDecode dev(hd, kGpu);
  ASSERT_TRUE(dev.sized.ok());
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  ExecConfig config;
  config.stream = stream;
  ASSERT_TRUE(plan(dev.params, dev.workspace(), config).ok());
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  const Status decoded = decode_planned(dev.params, dev.workspace(), config);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_TRUE(decoded.ok()) << decoded.message();
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);

  // Replay with the planned seq_lens: right.
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  expect_matches_reference(dev, hd);
  EXPECT_TRUE(check_data_errors(dev.workspace(), kGpu, config).ok());

  // seq_lens change (one shorter, one longer), no plan(): every element NaN, the cause reported.
  std::vector<int32_t> changed = hd.seq_lens;
  changed[0] -= 10;
  changed[6] += 100;
  dev.seq_lens->upload(changed.data(), changed.size() * sizeof(int32_t));
  fill_finite(dev, hd);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  expect_all_nan(dev, hd);
  expect_plan_error(dev.workspace(), "seq_lens[0]");

  // The planned seq_lens back and a new plan(): right again, the error cleared.
  dev.seq_lens->upload(hd.seq_lens.data(), hd.seq_lens.size() * sizeof(int32_t));
  ASSERT_TRUE(plan(dev.params, dev.workspace(), config).ok());
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  expect_matches_reference(dev, hd);
  EXPECT_TRUE(check_data_errors(dev.workspace(), kGpu, config).ok());

  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace mla::testing
