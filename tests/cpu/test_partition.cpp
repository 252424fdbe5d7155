// The split-KV schedule's cuts (src/cuda/scheduler/partition.h, used by the CUDA scheduler
// kernel), checked on the host: both kinds of cut cover [0, total) in order, whole-request cuts
// never fall inside a request and are chosen only within 1/16 of the equal share, and the spec's
// uniform rows get them while long or single requests keep equal cuts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "cuda/scheduler/partition.h"

namespace mla::testing {
namespace {

namespace part = mla::cuda::partition;

constexpr int64_t kOverhead = 2;  // kRequestOverhead in src/cuda/workspace.h
constexpr int64_t kBlock = 64;    // kScheduleBlock

std::vector<int64_t> prefix_of(const std::vector<int32_t>& lens) {
  std::vector<int64_t> prefix(lens.size() + 1, 0);
  for (size_t b = 0; b < lens.size(); ++b) {
    prefix[b + 1] = prefix[b] + (lens[b] + kBlock - 1) / kBlock + kOverhead;
  }
  return prefix;
}

struct Cuts {
  std::vector<int64_t> begin;  // num_parts + 1 entries
  bool whole = false;
  int64_t part_cost = 0;
};

// What the scheduler kernel computes, serially.
Cuts schedule(const std::vector<int64_t>& prefix, int32_t num_parts) {
  const int32_t batch = static_cast<int32_t>(prefix.size()) - 1;
  const int64_t total = prefix.back();
  Cuts cuts;
  cuts.part_cost = part::part_cost(total, num_parts);
  int64_t widest = 0;
  for (int32_t p = 0; p < num_parts; ++p) {
    widest = std::max(widest, part::whole_cut(prefix.data(), batch, total, cuts.part_cost, p + 1) -
                                  part::whole_cut(prefix.data(), batch, total, cuts.part_cost, p));
  }
  cuts.whole = part::use_whole_cuts(widest, cuts.part_cost);
  for (int32_t p = 0; p <= num_parts; ++p) {
    cuts.begin.push_back(cuts.whole
                             ? part::whole_cut(prefix.data(), batch, total, cuts.part_cost, p)
                             : part::equal_cut(total, cuts.part_cost, p));
  }
  return cuts;
}

void expect_valid(const std::vector<int64_t>& prefix, int32_t num_parts, const Cuts& cuts) {
  const int64_t total = prefix.back();
  ASSERT_EQ(cuts.begin.size(), static_cast<size_t>(num_parts) + 1);
  EXPECT_EQ(cuts.begin.front(), 0);
  EXPECT_EQ(cuts.begin.back(), total);
  for (int32_t p = 0; p < num_parts; ++p) {
    EXPECT_LE(cuts.begin[p], cuts.begin[p + 1]) << "partition " << p;
    const int64_t size = cuts.begin[p + 1] - cuts.begin[p];
    if (cuts.whole) {
      EXPECT_LE(size, cuts.part_cost + cuts.part_cost / 16) << "partition " << p;
    } else {
      EXPECT_LE(size, cuts.part_cost) << "partition " << p;
    }
  }
  if (cuts.whole) {  // every cut is a request start (or the total)
    for (int64_t c : cuts.begin) {
      EXPECT_TRUE(std::binary_search(prefix.begin(), prefix.end(), c)) << "cut " << c;
    }
  }
}

TEST(Partition, RequestAtFindsTheRequestHoldingAPosition) {
  const std::vector<int64_t> prefix = prefix_of({0, 100, 64, 1});  // costs 2, 4, 3, 3
  for (int64_t pos = 0; pos < prefix.back(); ++pos) {
    const int32_t b = part::request_at(prefix.data(), 4, pos);
    EXPECT_LE(prefix[b], pos);
    EXPECT_LT(pos, prefix[b + 1]);
  }
}

TEST(Partition, SpecRowsTakeWholeRequestsWhereTheyBalance) {
  struct Row {
    const char* name;
    int batch;
    int32_t len;
    int32_t num_parts;  // H100: 132 SMs / row tiles
    bool whole;
  };
  const Row rows[] = {
      {"h_q 16-64, batch 128, 4096", 128, 4096, 132, true},  // 1 request a partition
      {"h_q 128, batch 128, 4096", 128, 4096, 66, true},     // 2 requests a partition
      {"MTP, batch 64, 4096", 64, 4096, 66, true},
      {"long context, batch 4, 65536", 4, 65536, 66, false},
      {"latency, batch 1, 8192", 1, 8192, 132, false},
      {"3000 tiny requests", 3000, 20, 132, true},
  };
  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    const std::vector<int64_t> prefix = prefix_of(std::vector<int32_t>(row.batch, row.len));
    const Cuts cuts = schedule(prefix, row.num_parts);
    expect_valid(prefix, row.num_parts, cuts);
    EXPECT_EQ(cuts.whole, row.whole);
  }
}

TEST(Partition, RandomBatchesGetValidCuts) {
  std::mt19937_64 rng(2026);
  int whole = 0, equal = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    const int batch = std::uniform_int_distribution<int>(1, 600)(rng);
    const int max_len = std::uniform_int_distribution<int>(0, 1)(rng) == 0 ? 300 : 20000;
    std::uniform_int_distribution<int32_t> len_dist(0, max_len);
    const bool uniform = iter % 3 == 0;
    std::vector<int32_t> lens(batch);
    for (int32_t& len : lens) len = len_dist(rng);
    if (uniform) std::fill(lens.begin(), lens.end(), lens[0]);
    const int32_t num_parts = std::uniform_int_distribution<int32_t>(1, 170)(rng);
    const std::vector<int64_t> prefix = prefix_of(lens);
    const Cuts cuts = schedule(prefix, num_parts);
    SCOPED_TRACE("iteration " + std::to_string(iter));
    expect_valid(prefix, num_parts, cuts);
    (cuts.whole ? whole : equal) += 1;
    if (::testing::Test::HasFailure()) return;
  }
  // Both kinds of cut were exercised.
  EXPECT_GT(whole, 100);
  EXPECT_GT(equal, 100);
}

}  // namespace
}  // namespace mla::testing
