// The CUDA decode path against the CPU reference: every case runs with poisoned out / lse /
// workspace and NaN-filled dead memory (harness.h), every element compared. Also: each
// registered kernel configuration (through the override that MLA_CUDA_SMEM_LIMIT /
// MLA_CUDA_KERNEL set), bad data on the device, and CUDA-graph replay with sequence lengths
// changed after capture.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/backends.h"
#include "gpu_cases.h"
#include "harness.h"

namespace mla::testing {
namespace {

class DecodeGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(DecodeGpu, CornerCases) {
  for (const DecodeCase& c : corner_cases()) expect_case_passes(c);
}

TEST_F(DecodeGpu, Sweep) {
  for (const DecodeCase& c : correctness_sweep(test_level())) expect_case_passes(c);
}

// Each compiled configuration, whatever the card would choose: the Ampere-class fallbacks
// (shared memory limited) and each Hopper one by name.
TEST_F(DecodeGpu, EveryKernelConfiguration) {
  // Every registered configuration this device runs, also for the shapes it does not serve by
  // default (the sm_90a kernels on compute capability 9.0 only), and the Ampere-class fallbacks.
  const std::vector<cuda::KernelOverride> configs = every_configuration(KvFormat::kSameAsQ);
  EXPECT_GE(configs.size(), 3u);
  expect_cases_pass_under(corner_cases(), configs);
  expect_cases_pass_under(correctness_sweep(0), configs);
}

// The harness's buffers on GPU 0, the workspace sized.
struct DeviceDecode : testing::DeviceDecode {
  explicit DeviceDecode(const HostDecode& hd) : testing::DeviceDecode(hd, kGpu) {
    EXPECT_TRUE(sized.ok());
  }
};

// Bad seq_len (negative, beyond the block table) and bad page ids: those requests' rows are NaN,
// the others are right, nothing is read out of bounds (memcheck), and check_data_errors names the
// lowest bad request.
TEST_F(DecodeGpu, BadDataIsFlaggedAndWrittenAsNaN) {
  DecodeCase c;
  c.name = "bad_data";
  c.batch = 6;
  c.h_q = 16;
  c.page_size = 16;
  c.seq_lens = {40, 50, 300, 20, 70, 9000};
  c.seed = 99;
  const HostDecode good = make_decode(c);

  struct Mutation {
    const char* name;
    std::vector<int> bad_requests;
    std::string message;  // expected in check_data_errors()
    void (*apply)(HostDecode&);
  };
  const std::vector<Mutation> mutations = {
      {"negative seq_len", {1}, "seq_lens[1] = -3", [](HostDecode& h) { h.seq_lens[1] = -3; }},
      {"seq_len beyond block table",
       {3},
       "seq_lens[3]",
       [](HostDecode& h) {
         h.seq_lens[3] = static_cast<int32_t>(h.max_pages * h.c.page_size + 1);
       }},
      {"page id past the cache",
       {2},
       "block_table[2][5]",
       [](HostDecode& h) {
         h.block_table[2 * h.max_pages + 5] = static_cast<int32_t>(h.num_pages);
       }},
      {"negative page id in a split request",
       {5},
       "block_table[5][300]",
       [](HostDecode& h) { h.block_table[5 * h.max_pages + 300] = -7; }},
      {"two bad requests",
       {0, 4},
       "block_table[0][1]",
       [](HostDecode& h) {
         h.block_table[0 * h.max_pages + 1] = kDeadPageId;
         h.seq_lens[4] = -1;
       }},
  };
  for (const Mutation& m : mutations) {
    SCOPED_TRACE(m.name);
    HostDecode hd = good;
    m.apply(hd);
    DeviceDecode dev(hd);
    ASSERT_TRUE(decode(dev.params, dev.workspace(), ExecConfig{}).ok());
    const Status errors = check_data_errors(dev.workspace(), kGpu, ExecConfig{});
    EXPECT_EQ(errors.code(), StatusCode::kDataError);
    EXPECT_NE(errors.message().find(m.message), std::string::npos) << errors.message();
    // Expected: the reference of the unmodified data, with the bad requests' rows all NaN.
    HostDecode expected = good;
    const int64_t rows = static_cast<int64_t>(c.s_q) * c.h_q;
    for (int b : m.bad_requests) {
      for (int64_t r = b * rows; r < (b + 1) * rows; ++r) {
        for (int d = 0; d < kHeadDimV; ++d) expected.ref_out[r * hd.out_row + d] = kPoison16;
        expected.ref_lse[r] = std::nanf("");
      }
    }
    const auto out = dev.out_host(hd);
    const auto lse = dev.lse_host(hd);
    const Comparison cmp = compare_decode(expected, out.data(), lse.data());
    EXPECT_TRUE(cmp.ok) << cmp.failure;
    // A clean plan clears the flag.
    DeviceDecode clean(good);
    ASSERT_TRUE(decode(clean.params, clean.workspace(), ExecConfig{}).ok());
    EXPECT_TRUE(check_data_errors(clean.workspace(), kGpu, ExecConfig{}).ok());
  }
}

// plan + decode_planned captured once in a CUDA graph, replayed after seq_lens changed: the
// schedule is recomputed on the device at every replay.
TEST_F(DecodeGpu, GraphReplayWithNewSeqLens) {
  DecodeCase c;
  c.name = "graph";
  c.batch = 8;
  c.h_q = 64;
  c.page_size = 64;
  c.seq_lens = {1000, 0, 3000, 64, 1, 2500, 700, 129};
  c.seed = 5;
  const HostDecode hd = make_decode(c);
  DeviceDecode dev(hd);
  // Capture while seq_lens holds something else entirely.
  const std::vector<int32_t> zeros(c.batch, 0);
  dev.seq_lens->upload(zeros.data(), zeros.size() * sizeof(int32_t));

  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  ExecConfig config;
  config.stream = stream;
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  const Status planned = plan(dev.params, dev.workspace(), config);
  const Status decoded = decode_planned(dev.params, dev.workspace(), config);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_TRUE(planned.ok()) << planned.message();
  ASSERT_TRUE(decoded.ok()) << decoded.message();
  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);

