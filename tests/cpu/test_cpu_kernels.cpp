// Every CPU kernel variant (generic, AVX2, AVX-512, AVX512-BF16) this machine can run, forced in
// turn with MLA_CPU_ISA, against the reference: out, lse and workspace poisoned before each call,
// dead pages and page tails NaN, element-by-element comparison (harness.h). The cases aim at the
// kernel's edges: partial KV tiles, page sizes 1 and 256, empty and single-token requests,
// causal rows that see nothing, odd row counts (padding lanes), fp16, split q, strided
// layouts, and many threads on one long request (split-KV pieces plus the merge).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "core/half.h"
#include "cpu/fast/isa.h"
#include "harness.h"

namespace mla::testing {
namespace {

using cpu::fast::Isa;

// Sets MLA_CPU_ISA for the lifetime of the object, restoring the previous value after.
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa) {
    if (const char* old = std::getenv("MLA_CPU_ISA")) old_ = old;
    setenv("MLA_CPU_ISA", cpu::fast::isa_name(isa), 1);
  }
  ~ScopedIsa() {
    if (old_) {
      setenv("MLA_CPU_ISA", old_->c_str(), 1);
    } else {
      unsetenv("MLA_CPU_ISA");
    }
  }

 private:
  std::optional<std::string> old_;
};

struct KernelCase {
  DecodeCase c;
  int threads;
};

std::vector<KernelCase> kernel_cases() {
  std::vector<KernelCase> cases;
  auto add = [&](const std::string& name, int threads, int batch, int s_q, int h_q, int page,
                 std::vector<int32_t> lens, bool causal = false) -> DecodeCase& {
    cases.push_back(
        {make_case(name, batch, s_q, h_q, page, std::move(lens), causal, 100 + cases.size()),
         threads});
    return cases.back().c;
  };
  add("empty_and_single", 2, 4, 1, 16, 64, {0, 1, 0, 2});
  add("page_size_1", 2, 2, 1, 16, 1, {1, 97});
  add("page_size_256_tails", 3, 3, 1, 16, 256, {255, 256, 513});
  constexpr int32_t kTile = cpu::fast::kKvTile;
  add("tile_edges", 2, 6, 1, 16, 16, {kTile - 1, kTile, kTile + 1, 2 * kTile + 1, 23, 25});
  add("h_q_1", 2, 3, 1, 1, 16, {0, 100, 33});
  add("h_q_3_causal_s4", 2, 2, 4, 3, 16, {3, 50}, true);
  add("h_q_128_two_tiles", 2, 2, 1, 128, 64, {130, 7});
  add("h_q_128_mtp4", 3, 2, 4, 128, 32, {70, 2}, true);
  add("causal_rows_see_nothing", 2, 2, 4, 16, 16, {2, 0}, true);
  add("s_q_16_rows_256", 2, 1, 16, 16, 64, {60}, true);
  add("fp16", 2, 3, 2, 16, 64, {300, 1, 65}, true).dtype = DType::kFloat16;
  add("fp16_h_q_128", 2, 2, 1, 128, 16, {200, 49}).dtype = DType::kFloat16;
  add("split_q", 2, 2, 1, 16, 64, {129, 64}).split_q = true;
  add("lse_bhs_padded", 2, 2, 2, 16, 64, {100, 31}).padded_strides = true;
  cases.back().c.lse = LseLayout::kBHS;
  add("no_lse", 2, 2, 1, 16, 64, {100, 31}).lse = LseLayout::kNone;
  // One long request over many threads: several KV pieces per row tile, then the merge.
  add("long_split_h16", 8, 1, 1, 16, 64, {6000});
  add("long_split_h128", 5, 1, 1, 128, 64, {3000});
  add("long_split_causal", 7, 1, 2, 64, 16, {2500}, true);
  add("long_split_mixed", 6, 3, 1, 16, 64, {4000, 0, 1});
  return cases;
}

