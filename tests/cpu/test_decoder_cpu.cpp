// mla::Decoder on the CPU: argument errors name the argument, and several steps with changing
// batches, seq_lens and block tables (two layers each) match the reference.
#include <gtest/gtest.h>

#include "core/half.h"
#include "harness.h"
#include "mla/decoder.h"

namespace mla::testing {
namespace {

DecoderConfig cpu_config() {
  DecoderConfig c;
  c.max_batch = 6;
  c.s_q = 1;
  c.h_q = 16;
  c.max_pages_per_seq = 12;
  c.num_threads = 2;
  return c;
}

void expect_error(const Status& s, StatusCode code, const char* needle) {
  EXPECT_EQ(s.code(), code) << s.message();
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
}

TEST(DecoderCpu, CreateRejectsBadConfig) {
  std::unique_ptr<Decoder> d;
  expect_error(Decoder::create(cpu_config(), nullptr), StatusCode::kInvalidArgument, "'decoder'");
  DecoderConfig c = cpu_config();
  c.max_batch = 0;
  expect_error(Decoder::create(c, &d), StatusCode::kInvalidArgument, "'config.max_batch'");
  c = cpu_config();
  c.max_pages_per_seq = 0;
  expect_error(Decoder::create(c, &d), StatusCode::kInvalidArgument, "'config.max_pages_per_seq'");
  c.max_batch = 1 << 20;
  c.max_pages_per_seq = 1 << 12;
  expect_error(Decoder::create(c, &d), StatusCode::kInvalidArgument, "block-table entries");
  c = cpu_config();
  c.h_q = 129;
  expect_error(Decoder::create(c, &d), StatusCode::kUnsupported, "h_q");
  c = cpu_config();
  c.num_threads = -1;
  expect_error(Decoder::create(c, &d), StatusCode::kInvalidArgument, "num_threads");
  EXPECT_EQ(d, nullptr);
  if (cuda_device_count() == 0) {
    c = cpu_config();
    c.device = Device{DeviceType::kCUDA, 0};
    EXPECT_FALSE(Decoder::create(c, &d).ok());
    EXPECT_EQ(d, nullptr);
  }
}

TEST(DecoderCpu, StepArgumentErrors) {
  std::unique_ptr<Decoder> d;
  ASSERT_TRUE(Decoder::create(cpu_config(), &d).ok());
  std::vector<int32_t> lens(7, 1), table(7 * 13, 0);
  std::vector<uint16_t> q(6 * 16 * 576), kv(16 * 576), out(6 * 16 * 512);
  LayerParams layer;
  layer.q = make_tensor(q.data(), DType::kBFloat16, {6, 1, 16, 576});
  layer.kv_cache = make_tensor(kv.data(), DType::kBFloat16, {1, 16, 576});
  layer.out = make_tensor(out.data(), DType::kBFloat16, {6, 1, 16, 512});
  layer.softmax_scale = 0.1f;
  expect_error(d->decode(layer, nullptr), StatusCode::kInvalidArgument, "begin_step");

  StepMetadata m;
  m.batch = 7;
  m.seq_lens = lens.data();
  m.block_table = table.data();
  m.pages_per_seq = 12;
  expect_error(d->begin_step(m, nullptr), StatusCode::kInvalidArgument, "'step.batch'");
  m.batch = 6;
  m.pages_per_seq = 13;
  expect_error(d->begin_step(m, nullptr), StatusCode::kInvalidArgument, "'step.pages_per_seq'");
  m.pages_per_seq = 12;
  m.block_table_stride = 11;
  expect_error(d->begin_step(m, nullptr), StatusCode::kInvalidArgument,
               "'step.block_table_stride'");
  m.block_table_stride = 0;
  m.seq_lens = nullptr;
  expect_error(d->begin_step(m, nullptr), StatusCode::kInvalidArgument, "'step.seq_lens'");
  m.seq_lens = lens.data();
  ASSERT_TRUE(d->begin_step(m, nullptr).ok());

  // Layer tensors are checked by mla::decode's validation, batch against the step first.
  layer.q.shape[0] = 5;
  expect_error(d->decode(layer, nullptr), StatusCode::kInvalidArgument, "'layer.q'");
  layer.q.shape[0] = 6;
  layer.out.shape[3] = 576;
  expect_error(d->decode(layer, nullptr), StatusCode::kInvalidArgument, "'out'");
  // Bad data is rejected on the CPU before anything is written.
  lens[2] = 12 * 16 + 1;
  ASSERT_TRUE(d->begin_step(m, nullptr).ok());
  layer.out.shape[3] = 512;
  expect_error(d->decode(layer, nullptr), StatusCode::kDataError, "seq_lens[2]");
  EXPECT_TRUE(d->check_data_errors(nullptr).ok());
}

// Steps of changing shape, two layers each (the second with its own q), block tables passed
// with a row stride wider than the rows.
TEST(DecoderCpu, StepsMatchReference) {
  std::unique_ptr<Decoder> d;
  ASSERT_TRUE(Decoder::create(cpu_config(), &d).ok());
  const std::vector<std::vector<int32_t>> steps = {{1, 0, 17, 160},           {33},  {}, {0, 0},
                                                   {16, 15, 2, 100, 64, 150}, {3, 5}};
  for (size_t n = 0; n < steps.size(); ++n) {
    DecodeCase c;
    c.seq_lens = steps[n];
    c.batch = static_cast<int>(c.seq_lens.size());
    c.h_q = 16;
    c.page_size = 16;
    c.seed = 300 + n;
    c.lse = n % 2 ? LseLayout::kBHS : LseLayout::kBSH;
    const HostDecode hd = make_decode(c);
    // The second layer reads the same cache with the first layer's q rows reversed.
    HostDecode hd2 = hd;
    const size_t rows = hd.q.size() / hd.q_row;
    for (size_t r = 0; r < rows; ++r) {
      std::copy_n(&hd.q[(rows - 1 - r) * hd.q_row], hd.q_row, &hd2.q[r * hd.q_row]);
    }
    ExecConfig ref;
    ref.reference = true;
    std::fill(hd2.ref_out.begin(), hd2.ref_out.end(), kPoison16);
    std::fill(hd2.ref_lse.begin(), hd2.ref_lse.end(), detail::bits_to_float(kPoison32));
    ASSERT_TRUE(
        decode(hd2.params(Device{}, hd2.q.data(), nullptr, hd2.kv.data(), hd2.block_table.data(),
                          hd2.seq_lens.data(), hd2.ref_out.data(), hd2.ref_lse.data()),
               Workspace{}, ref)
            .ok());

    // The block table handed over with 3 spare columns per row.
    const int64_t stride = hd.max_pages + 3;
    std::vector<int32_t> wide(static_cast<size_t>(c.batch * stride), -7);
    for (int b = 0; b < c.batch; ++b) {
      std::copy_n(&hd.block_table[b * hd.max_pages], hd.max_pages, &wide[b * stride]);
    }
    StepMetadata m;
    m.batch = c.batch;
    m.seq_lens = hd.seq_lens.data();
    m.block_table = wide.data();
    m.pages_per_seq = hd.max_pages;
    m.block_table_stride = stride;
    Status s = d->begin_step(m, nullptr);
    ASSERT_TRUE(s.ok()) << s.message();

    for (const HostDecode* h : {&hd, static_cast<const HostDecode*>(&hd2)}) {
      std::vector<uint16_t> out(h->out_elems, kPoison16);
      std::vector<float> lse(std::max<size_t>(h->lse_elems, 1), detail::bits_to_float(kPoison32));
      const DecodeParams p =
          h->params(Device{}, const_cast<uint16_t*>(h->q.data()), nullptr,
                    const_cast<uint16_t*>(h->kv.data()), nullptr, nullptr, out.data(), lse.data());
      LayerParams layer;
      layer.q = p.q;
      layer.kv_cache = p.kv_cache;
      layer.out = p.out;
      layer.lse = p.lse;
      layer.softmax_scale = p.softmax_scale;
      s = d->decode(layer, nullptr);
      ASSERT_TRUE(s.ok()) << describe(c) << ": " << s.message();
      const Comparison r = compare_decode(*h, out.data(), lse.data());
      EXPECT_TRUE(r.ok) << describe(c) << (h == &hd ? " layer 0: " : " layer 1: ") << r.failure;
    }
  }
}

}  // namespace
}  // namespace mla::testing
