// Workspaces as engines use them: two streams decoding different problems at the same time, each
// with its own workspace, and one workspace sized for the largest batch reused by calls of every
// smaller batch. Every result is compared element by element with the CPU reference, outputs
// poisoned before each call.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "harness.h"

namespace mla::testing {
namespace {

constexpr Device kGpu{DeviceType::kCUDA, 0};

class StreamsGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

void check_cuda(cudaError_t e, const char* what) {
  ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e);
}

// A stream that does not synchronise with the legacy default stream, so two of them can run
// concurrently.
class Stream {
 public:
  Stream() { cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// Sequence lengths for `batch` requests: empty, short and long ones mixed.
std::vector<int32_t> mixed_lens(int batch, int max_len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> kind(0, 4), any(1, max_len);
  std::vector<int32_t> lens(batch);
  for (int b = 0; b < batch; ++b) {
    const int k = kind(rng);
    lens[b] = k == 0 ? 0 : k == 1 ? 1 : k == 2 ? max_len : any(rng);
  }
  return lens;
}

// One generated problem and its device buffers (outputs re-poisoned by poison()).
struct Problem {
  HostDecode hd;
  std::unique_ptr<DeviceBuffer> q, q_pe, kv, block_table, seq_lens, out, lse;
  DecodeParams params;

  explicit Problem(const DecodeCase& c) : hd(make_decode(c)) {
    auto up = [](const auto& v) {
      const size_t n = v.size() * sizeof(v[0]);
      auto buf = allocate(kGpu, n);
      if (n > 0) buf->upload(v.data(), n);
      return buf;
    };
    q = up(hd.q);
    q_pe = up(hd.q_pe);
    kv = up(hd.kv);
    block_table = up(hd.block_table);
    seq_lens = up(hd.seq_lens);
    out = allocate(kGpu, hd.out_elems * sizeof(uint16_t));
    lse = allocate(kGpu, std::max<size_t>(hd.lse_elems, 1) * sizeof(float));
    poison();
    params = hd.params(kGpu, q->data(), q_pe->data(), kv->data(), block_table->data(),
                       seq_lens->data(), out->data(), lse->data());
  }

  // Synchronous uploads: done before any decode of the round is enqueued.
  void poison() {
    const std::vector<uint16_t> o(hd.out_elems, kPoison16);
    const std::vector<float> l(std::max<size_t>(hd.lse_elems, 1), std::nanf(""));
    out->upload(o.data(), o.size() * sizeof(uint16_t));
    lse->upload(l.data(), l.size() * sizeof(float));
  }

  DecodeShape shape() const { return DecodeShape{hd.c.batch, hd.c.s_q, hd.c.h_q}; }

  // Downloads out and lse (after the caller synchronised) and compares with the reference.
  Comparison compare() const {
    std::vector<uint16_t> got_out(hd.out_elems);
    std::vector<float> got_lse(std::max<size_t>(hd.lse_elems, 1));
    out->download(got_out.data(), got_out.size() * sizeof(uint16_t));
    lse->download(got_lse.data(), got_lse.size() * sizeof(float));
    return compare_decode(hd, got_out.data(), got_lse.data());
  }
};

// A NaN-filled workspace of `bytes` (kWorkspaceAlignment-aligned, as allocate() guarantees).
std::unique_ptr<DeviceBuffer> poisoned_workspace(size_t bytes) {
  auto ws = allocate(kGpu, bytes);
  const std::vector<uint8_t> fill(bytes, kPoisonByte);
  if (bytes > 0) ws->upload(fill.data(), bytes);
  return ws;
}

// Two problems of different shapes, each with its own workspace, decoded on two streams with no
// synchronisation between them. Several rounds, alternating which stream is fed first; round 1
// also runs plan() then two decode_planned() layers on each.
TEST_F(StreamsGpu, ConcurrentStreamsWithSeparateWorkspaces) {
  DecodeCase a = make_case("stream_a", 24, 1, 16, 64, mixed_lens(24, 4096, 1), false, 11);
  DecodeCase b = make_case("stream_b", 7, 2, 128, 16, mixed_lens(7, 3000, 2), true, 12);
  b.lse = LseLayout::kBHS;
  b.split_q = true;
  Problem pa(a), pb(b);
  size_t bytes_a = 0, bytes_b = 0;
  ASSERT_TRUE(workspace_size(pa.shape(), kGpu, ExecConfig{}, &bytes_a).ok());
  ASSERT_TRUE(workspace_size(pb.shape(), kGpu, ExecConfig{}, &bytes_b).ok());
  auto ws_a = poisoned_workspace(bytes_a);
  auto ws_b = poisoned_workspace(bytes_b);
  Stream sa, sb;
  ExecConfig ca, cb;
  ca.stream = sa.get();
  cb.stream = sb.get();
  const Workspace wa{ws_a->data(), bytes_a}, wb{ws_b->data(), bytes_b};

  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    pa.poison();
    pb.poison();
    synchronize(kGpu);
    auto enqueue = [&](Problem& p, Workspace w, const ExecConfig& c) {
      if (round == 1) {
        ASSERT_TRUE(plan(p.params, w, c).ok());
        for (int layer = 0; layer < 2; ++layer) {
          const Status s = decode_planned(p.params, w, c);
          ASSERT_TRUE(s.ok()) << s.message();
        }
      } else {
        const Status s = decode(p.params, w, c);
        ASSERT_TRUE(s.ok()) << s.message();
      }
    };
    if (round % 2 == 0) {
      enqueue(pa, wa, ca);
      enqueue(pb, wb, cb);
    } else {
      enqueue(pb, wb, cb);
      enqueue(pa, wa, ca);
    }
    check_cuda(cudaStreamSynchronize(sa.get()), "cudaStreamSynchronize a");
    check_cuda(cudaStreamSynchronize(sb.get()), "cudaStreamSynchronize b");
    const Comparison cmp_a = pa.compare(), cmp_b = pb.compare();
    EXPECT_TRUE(cmp_a.ok) << describe(a) << ": " << cmp_a.failure;
    EXPECT_TRUE(cmp_b.ok) << describe(b) << ": " << cmp_b.failure;
    EXPECT_TRUE(check_data_errors(wa, kGpu, ca).ok());
    EXPECT_TRUE(check_data_errors(wb, kGpu, cb).ok());
  }
}

// An engine sizes one workspace for its largest batch and reuses it for every step: calls of
// smaller and larger batches in turn must each be right, whatever the previous (larger) call
// left in the workspace. Both kernel families: few rows (h_q 16) and many (s_q 2 x h_q 128).
TEST_F(StreamsGpu, OneWorkspaceReusedAcrossBatchSizes) {
  struct Config {
    int s_q, h_q, page_size;
    bool causal;
  };
  const int kMaxBatch = 64;
  const int batches[] = {kMaxBatch, 1, 13, 2, kMaxBatch, 7, 33};
  for (const Config& cfg : {Config{1, 16, 64, false}, Config{2, 128, 16, true}}) {
    SCOPED_TRACE("s_q " + std::to_string(cfg.s_q) + ", h_q " + std::to_string(cfg.h_q));
    size_t bytes = 0;
    ASSERT_TRUE(
        workspace_size(DecodeShape{kMaxBatch, cfg.s_q, cfg.h_q}, kGpu, ExecConfig{}, &bytes).ok());
    auto ws = poisoned_workspace(bytes);  // filled once: later calls see what earlier ones left
    Stream stream;
    ExecConfig config;
    config.stream = stream.get();
    uint64_t seed = 100;
    for (int batch : batches) {
      const DecodeCase c =
          make_case("reuse_b" + std::to_string(batch), batch, cfg.s_q, cfg.h_q, cfg.page_size,
                    mixed_lens(batch, 2048, seed), cfg.causal, seed + 1);
      seed += 2;
      Problem p(c);
      synchronize(kGpu);  // pageable uploads may still be in flight for a non-blocking stream
      size_t needed = 0;
      ASSERT_TRUE(workspace_size(p.shape(), kGpu, ExecConfig{}, &needed).ok());
      ASSERT_LE(needed, bytes) << "a smaller batch needs more workspace than the largest";
      const Workspace w{ws->data(), bytes};
      Status s;
      if (batch % 2 == 0) {
        s = plan(p.params, w, config);
        if (s.ok()) s = decode_planned(p.params, w, config);
      } else {
        s = decode(p.params, w, config);
      }
      ASSERT_TRUE(s.ok()) << describe(c) << ": " << s.message();
      check_cuda(cudaStreamSynchronize(stream.get()), "cudaStreamSynchronize");
      const Comparison cmp = p.compare();
      EXPECT_TRUE(cmp.ok) << describe(c) << ": " << cmp.failure;
      EXPECT_TRUE(check_data_errors(w, kGpu, config).ok());
    }
  }
}

}  // namespace
}  // namespace mla::testing
