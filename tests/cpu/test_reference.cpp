// The reference against an independent dense formulation: gather each request's keys into a
// dense matrix, form all logits at once, softmax, multiply. Tiny shapes, every element.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/half.h"
#include "harness.h"

namespace mla::testing {
namespace {

float half_value(uint16_t v, DType t) {
  return t == DType::kBFloat16 ? detail::bf16_to_float(v) : detail::fp16_to_float(v);
}

// Dense attention for one request; returns out [s_q*h_q][512] and lse [s_q*h_q] in double.
void dense_attention(const HostDecode& hd, int b, std::vector<double>* out,
                     std::vector<double>* lse) {
  const DecodeCase& c = hd.c;
  const int L = c.seq_lens[b];
  std::vector<double> K(static_cast<size_t>(L) * kHeadDimQK);
  for (int j = 0; j < L; ++j) {
    const int64_t page = hd.block_table[b * hd.max_pages + j / c.page_size];
    for (int d = 0; d < kHeadDimQK; ++d) {
      K[j * kHeadDimQK + d] =
          half_value(hd.kv[(page * c.page_size + j % c.page_size) * hd.kv_row + d], c.dtype);
    }
  }
  const int rows = c.s_q * c.h_q;
  out->assign(static_cast<size_t>(rows) * kHeadDimV, 0.0);
  lse->assign(rows, -std::numeric_limits<double>::infinity());
  for (int s = 0; s < c.s_q; ++s) {
    const int visible = c.causal ? L - (c.s_q - 1 - s) : L;
    for (int h = 0; h < c.h_q; ++h) {
      const int r = s * c.h_q + h;
      const int64_t qrow = (static_cast<int64_t>(b) * rows + r);
      std::vector<double> q(kHeadDimQK);
      for (int d = 0; d < kHeadDimQK; ++d) {
        q[d] = c.split_q ? (d < kHeadDimV
                                ? half_value(hd.q[qrow * hd.q_row + d], c.dtype)
                                : half_value(hd.q_pe[qrow * hd.q_pe_row + d - kHeadDimV], c.dtype))
                         : half_value(hd.q[qrow * hd.q_row + d], c.dtype);
      }
      if (visible <= 0) continue;
      std::vector<double> logits(visible);
      for (int j = 0; j < visible; ++j) {
        double acc = 0;
        for (int d = 0; d < kHeadDimQK; ++d) acc += q[d] * K[j * kHeadDimQK + d];
        logits[j] = acc * c.scale;
      }
      double sum = 0;
      for (double l : logits) sum += std::exp(l);  // tiny logits: no max subtraction needed
      (*lse)[r] = std::log(sum);
      for (int j = 0; j < visible; ++j) {
        const double p = std::exp(logits[j]) / sum;
        for (int d = 0; d < kHeadDimV; ++d) (*out)[r * kHeadDimV + d] += p * K[j * kHeadDimQK + d];
      }
    }
  }
}

class ReferenceVsDense : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(ReferenceVsDense, EveryElementMatches) {
  const HostDecode hd = make_decode(GetParam());
  const DecodeCase& c = hd.c;
  for (int b = 0; b < c.batch; ++b) {
    std::vector<double> out, lse;
    dense_attention(hd, b, &out, &lse);
    for (int r = 0; r < c.s_q * c.h_q; ++r) {
      const int s = r / c.h_q, h = r % c.h_q;
      const int64_t row = static_cast<int64_t>(b) * c.s_q * c.h_q + r;
      for (int d = 0; d < kHeadDimV; ++d) {
        const double got = half_value(hd.ref_out[row * hd.out_row + d], c.dtype);
        const double want = out[r * kHeadDimV + d];
        // One rounding to the output type is the only difference.
        ASSERT_NEAR(got, want, 1e-6 + std::fabs(want) * (c.dtype == DType::kBFloat16 ? 4e-3 : 5e-4))
            << describe(c) << " b=" << b << " s=" << s << " h=" << h << " d=" << d;
      }
      if (c.lse != LseLayout::kNone) {
        const int64_t li =
            c.lse == LseLayout::kBSH ? row : (static_cast<int64_t>(b) * c.h_q + h) * c.s_q + s;
        if (std::isinf(lse[r])) {
          EXPECT_EQ(hd.ref_lse[li], -std::numeric_limits<float>::infinity()) << describe(c);
        } else {
          EXPECT_NEAR(hd.ref_lse[li], lse[r], 1e-5 * std::max(1.0, std::fabs(lse[r])))
              << describe(c);
        }
      }
    }
  }
}

std::vector<DecodeCase> tiny_cases() {
  std::vector<DecodeCase> cases;
  int i = 0;
  for (int page : {1, 4, 16}) {
    for (int s_q : {1, 3}) {
      for (bool causal : {false, true}) {
        DecodeCase c;
        c.name = "tiny" + std::to_string(i);
        c.batch = 3;
        c.s_q = s_q;
        c.h_q = 2 + i % 3;
        c.page_size = page;
        c.causal = causal;
        c.seq_lens = {0, 1 + i % 5, 9 + i};
        c.split_q = i % 2 == 1;
        c.dtype = i % 3 == 2 ? DType::kFloat16 : DType::kBFloat16;
        c.lse = i % 2 == 0 ? LseLayout::kBSH : LseLayout::kBHS;
        c.padded_strides = i % 4 == 3;
        c.seed = 500 + i;
        cases.push_back(c);
        ++i;
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Tiny, ReferenceVsDense, ::testing::ValuesIn(tiny_cases()),
                         [](const auto& param_info) { return param_info.param.name; });

// One visible key: the output is that key's value row exactly and lse its logit.
TEST(Reference, SingleKeyIsItsValueRow) {
  DecodeCase c;
  c.batch = 1;
  c.h_q = 1;
  c.page_size = 16;
  c.seq_lens = {1};
  const HostDecode hd = make_decode(c);
  const int64_t page = hd.block_table[0];
  for (int d = 0; d < kHeadDimV; ++d) {
    EXPECT_EQ(hd.ref_out[d], hd.kv[page * c.page_size * hd.kv_row + d]) << "d=" << d;
  }
  double logit = 0;
  for (int d = 0; d < kHeadDimQK; ++d) {
    logit += static_cast<double>(detail::bf16_to_float(hd.q[d])) *
             detail::bf16_to_float(hd.kv[page * c.page_size * hd.kv_row + d]);
  }
  EXPECT_NEAR(hd.ref_lse[0], logit * c.scale, 1e-5);
}

}  // namespace
}  // namespace mla::testing