std::vector<Isa> runnable_isas() {
  std::vector<Isa> isas;
  for (Isa isa : cpu::fast::kAllIsas) {
    if (cpu::fast::isa_supported(isa)) isas.push_back(isa);
  }
  return isas;
}

class CpuKernel : public ::testing::TestWithParam<Isa> {};

TEST_P(CpuKernel, SelectedByEnvironment) {
  ScopedIsa scoped(GetParam());
  EXPECT_EQ(cpu::fast::selected_isa(), GetParam());
  EXPECT_STREQ(cpu::fast::kernels(GetParam()).name, cpu::fast::isa_name(GetParam()));
}

TEST_P(CpuKernel, MatchesReference) {
  ScopedIsa scoped(GetParam());
  for (const KernelCase& kc : kernel_cases()) {
    ExecConfig config;
    config.num_threads = kc.threads;
    Status status;
    const Comparison r = run_decode_case(kc.c, Device{}, config, &status);
    ASSERT_TRUE(status.ok()) << kc.c.name << ": " << status.message();
    EXPECT_TRUE(r.ok) << cpu::fast::isa_name(GetParam()) << " " << describe(kc.c)
                      << " threads=" << kc.threads << ": " << r.failure;
  }
}

// Two calls on the same inputs give bit-identical out and lse, whatever the workspace holds
// from the first call: the split schedule is deterministic and no partial leaks across calls.
TEST_P(CpuKernel, RepeatableWithDirtyWorkspace) {
  ScopedIsa scoped(GetParam());
  DecodeCase c;
  c.batch = 3;
  c.s_q = 2;
  c.h_q = 64;
  c.causal = true;
  c.seq_lens = {2000, 0, 333};
  HostDecode hd = make_decode(c);
  ExecConfig config;
  config.num_threads = 7;
  size_t bytes = 0;
  ASSERT_TRUE(workspace_size({c.batch, c.s_q, c.h_q}, Device{}, config, &bytes).ok());
  auto ws = allocate(Device{}, bytes);
  std::memset(ws->data(), kPoisonByte, bytes);
  std::vector<uint16_t> out[2];
  std::vector<float> lse[2];
  for (int call = 0; call < 2; ++call) {
    out[call].assign(hd.out_elems, kPoison16);
    lse[call].assign(hd.lse_elems, detail::bits_to_float(kPoison32));
    const DecodeParams p =
        hd.params(Device{}, hd.q.data(), hd.q_pe.data(), hd.kv.data(), hd.block_table.data(),
                  hd.seq_lens.data(), out[call].data(), lse[call].data());
    ASSERT_TRUE(decode(p, {ws->data(), bytes}, config).ok());
  }
  EXPECT_EQ(std::memcmp(out[0].data(), out[1].data(), hd.out_elems * sizeof(uint16_t)), 0);
  EXPECT_EQ(std::memcmp(lse[0].data(), lse[1].data(), hd.lse_elems * sizeof(float)), 0);
  EXPECT_TRUE(compare_decode(hd, out[1].data(), lse[1].data()).ok);
}

std::string isa_test_name(const ::testing::TestParamInfo<Isa>& info) {
  return cpu::fast::isa_name(info.param);
}

INSTANTIATE_TEST_SUITE_P(Isas, CpuKernel, ::testing::ValuesIn(runnable_isas()), isa_test_name);

// A variant the CPU lacks, or an unknown name, falls back to the default, which the CPU runs.
TEST(CpuKernelSelection, FallsBackToDefault) {
  const Isa fallback = cpu::fast::default_isa();
  EXPECT_TRUE(cpu::fast::isa_supported(fallback));
  for (Isa isa : cpu::fast::kAllIsas) {
    ScopedIsa scoped(isa);
    EXPECT_EQ(cpu::fast::selected_isa(), cpu::fast::isa_supported(isa) ? isa : fallback);
  }
  ScopedIsa scoped(Isa::kGeneric);
  setenv("MLA_CPU_ISA", "no-such-isa", 1);
  EXPECT_EQ(cpu::fast::selected_isa(), fallback);
}

}  // namespace
}  // namespace mla::testing
