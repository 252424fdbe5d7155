// `mla-decode bench --device cpu`: times the CPU fast path (and optionally the reference) on a
// workload whose KV cache is larger than the last-level cache, next to the CPU's measured copy
// bandwidth and fp32 FMA peak.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <thread>

#include "bench.h"
#include "cpu_ceilings.h"
#include "harness.h"

namespace mla::tools {
namespace {

using Clock = std::chrono::steady_clock;

// A decode problem in host memory: pages shuffled as an engine's allocator leaves them.
struct HostInputs {
  std::vector<uint16_t> q, kv, out;
  std::vector<int32_t> block_table, seq_lens;
  std::vector<float> lse;
  int64_t num_pages = 0, max_pages = 0;

  HostInputs(const BenchWorkload& w, const std::vector<int>& lens) {
    std::mt19937 rng(42);
    seq_lens.assign(lens.begin(), lens.end());
    for (int len : lens)
      max_pages = std::max<int64_t>(max_pages, (len + w.page_size - 1) / w.page_size);
    max_pages = std::max<int64_t>(max_pages, 1);
    std::vector<int32_t> ids;
    for (int len : lens) num_pages += (len + w.page_size - 1) / w.page_size;
    ids.resize(num_pages);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    block_table.assign(lens.size() * max_pages, 0);
    int64_t next = 0;
    for (size_t b = 0; b < lens.size(); ++b) {
      for (int64_t i = 0; i < (lens[b] + w.page_size - 1) / w.page_size; ++i) {
        block_table[b * max_pages + i] = ids[next++];
      }
    }
    num_pages = std::max<int64_t>(num_pages, 1);
    const int64_t rows = static_cast<int64_t>(w.batch) * w.s_q * w.h_q;
    kv = random_kv_rows(num_pages * w.page_size, w, rng());
    q = random_halves(rows * kHeadDimQK, w.dtype, rng());
    out.assign(rows * kHeadDimV, 0x7fc1);
    lse.assign(rows, 0.0f);
  }

