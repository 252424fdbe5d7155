// The CPU fast path against the reference over the sweep and the corner cases, with out, lse
// and workspace poisoned before every call and dead memory NaN-filled (see harness.h).
#include <gtest/gtest.h>

#include "harness.h"

namespace mla::testing {
namespace {

struct CpuRun {
  DecodeCase c;
  int threads;
};

class CpuDecode : public ::testing::TestWithParam<CpuRun> {};

TEST_P(CpuDecode, MatchesReferenceAndWritesEverything) {
  const CpuRun& run = GetParam();
  ExecConfig config;
  config.num_threads = run.threads;
  Status status;
  const Comparison r = run_decode_case(run.c, Device{}, config, &status);
  ASSERT_TRUE(status.ok()) << status.message();
  EXPECT_TRUE(r.ok) << describe(run.c) << " threads=" << run.threads << ": " << r.failure;
  EXPECT_GT(r.checked, 0);
}

std::vector<CpuRun> sweep_runs() {
  std::vector<CpuRun> runs;
  const int thread_counts[] = {1, 2, 5};
  int i = 0;
  for (const DecodeCase& c : correctness_sweep(test_level())) {
    runs.push_back({c, thread_counts[i++ % 3]});
  }
  return runs;
}

std::vector<CpuRun> corner_runs() {
  std::vector<CpuRun> runs;
  for (const DecodeCase& c : corner_cases()) {
    // Many threads on few requests forces KV splits and the merge.
    for (int threads : {1, 7}) runs.push_back({c, threads});
  }
  return runs;
}

std::string run_name(const ::testing::TestParamInfo<CpuRun>& param_info) {
  return param_info.param.c.name + "_t" + std::to_string(param_info.param.threads);
}

INSTANTIATE_TEST_SUITE_P(Sweep, CpuDecode, ::testing::ValuesIn(sweep_runs()), run_name);
INSTANTIATE_TEST_SUITE_P(Corners, CpuDecode, ::testing::ValuesIn(corner_runs()), run_name);

// plan() + decode_planned() give the same result as decode() on the CPU.
TEST(CpuDecodeApi, PlanThenDecodePlanned) {
  DecodeCase c;
  c.batch = 3;
  c.h_q = 16;
  c.seq_lens = {100, 0, 65};
  const HostDecode hd = make_decode(c);
  std::vector<uint16_t> out(hd.out_elems, kPoison16);
  std::vector<float> lse(hd.lse_elems, 0.0f);
  HostDecode copy = hd;
  const DecodeParams p =
      copy.params(Device{}, copy.q.data(), copy.q_pe.data(), copy.kv.data(),
                  copy.block_table.data(), copy.seq_lens.data(), out.data(), lse.data());
  ExecConfig config;
  config.num_threads = 3;
  size_t bytes = 0;
  ASSERT_TRUE(workspace_size({c.batch, c.s_q, c.h_q}, Device{}, config, &bytes).ok());
  auto ws = allocate(Device{}, bytes);
  ASSERT_TRUE(plan(p, {ws->data(), bytes}, config).ok());
  ASSERT_TRUE(decode_planned(p, {ws->data(), bytes}, config).ok());
  const Comparison r = compare_decode(hd, out.data(), lse.data());
  EXPECT_TRUE(r.ok) << r.failure;
}

// Workspace size depends on shapes and threads only, never on sequence lengths, and batch 0
// is a valid no-op.
TEST(CpuDecodeApi, WorkspaceSizeAndEmptyBatch) {
  ExecConfig config;
  config.num_threads = 4;
  size_t a = 0, b = 0;
  ASSERT_TRUE(workspace_size({8, 1, 16}, Device{}, config, &a).ok());
  ASSERT_TRUE(workspace_size({8, 1, 16}, Device{}, config, &b).ok());
  EXPECT_EQ(a, b);
  DecodeCase c;
  c.batch = 0;
  Status status;
  const Comparison r = run_decode_case(c, Device{}, config, &status);
  EXPECT_TRUE(status.ok()) << status.message();
  EXPECT_TRUE(r.ok) << r.failure;
}

}  // namespace
}  // namespace mla::testing
