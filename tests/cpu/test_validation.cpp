// Every host-checkable mistake returns a status naming the argument, and nothing is written:
// out and lse keep their poison after every rejected call.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

#include "harness.h"
#include "mla/decoder.h"

namespace mla::testing {
namespace {

class Validation : public ::testing::Test {
 protected:
  void SetUp() override {
    DecodeCase c;
    c.batch = 2;
    c.s_q = 2;
    c.h_q = 4;
    c.page_size = 16;
    c.seq_lens = {20, 5};
    c.causal = true;
    hd_ = make_decode(c);
    out_.assign(hd_.out_elems, kPoison16);
    lse_.assign(hd_.lse_elems, std::numeric_limits<float>::quiet_NaN());
    config_.num_threads = 2;
    size_t bytes = 0;
    ASSERT_TRUE(workspace_size({2, 2, 4}, Device{}, config_, &bytes).ok());
    ws_ = allocate(Device{}, bytes);
    ws_bytes_ = bytes;
  }

  DecodeParams valid() {
    return hd_.params(Device{}, hd_.q.data(), hd_.q_pe.data(), hd_.kv.data(),
                      hd_.block_table.data(), hd_.seq_lens.data(), out_.data(), lse_.data());
  }

  // Applies `mutate` to valid params and expects `code` with every fragment in the message.
  void expect_rejected(const std::function<void(DecodeParams&)>& mutate, StatusCode code,
                       std::initializer_list<const char*> fragments) {
    DecodeParams p = valid();
    mutate(p);
    const Status s = decode(p, Workspace{ws_->data(), ws_bytes_}, config_);
    ASSERT_FALSE(s.ok()) << "accepted; expected a message with " << *fragments.begin();
    EXPECT_EQ(s.code(), code) << s.message();
    for (const char* f : fragments) {
      EXPECT_NE(s.message().find(f), std::string::npos)
          << "message \"" << s.message() << "\" lacks \"" << f << "\"";
    }
    expect_untouched();
  }

  void expect_untouched() {
    for (size_t i = 0; i < out_.size(); ++i)
      ASSERT_EQ(out_[i], kPoison16) << "out written at " << i;
    for (size_t i = 0; i < lse_.size(); ++i)
      ASSERT_TRUE(std::isnan(lse_[i])) << "lse written at " << i;
  }

