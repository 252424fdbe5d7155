// mla::Decoder on the GPU: several steps with changing batches and seq_lens, steps queued
// faster than the GPU runs them (so the pinned staging slots must be waited for), and a CUDA
// graph of plan + decode_planned replayed with fresh metadata uploaded between replays. Every
// result is compared with the CPU reference through the shared harness.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <random>

#include "core/half.h"
#include "harness.h"
#include "mla/decoder.h"

namespace mla::testing {
namespace {

constexpr Device kGpu{DeviceType::kCUDA, 0};

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

template <typename T>
std::unique_ptr<DeviceBuffer> to_device(const std::vector<T>& host) {
  auto buf = allocate(kGpu, std::max<size_t>(host.size(), 1) * sizeof(T));
  if (!host.empty()) buf->upload(host.data(), host.size() * sizeof(T));
  return buf;
}

// Recomputes hd's reference output after its q, seq_lens or block table changed.
void rereference(HostDecode& hd) {
  std::fill(hd.ref_out.begin(), hd.ref_out.end(), kPoison16);
  std::fill(hd.ref_lse.begin(), hd.ref_lse.end(), detail::bits_to_float(kPoison32));
  ExecConfig config;
  config.reference = true;
  const DecodeParams p =
      hd.params(Device{}, hd.q.data(), hd.q_pe.data(), hd.kv.data(), hd.block_table.data(),
                hd.seq_lens.data(), hd.ref_out.data(), hd.ref_lse.data());
  ASSERT_TRUE(decode(p, Workspace{}, config).ok());
}

// q of a second layer: fresh values in the same layout (row padding stays NaN).
void redraw_q(HostDecode& hd, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  const int width = hd.c.split_q ? kHeadDimV : kHeadDimQK;
  for (size_t r = 0; r < hd.q.size() / hd.q_row; ++r) {
    for (int d = 0; d < width; ++d) {
      const float v = dist(rng);
      hd.q[r * hd.q_row + d] =
          hd.c.dtype == DType::kBFloat16 ? detail::float_to_bf16(v) : detail::float_to_fp16(v);
    }
  }
}

// One layer's device tensors, outputs poisoned.
struct DeviceLayer {
  std::unique_ptr<DeviceBuffer> q, q_pe, kv, out, lse;

