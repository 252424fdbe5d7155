// Tests of the tests: the comparison that every backend's tests rely on must fail when a
// backend leaves an element unwritten, writes outside the view, gets an empty row's
// convention wrong or drifts beyond tolerance. Each defect is planted in a correct result.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/half.h"
#include "harness.h"

namespace mla::testing {
namespace {

HostDecode padded_case() {
  DecodeCase c;
  c.batch = 3;
  c.s_q = 2;
  c.h_q = 3;
  c.causal = true;
  c.page_size = 16;
  c.seq_lens = {40, 0, 17};
  c.padded_strides = true;
  return make_decode(c);
}

TEST(HarnessCatches, CorrectResultPasses) {
  const HostDecode hd = padded_case();
  const Comparison r = compare_decode(hd, hd.ref_out.data(), hd.ref_lse.data());
  EXPECT_TRUE(r.ok) << r.failure;
  EXPECT_EQ(r.checked, 3 * 2 * 3 * (512 + 1));
}

TEST(HarnessCatches, OneUnwrittenOutputElement) {
  const HostDecode hd = padded_case();
  // Every position a backend could skip: first, middle, last element, and an empty row.
  const int64_t row_of_empty_request = 1 * 2 * 3;  // b = 1, s = 0, h = 0
  for (int64_t i : {int64_t{0}, int64_t{777}, (3 * 2 * 3 - 1) * hd.out_row + 511,
                    row_of_empty_request * hd.out_row + 5}) {
    std::vector<uint16_t> out = hd.ref_out;
    out[i] = kPoison16;
    EXPECT_FALSE(compare_decode(hd, out.data(), hd.ref_lse.data()).ok) << "element " << i;
  }
}

TEST(HarnessCatches, OneUnwrittenLse) {
  const HostDecode hd = padded_case();
  for (size_t i : {size_t{0}, size_t{7}, hd.lse_elems - 1}) {
    std::vector<float> lse = hd.ref_lse;
    lse[i] = detail::bits_to_float(kPoison32);
    EXPECT_FALSE(compare_decode(hd, hd.ref_out.data(), lse.data()).ok) << "lse " << i;
  }
}

TEST(HarnessCatches, WriteIntoRowPadding) {
  const HostDecode hd = padded_case();
  std::vector<uint16_t> out = hd.ref_out;
  out[kHeadDimV] = 0;  // first padding element after row 0
  const Comparison r = compare_decode(hd, out.data(), hd.ref_lse.data());
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.failure.find("padding"), std::string::npos) << r.failure;
}

TEST(HarnessCatches, WrongEmptyRowConventions) {
  const HostDecode hd = padded_case();
  const int64_t empty_row = 1 * 2 * 3;  // request 1 has seq_len 0
  {
    std::vector<float> lse = hd.ref_lse;  // FlashMLA's +inf
    lse[empty_row] = std::numeric_limits<float>::infinity();
    EXPECT_FALSE(compare_decode(hd, hd.ref_out.data(), lse.data()).ok);
  }
  {
    std::vector<float> lse = hd.ref_lse;  // a finite "very negative" value instead of -inf
    lse[empty_row] = -1e30f;
    EXPECT_FALSE(compare_decode(hd, hd.ref_out.data(), lse.data()).ok);
  }
  {
    std::vector<uint16_t> out = hd.ref_out;  // NaN rows, as vLLM's Triton kernel writes
    for (int d = 0; d < kHeadDimV; ++d) out[empty_row * hd.out_row + d] = 0x7fc0;
    EXPECT_FALSE(compare_decode(hd, out.data(), hd.ref_lse.data()).ok);
  }
}

TEST(HarnessCatches, DriftBeyondTolerance) {
  const HostDecode hd = padded_case();
  std::vector<uint16_t> out = hd.ref_out;
  const float v = detail::bf16_to_float(out[3]);
  out[3] = detail::float_to_bf16(v + 0.05f + 0.05f * std::fabs(v));
  EXPECT_FALSE(compare_decode(hd, out.data(), hd.ref_lse.data()).ok);
  std::vector<float> lse = hd.ref_lse;
  lse[0] += 0.01f;
  EXPECT_FALSE(compare_decode(hd, hd.ref_out.data(), lse.data()).ok);
}

// The generated problem itself is hostile: dead pages and tails are NaN, dead block-table
// entries are huge ids, so a backend that reads them produces NaN or crashes under ASan.
TEST(HarnessCatches, DeadMemoryIsPoisoned) {
  const HostDecode hd = padded_case();
  const DecodeCase& c = hd.c;
  // Request 2 has 17 tokens in 2 pages of 16: rows 1..15 of its second page are a tail.
  const int64_t page = hd.block_table[2 * hd.max_pages + 1];
  EXPECT_EQ(hd.kv[(page * c.page_size + 1) * hd.kv_row], kPoison16);
  EXPECT_EQ(hd.block_table[2 * hd.max_pages + 2], kDeadPageId);
  EXPECT_EQ(hd.block_table[1 * hd.max_pages + 0], kDeadPageId);  // empty request: all dead
}

}  // namespace
}  // namespace mla::testing