  HostDecode hd_;
  std::vector<uint16_t> out_;
  std::vector<float> lse_;
  ExecConfig config_;
  std::unique_ptr<DeviceBuffer> ws_;
  size_t ws_bytes_ = 0;
};

constexpr StatusCode kInvalid = StatusCode::kInvalidArgument;
constexpr StatusCode kUnsupported = StatusCode::kUnsupported;
constexpr StatusCode kData = StatusCode::kDataError;

TEST_F(Validation, ValidCallSucceeds) {
  ASSERT_TRUE(decode(valid(), Workspace{ws_->data(), ws_bytes_}, config_).ok());
  EXPECT_TRUE(compare_decode(hd_, out_.data(), lse_.data()).ok);
}

TEST_F(Validation, QArgument) {
  expect_rejected([](DecodeParams& p) { p.q = TensorView{}; }, kInvalid, {"'q'", "absent"});
  expect_rejected([](DecodeParams& p) { p.q.dtype = DType::kFloat32; }, kInvalid,
                  {"'q'", "expected dtype bfloat16 or float16", "float32"});
  expect_rejected([](DecodeParams& p) { p.q.ndim = 3; }, kInvalid,
                  {"'q'", "4 dimensions", "got 3"});
  expect_rejected([](DecodeParams& p) { p.q.shape[3] = 575; }, kInvalid, {"'q'", "576"});
  expect_rejected([](DecodeParams& p) { p.q.data = nullptr; }, kInvalid, {"'q'", "null"});
  expect_rejected([](DecodeParams& p) { p.q.strides[3] = 2; }, kInvalid, {"'q'", "contiguous"});
  expect_rejected([](DecodeParams& p) { p.q.strides[0] = -1; }, kInvalid,
                  {"'q'", "negative stride"});
  expect_rejected([](DecodeParams& p) { p.q.data = static_cast<char*>(p.q.data) + 1; }, kInvalid,
                  {"'q'", "aligned"});
  expect_rejected(
      [](DecodeParams& p) {
        p.q.device = Device{DeviceType::kCUDA, 0};
      },
      kInvalid, {"'kv_cache'", "cpu", "cuda:0"});
}

TEST_F(Validation, HeadAndTokenCounts) {
  expect_rejected([](DecodeParams& p) { p.q.shape[2] = 0; }, kInvalid, {"'q'", "h_q", "got 0"});
  expect_rejected([](DecodeParams& p) { p.q.shape[2] = 129; }, kUnsupported, {"'q'", "h_q", "129"});
  expect_rejected([](DecodeParams& p) { p.q.shape[1] = 0; }, kInvalid, {"'q'", "s_q", "got 0"});
  expect_rejected([](DecodeParams& p) { p.q.shape[1] = 17; }, kUnsupported, {"'q'", "s_q", "17"});
}

TEST_F(Validation, QPePair) {
  DecodeCase c = hd_.c;
  c.split_q = true;
  hd_ = make_decode(c);
  expect_rejected([](DecodeParams& p) { p.q_pe.shape[3] = 32; }, kInvalid, {"'q_pe'", "64"});
  expect_rejected([](DecodeParams& p) { p.q_pe.shape[2] = 3; }, kInvalid,
                  {"'q_pe'", "dimension 2"});
  expect_rejected([](DecodeParams& p) { p.q_pe.dtype = DType::kFloat16; }, kInvalid,
                  {"'q_pe'", "differs from q"});
  // A 576-wide q together with q_pe is a layout mistake.
  expect_rejected([](DecodeParams& p) { p.q.shape[3] = 576; }, kInvalid, {"'q'", "512"});
}

TEST_F(Validation, KvCacheArgument) {
  expect_rejected([](DecodeParams& p) { p.kv_cache.dtype = DType::kFloat16; }, kInvalid,
                  {"'kv_cache'", "differs from q"});
  expect_rejected([](DecodeParams& p) { p.kv_cache.shape[2] = 512; }, kInvalid,
                  {"'kv_cache'", "576"});
  expect_rejected([](DecodeParams& p) { p.kv_cache.shape[1] = 24; }, kUnsupported,
                  {"'kv_cache'", "power of two", "24"});
  expect_rejected([](DecodeParams& p) { p.kv_cache.shape[1] = 512; }, kUnsupported,
                  {"'kv_cache'", "512"});
  expect_rejected([](DecodeParams& p) { p.kv_cache.ndim = 4; }, kInvalid,
                  {"'kv_cache'", "3 dimensions"});
}

TEST_F(Validation, MetadataArguments) {
  expect_rejected([](DecodeParams& p) { p.block_table.dtype = DType::kInt64; }, kInvalid,
                  {"'block_table'", "int32", "int64"});
  expect_rejected([](DecodeParams& p) { p.block_table.shape[0] = 3; }, kInvalid,
                  {"'block_table'", "dimension 0"});
  expect_rejected([](DecodeParams& p) { p.seq_lens.shape[0] = 1; }, kInvalid,
                  {"'seq_lens'", "[batch]"});
  expect_rejected([](DecodeParams& p) { p.seq_lens.dtype = DType::kFloat32; }, kInvalid,
                  {"'seq_lens'", "int32"});
}

TEST_F(Validation, OutputArguments) {
  expect_rejected([](DecodeParams& p) { p.out.shape[3] = 576; }, kInvalid, {"'out'", "512"});
  expect_rejected([](DecodeParams& p) { p.out.dtype = DType::kFloat16; }, kInvalid,
                  {"'out'", "differs from q"});
  expect_rejected([](DecodeParams& p) { p.out.strides[2] = 0; }, kInvalid, {"'out'", "overlap"});
  expect_rejected([](DecodeParams& p) { p.lse.shape[2] = 5; }, kInvalid,
                  {"'lse'", "[batch, s_q, h_q]"});
  expect_rejected([](DecodeParams& p) { p.lse.dtype = DType::kBFloat16; }, kInvalid,
                  {"'lse'", "float32"});
  expect_rejected([](DecodeParams& p) { p.lse.strides[1] = 0; }, kInvalid, {"'lse'", "overlap"});
}

TEST_F(Validation, ScaleAndWorkspace) {
  expect_rejected([](DecodeParams& p) { p.softmax_scale = 0.0f; }, kInvalid, {"'softmax_scale'"});
  expect_rejected([](DecodeParams& p) { p.softmax_scale = std::nanf(""); }, kInvalid,
                  {"'softmax_scale'", "nan"});
  if (ws_bytes_ > 0) {
    const Status small = decode(valid(), Workspace{ws_->data(), ws_bytes_ - 1}, config_);
    EXPECT_EQ(small.code(), kInvalid);
    EXPECT_NE(small.message().find("'workspace'"), std::string::npos) << small.message();
    const Status null_ws = decode(valid(), Workspace{nullptr, ws_bytes_}, config_);
    EXPECT_EQ(null_ws.code(), kInvalid);
    EXPECT_NE(null_ws.message().find("null"), std::string::npos) << null_ws.message();
  }
  ExecConfig bad = config_;
  bad.num_threads = -1;
  const Status threads = decode(valid(), Workspace{ws_->data(), ws_bytes_}, bad);
  EXPECT_NE(threads.message().find("'config.num_threads'"), std::string::npos) << threads.message();
  expect_untouched();
}

TEST_F(Validation, HostileStructure) {
  expect_rejected([](DecodeParams& p) { p.q.ndim = 5; }, kInvalid, {"'q'", "ndim", "got 5"});
  expect_rejected([](DecodeParams& p) { p.lse.ndim = -1; }, kInvalid, {"'lse'", "ndim"});
  expect_rejected([](DecodeParams& p) { p.kv_cache.strides[0] = int64_t{1} << 60; }, kInvalid,
                  {"'kv_cache'", "more memory than exists"});
  expect_rejected([](DecodeParams& p) { p.q.strides[0] = std::numeric_limits<int64_t>::max(); },
                  kInvalid, {"'q'", "more memory than exists"});
}

TEST_F(Validation, OutputsMustNotOverlapOtherArguments) {
  expect_rejected([](DecodeParams& p) { p.out.data = p.q.data; }, kInvalid,
                  {"'out'", "overlaps the memory of 'q'"});
  expect_rejected([](DecodeParams& p) { p.out.data = static_cast<char*>(p.kv_cache.data) + 64; },
                  kInvalid, {"'out'", "'kv_cache'"});
  expect_rejected([](DecodeParams& p) { p.out.data = p.block_table.data; }, kInvalid,
                  {"'out'", "'block_table'"});
  expect_rejected([](DecodeParams& p) { p.lse.data = p.seq_lens.data; }, kInvalid,
                  {"'lse'", "'seq_lens'"});
  expect_rejected([](DecodeParams& p) { p.lse.data = p.out.data; }, kInvalid,
                  {"'out'", "overlaps the memory of 'lse'"});
}

TEST_F(Validation, MisalignedWorkspace) {
  if (ws_bytes_ == 0) GTEST_SKIP() << "no workspace needed";
  std::vector<unsigned char> big(ws_bytes_ + 2 * kWorkspaceAlignment);
  const uintptr_t base = (reinterpret_cast<uintptr_t>(big.data()) + kWorkspaceAlignment - 1) /
                         kWorkspaceAlignment * kWorkspaceAlignment;
  const Status s =
      decode(valid(), Workspace{reinterpret_cast<void*>(base + 64), ws_bytes_}, config_);
  EXPECT_EQ(s.code(), kInvalid);
  EXPECT_NE(s.message().find("'workspace'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("256-byte aligned"), std::string::npos) << s.message();
  expect_untouched();
}

// Every entry point puts its name first, whichever part of the library found the mistake.
TEST_F(Validation, MessagesStartWithTheEntryPoint) {
  auto expect_prefix = [](const Status& s, const std::string& fn) {
    EXPECT_FALSE(s.ok()) << fn;
    EXPECT_EQ(s.message().rfind(fn + ": ", 0), 0u) << s.message();
  };
  DecodeParams bad = valid();
  bad.kv_cache.shape[1] = 24;
  const Workspace ws{ws_->data(), ws_bytes_};
  expect_prefix(decode(bad, ws, config_), "mla::decode");
  expect_prefix(plan(bad, ws, config_), "mla::plan");
  expect_prefix(decode_planned(bad, ws, config_), "mla::decode_planned");
  size_t bytes = 0;
  expect_prefix(workspace_size({1, 0, 16}, Device{}, config_, &bytes), "mla::workspace_size");
  expect_prefix(workspace_size({1, 1, 16}, Device{DeviceType::kCUDA, 99}, config_, &bytes),
                "mla::workspace_size");
  if (cuda_device_count() == 0) {
    expect_prefix(check_data_errors(ws, Device{DeviceType::kCUDA, 0}, config_),
                  "mla::check_data_errors");
  }
  KvCacheWriteParams kw;
  expect_prefix(write_kv_cache(kw, config_), "mla::write_kv_cache");
  MergeParams mp;
  expect_prefix(merge_states(mp, config_), "mla::merge_states");
  std::unique_ptr<Decoder> decoder;
  DecoderConfig dc;
  expect_prefix(Decoder::create(dc, &decoder), "mla::Decoder::create");
  dc.max_batch = 2;
  dc.s_q = 2;
  dc.h_q = 4;
  dc.max_pages_per_seq = hd_.max_pages;
  dc.num_threads = 2;
  ASSERT_TRUE(Decoder::create(dc, &decoder).ok());
  StepMetadata step;
  step.batch = 3;
  expect_prefix(decoder->begin_step(step, nullptr), "mla::Decoder::begin_step");
  step.batch = 2;
  step.seq_lens = hd_.seq_lens.data();
  step.block_table = hd_.block_table.data();
  step.pages_per_seq = hd_.max_pages;
  ASSERT_TRUE(decoder->begin_step(step, nullptr).ok());
  LayerParams layer;
  layer.q = bad.q;
  layer.q_pe = bad.q_pe;
  layer.kv_cache = bad.kv_cache;
  layer.out = bad.out;
  layer.lse = bad.lse;
  layer.softmax_scale = bad.softmax_scale;
  // The plan inside Decoder::decode reports under the Decoder's name, not mla::plan's.
  const Status s = decoder->decode(layer, nullptr);
  expect_prefix(s, "mla::Decoder::decode");
  EXPECT_NE(s.message().find("argument 'kv_cache'"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("mla::plan"), std::string::npos) << s.message();
  expect_untouched();
}

// On the CPU the data is checked before anything is written.
TEST_F(Validation, BadDataIsRejectedBeforeWriting) {
  expect_rejected([&](DecodeParams&) { hd_.seq_lens[1] = -3; }, kData,
                  {"'seq_lens'", "seq_lens[1] = -3"});
  hd_.seq_lens[1] = 5;
  const int64_t capacity = hd_.max_pages * hd_.c.page_size;
  expect_rejected([&](DecodeParams&) { hd_.seq_lens[0] = static_cast<int32_t>(capacity + 1); },
                  kData, {"'seq_lens'", "seq_lens[0]"});
  hd_.seq_lens[0] = 20;
  expect_rejected([&](DecodeParams&) { hd_.block_table[1] = static_cast<int32_t>(hd_.num_pages); },
                  kData, {"'block_table'", "block_table[0][1]"});
}

TEST(WorkspaceSize, RejectsBadShapes) {
  size_t bytes = 0;
  EXPECT_EQ(workspace_size({-1, 1, 16}, Device{}, {}, &bytes).code(), kInvalid);
  EXPECT_EQ(workspace_size({1, 1, 0}, Device{}, {}, &bytes).code(), kInvalid);
  EXPECT_EQ(workspace_size({1, 20, 16}, Device{}, {}, &bytes).code(), kUnsupported);
  EXPECT_EQ(workspace_size({1, 1, 16}, Device{}, {}, nullptr).code(), kInvalid);
}

TEST(CudaWithoutDevice, ReportsUnsupported) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  size_t bytes = 0;
  const Status s = workspace_size({1, 1, 16}, Device{DeviceType::kCUDA, 0}, {}, &bytes);
  EXPECT_EQ(s.code(), kUnsupported) << s.message();
  EXPECT_FALSE(s.message().empty());
}

}  // namespace
}  // namespace mla::testing