  DecodeParams params(const BenchWorkload& w, int batch) {
    DecodeParams p;
    const int64_t s = w.s_q, h = w.h_q;
    p.q = make_tensor(q.data(), w.dtype, {batch, s, h, kHeadDimQK});
    set_kv_cache(kv.data(), num_pages, w, &p);
    p.block_table = make_tensor(block_table.data(), DType::kInt32, {batch, max_pages});
    p.seq_lens = make_tensor(seq_lens.data(), DType::kInt32, {batch});
    p.out = make_tensor(out.data(), w.dtype, {batch, s, h, kHeadDimV});
    p.lse = make_tensor(lse.data(), DType::kFloat32, {batch, s, h});
    p.softmax_scale = 0.0721687836f;
    p.causal = w.causal;
    return p;
  }
};

// Median wall time in microseconds of `iters` calls (after `warmup`), with a progress line for
// long runs.
template <typename F>
double median_us(int warmup, int iters, F&& call) {
  for (int i = 0; i < warmup; ++i) call();
  if (iters <= 0) {
    const auto t0 = Clock::now();
    call();
    const double one = std::chrono::duration<double>(Clock::now() - t0).count();
    iters = std::clamp(static_cast<int>(2.0 / std::max(one, 1e-6)), 3, 200);
  }
  const bool tty = isatty(fileno(stderr));
  std::vector<double> times;
  const auto start = Clock::now();
  for (int i = 0; i < iters; ++i) {
    const auto t0 = Clock::now();
    call();
    times.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    if (tty && std::chrono::duration<double>(Clock::now() - start).count() > 2.0) {
      std::fprintf(stderr, "\r  timing: %d/%d", i + 1, iters);
    }
  }
  if (tty) std::fprintf(stderr, "\r%30s\r", "");
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

BenchResult bench_workload(const BenchOptions& o, const BenchWorkload& w, int threads) {
  const std::vector<int> lens = make_seq_lens(w, 7);
  HostInputs in(w, lens);
  BenchResult r;
  r.workload = w;
  r.variant = "fast";
  count_work(w, lens, &r.bytes, &r.flops);
  ExecConfig config;
  config.num_threads = threads;
  size_t bytes = 0;
  Status s = workspace_size({w.batch, w.s_q, w.h_q}, Device{}, config, &bytes);
  constexpr size_t kAlign = kWorkspaceAlignment;
  std::vector<uint8_t> raw(bytes + kAlign);
  void* ws = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(raw.data()) + kAlign - 1) /
                                     kAlign * kAlign);
  const DecodeParams p = in.params(w, w.batch);
  r.time_us = median_us(o.warmup, o.iters, [&] {
    if (s.ok()) s = decode(p, Workspace{ws, bytes}, config);
  });
  if (!s.ok()) {
    std::fprintf(stderr, "mla-decode bench: %s\n", s.message().c_str());
    std::exit(1);
  }
  return r;
}

// The reference is slow: time it on a prefix of the batch holding about 2 GFLOP of work and
// scale by the token count (its cost is linear in tokens).
BenchResult bench_reference(const BenchWorkload& w) {
  const std::vector<int> lens = make_seq_lens(w, 7);
  HostInputs in(w, lens);
  double total_tokens = 0, prefix_tokens = 0;
  for (int len : lens) total_tokens += len;
  int prefix = 0;
  const double flops_per_token = 2.0 * w.h_q * w.s_q * (kHeadDimQK + kHeadDimV);
  while (prefix < w.batch && (prefix == 0 || prefix_tokens * flops_per_token < 2e9)) {
    prefix_tokens += lens[prefix++];
  }
  ExecConfig config;
  config.reference = true;
  const DecodeParams p = in.params(w, prefix);
  const auto t0 = Clock::now();
  const Status s = decode(p, Workspace{}, config);
  const double us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  if (!s.ok()) {
    std::fprintf(stderr, "mla-decode bench: %s\n", s.message().c_str());
    std::exit(1);
  }
  BenchResult r;
  r.workload = w;
  char variant[64];
  std::snprintf(variant, sizeof variant, "reference(%d/%d)", prefix, w.batch);
  r.variant = variant;
  count_work(w, lens, &r.bytes, &r.flops);
  r.time_us = prefix_tokens > 0 ? us * total_tokens / prefix_tokens : us;
  return r;
}

}  // namespace

int run_bench_cpu(const BenchOptions& options) {
  const int threads = options.threads > 0
                          ? options.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  Ceilings ceilings;
  ceilings.device_name = "cpu (" + std::to_string(threads) + " threads)";
  ceilings.compute_label = "fp32 FMA";
  std::fprintf(stderr, "measuring ceilings...\n");
  ceilings.copy_gbps = measure_cpu_copy_gbps(threads);
  ceilings.compute_tflops = measure_cpu_fma_gflops(threads) * 1e-3;

  const int topk = options.workload.sparse_topk;
  std::vector<BenchWorkload> workloads = options.table
                                             ? (topk > 0 ? sparse_table(topk) : spec_table())
                                             : std::vector<BenchWorkload>{options.workload};
  if (!options.table && workloads[0].name.empty()) workloads[0].name = "default";
  std::vector<BenchResult> results;
  for (BenchWorkload& w : workloads) {
    w.dtype = options.workload.dtype;
    w.kv_format = options.workload.kv_format;
    std::fprintf(stderr, "timing %s...\n", w.name.c_str());
    if (w.sparse_topk > 0) {
      results.push_back(bench_sparse_cpu(options, w, threads));
      continue;
    }
    results.push_back(bench_workload(options, w, threads));
    if (options.reference) {
      results.push_back(bench_reference(w));
      std::printf("%s: fast path is %.1fx the reference\n", w.name.c_str(),
                  results.back().time_us / results[results.size() - 2].time_us);
    }
  }
  return report(options, ceilings, results);
}

#ifndef MLA_HAVE_CUDA_BENCH
int run_bench_cuda(const BenchOptions&) {
  std::fprintf(stderr, "mla-decode bench: this build has no CUDA backend; use --device cpu\n");
  return 2;
}
#endif

}  // namespace mla::tools