  explicit DeviceLayer(const HostDecode& hd)
      : q(to_device(hd.q)),
        q_pe(to_device(hd.q_pe)),
        kv(to_device(hd.kv)),
        out(allocate(kGpu, hd.out_elems * sizeof(uint16_t))),
        lse(allocate(kGpu, std::max<size_t>(hd.lse_elems, 1) * sizeof(float))) {
    poison(hd);
  }
  void poison(const HostDecode& hd) {
    out->upload(std::vector<uint16_t>(hd.out_elems, kPoison16).data(),
                hd.out_elems * sizeof(uint16_t));
    const std::vector<float> l(std::max<size_t>(hd.lse_elems, 1), detail::bits_to_float(kPoison32));
    lse->upload(l.data(), l.size() * sizeof(float));
  }
  LayerParams params(const HostDecode& hd) {
    const DecodeParams p = hd.params(kGpu, q->data(), q_pe->data(), kv->data(), nullptr, nullptr,
                                     out->data(), lse->data());
    LayerParams l;
    l.q = p.q;
    l.q_pe = p.q_pe;
    l.kv_cache = p.kv_cache;
    l.out = p.out;
    l.lse = p.lse;
    l.softmax_scale = p.softmax_scale;
    l.causal = p.causal;
    return l;
  }
  Comparison compare(const HostDecode& hd) const {
    std::vector<uint16_t> got_out(hd.out_elems);
    std::vector<float> got_lse(std::max<size_t>(hd.lse_elems, 1));
    out->download(got_out.data(), got_out.size() * sizeof(uint16_t));
    lse->download(got_lse.data(), got_lse.size() * sizeof(float));
    return compare_decode(hd, got_out.data(), got_lse.data());
  }
};

StepMetadata step_of(const HostDecode& hd) {
  StepMetadata m;
  m.batch = hd.c.batch;
  m.seq_lens = hd.seq_lens.data();
  m.block_table = hd.block_table.data();
  m.pages_per_seq = hd.max_pages;
  return m;
}

class DecoderGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    ASSERT_CUDA(cudaSetDevice(0));
    // A blocking stream: it orders after the harness's synchronous copies on the legacy stream.
    ASSERT_CUDA(cudaStreamCreate(&stream_));
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  std::unique_ptr<Decoder> make(int64_t max_batch, int64_t s_q, int64_t h_q, int64_t max_pages) {
    DecoderConfig config;
    config.device = kGpu;
    config.max_batch = max_batch;
    config.s_q = s_q;
    config.h_q = h_q;
    config.max_pages_per_seq = max_pages;
    std::unique_ptr<Decoder> d;
    const Status s = Decoder::create(config, &d);
    EXPECT_TRUE(s.ok()) << s.message();
    return d;
  }
  cudaStream_t stream_ = nullptr;
};

// Two layers per step; batch, seq_lens and block tables change every step.
TEST_F(DecoderGpu, StepsWithChangingSeqLens) {
  const int level = test_level(0);
  auto decoder = make(/*max_batch=*/9, /*s_q=*/2, /*h_q=*/16, /*max_pages=*/40);
  ASSERT_NE(decoder, nullptr);
  const std::vector<std::vector<int32_t>> steps = {
      {1, 0, 65, 64, 300, 2, 127, 128, 500}, {33, 2}, {0, 0, 0}, {600, 1, 2, 9}, {},
      {17, 250, 1, 64, 63, 0, 2, 400, 129}};
  for (size_t n = 0; n < steps.size() + static_cast<size_t>(level) * 2; ++n) {
    DecodeCase c;
    c.name = "step" + std::to_string(n);
    c.seq_lens = steps[n % steps.size()];
    c.batch = static_cast<int>(c.seq_lens.size());
    c.s_q = 2;
    c.h_q = 16;
    c.page_size = 16;
    c.causal = n % 2 == 0;
    c.split_q = n % 3 == 1;
    c.seed = 100 + n;
    HostDecode hd0 = make_decode(c), hd1 = hd0;
    redraw_q(hd1, 1000 + n);
    rereference(hd1);
    DeviceLayer l0(hd0), l1(hd1);
    Status s = decoder->begin_step(step_of(hd0), stream_);
    ASSERT_TRUE(s.ok()) << s.message();
    s = decoder->decode(l0.params(hd0), stream_);
    ASSERT_TRUE(s.ok()) << describe(c) << ": " << s.message();
    s = decoder->decode(l1.params(hd1), stream_);
    ASSERT_TRUE(s.ok()) << describe(c) << ": " << s.message();
    s = decoder->check_data_errors(stream_);
    ASSERT_TRUE(s.ok()) << describe(c) << ": " << s.message();
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    const Comparison r0 = l0.compare(hd0), r1 = l1.compare(hd1);
    EXPECT_TRUE(r0.ok) << describe(c) << " layer 0: " << r0.failure;
    EXPECT_TRUE(r1.ok) << describe(c) << " layer 1: " << r1.failure;
  }
}

// Steps queued back to back behind slow GPU work: the host overwrites its metadata arrays right
// after each begin_step() and reaches each staging slot again while the GPU may still be two
// steps behind, so the slot's event must be waited for. Every step's result must match.
TEST_F(DecoderGpu, QueuedStepsReuseStagingSafely) {
  const int steps = 8;
  auto decoder = make(6, 1, 32, 24);
  ASSERT_NE(decoder, nullptr);
  std::vector<HostDecode> hds;
  std::vector<std::unique_ptr<DeviceLayer>> layers;
  std::mt19937 rng(5);
  for (int n = 0; n < steps; ++n) {
    DecodeCase c;
    c.batch = 1 + n % 6;
    for (int b = 0; b < c.batch; ++b) c.seq_lens.push_back(static_cast<int32_t>(rng() % 700));
    c.h_q = 32;
    c.page_size = 32;
    c.seed = 7 + n;
    hds.push_back(make_decode(c));
    layers.push_back(std::make_unique<DeviceLayer>(hds.back()));
  }
  // A 512 MiB memset (about 0.2 ms) in front of every step keeps the host ahead of the GPU.
  const size_t slow_bytes = size_t{1} << 29;
  auto slow = allocate(kGpu, slow_bytes);
  ASSERT_CUDA(cudaDeviceSynchronize());
  for (int n = 0; n < steps; ++n) {
    ASSERT_CUDA(cudaMemsetAsync(slow->data(), n, slow_bytes, stream_));
    std::vector<int32_t> lens = hds[n].seq_lens, table = hds[n].block_table;
    StepMetadata m = step_of(hds[n]);
    m.seq_lens = lens.data();
    m.block_table = table.data();
    Status s = decoder->begin_step(m, stream_);
    ASSERT_TRUE(s.ok()) << s.message();
    // begin_step() copied the arrays: clobbering them now must not change the step.
    std::fill(lens.begin(), lens.end(), -1);
    std::fill(table.begin(), table.end(), kDeadPageId);
    s = decoder->decode(layers[n]->params(hds[n]), stream_);
    ASSERT_TRUE(s.ok()) << s.message();
  }
  ASSERT_CUDA(cudaStreamSynchronize(stream_));
  for (int n = 0; n < steps; ++n) {
    const Comparison r = layers[n]->compare(hds[n]);
    EXPECT_TRUE(r.ok) << describe(hds[n].c) << ": " << r.failure;
  }
}

// plan + decode_planned of two layers captured once, replayed after each begin_step() with new
// seq_lens (shorter, empty, or rows swapped in the block table).
TEST_F(DecoderGpu, GraphReplaysSeeEachStepsMetadata) {
  DecodeCase c;
  c.name = "graph";
  c.seq_lens = {200, 64, 1, 333, 0, 129};
  c.batch = 6;
  c.h_q = 64;
  c.page_size = 16;
  c.seed = 42;
  HostDecode hd0 = make_decode(c), hd1 = hd0;
  redraw_q(hd1, 4242);
  rereference(hd1);
  auto decoder = make(c.batch, 1, c.h_q, hd0.max_pages);
  ASSERT_NE(decoder, nullptr);
  DeviceLayer l0(hd0), l1(hd1);

  ASSERT_TRUE(decoder->begin_step(step_of(hd0), stream_).ok());
  cudaGraph_t graph = nullptr;
  ASSERT_CUDA(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  const Status s0 = decoder->decode(l0.params(hd0), stream_);
  const Status s1 = decoder->decode(l1.params(hd1), stream_);
  // An upload cannot be captured: it would replay from a staging slot later steps overwrite.
  const Status in_capture = decoder->begin_step(step_of(hd0), stream_);
  ASSERT_CUDA(cudaStreamEndCapture(stream_, &graph));
  ASSERT_TRUE(s0.ok()) << s0.message();
  ASSERT_TRUE(s1.ok()) << s1.message();
  EXPECT_EQ(in_capture.code(), StatusCode::kInvalidArgument) << in_capture.message();
  cudaGraphExec_t exec = nullptr;
  ASSERT_CUDA(cudaGraphInstantiate(&exec, graph, 0));

  const std::vector<std::vector<int32_t>> replays = {{200, 64, 1, 333, 0, 129},
                                                     {17, 0, 1, 300, 0, 2},
                                                     {0, 0, 0, 0, 0, 0},
                                                     {1, 64, 0, 320, 0, 128}};
  for (size_t r = 0; r <= replays.size(); ++r) {
    HostDecode h0 = hd0, h1 = hd1;
    if (r < replays.size()) {
      h0.seq_lens = h1.seq_lens = replays[r];
    } else {
      // Swap requests 0 and 3 in the block table and seq_lens: the q rows stay, the keys move.
      for (HostDecode* h : {&h0, &h1}) {
        std::swap_ranges(h->block_table.begin(), h->block_table.begin() + h->max_pages,
                         h->block_table.begin() + 3 * h->max_pages);
        std::swap(h->seq_lens[0], h->seq_lens[3]);
      }
    }
    rereference(h0);
    rereference(h1);
    l0.poison(h0);
    l1.poison(h1);
    const Status s = decoder->begin_step(step_of(h0), stream_);
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_CUDA(cudaGraphLaunch(exec, stream_));
    ASSERT_CUDA(cudaStreamSynchronize(stream_));
    const Comparison r0 = l0.compare(h0), r1 = l1.compare(h1);
    EXPECT_TRUE(r0.ok) << "replay " << r << " layer 0: " << r0.failure;
    EXPECT_TRUE(r1.ok) << "replay " << r << " layer 1: " << r1.failure;
    const Status e = decoder->check_data_errors(stream_);
    EXPECT_TRUE(e.ok()) << "replay " << r << ": " << e.message();
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

// A seq_len beyond the block table is a data error the device reports after the step.
TEST_F(DecoderGpu, ReportsDataErrors) {
  DecodeCase c;
  c.seq_lens = {40, 70, 5};
  c.batch = 3;
  c.page_size = 16;
  HostDecode hd = make_decode(c);
  auto decoder = make(4, 1, c.h_q, hd.max_pages);
  ASSERT_NE(decoder, nullptr);
  DeviceLayer layer(hd);
  std::vector<int32_t> bad = hd.seq_lens;
  bad[1] = static_cast<int32_t>(hd.max_pages * c.page_size + 1);
  StepMetadata m = step_of(hd);
  m.seq_lens = bad.data();
  ASSERT_TRUE(decoder->begin_step(m, stream_).ok());
  const Status s = decoder->decode(layer.params(hd), stream_);
  ASSERT_TRUE(s.ok()) << s.message();
  const Status e = decoder->check_data_errors(stream_);
  EXPECT_EQ(e.code(), StatusCode::kDataError) << e.message();
}

}  // namespace
}  // namespace mla::testing