  // Replay 1: all requests empty.
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  {
    const auto out = dev.out_host(hd);
    const auto lse = dev.lse_host(hd);
    int wrong = 0;
    for (size_t r = 0; r < hd.lse_elems; ++r) {
      wrong += !(std::isinf(lse[r]) && lse[r] < 0);
      for (int d = 0; d < kHeadDimV; ++d) wrong += out[r * hd.out_row + d] != 0;
    }
    EXPECT_EQ(wrong, 0) << "empty requests must give out = 0, lse = -inf";
  }
  // Replay 2: the real lengths, outputs re-poisoned.
  dev.seq_lens->upload(hd.seq_lens.data(), hd.seq_lens.size() * sizeof(int32_t));
  const std::vector<uint16_t> poison(hd.out_elems, kPoison16);
  dev.out->upload(poison.data(), poison.size() * sizeof(uint16_t));
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const auto out = dev.out_host(hd);
  const auto lse = dev.lse_host(hd);
  const Comparison cmp = compare_decode(hd, out.data(), lse.data());
  EXPECT_TRUE(cmp.ok) << cmp.failure;

  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST_F(DecodeGpu, WorkspaceSizeDependsOnShapesOnly) {
  size_t a = 0, b = 0;
  ASSERT_TRUE(workspace_size(DecodeShape{128, 1, 16}, kGpu, ExecConfig{}, &a).ok());
  ASSERT_TRUE(workspace_size(DecodeShape{128, 1, 16}, kGpu, ExecConfig{}, &b).ok());
  EXPECT_EQ(a, b);
  EXPECT_GT(a, 0u);
  EXPECT_EQ(a % 256, 0u);
}

TEST_F(DecodeGpu, MissingDeviceIsUnsupported) {
  size_t bytes = 0;
  const Status s =
      workspace_size(DecodeShape{1, 1, 16}, Device{DeviceType::kCUDA, 1000}, ExecConfig{}, &bytes);
  EXPECT_EQ(s.code(), StatusCode::kUnsupported);
  EXPECT_NE(s.message().find("1000"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace mla::testing
