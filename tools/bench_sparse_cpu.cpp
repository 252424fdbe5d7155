// `mla-decode bench --device cpu --sparse-topk N`: times sparse_decode() on the CPU. Each request
// owns seq_len tokens of a shuffled paged cache (larger than the last-level cache for the batch
// rows); every query token chooses topk distinct ones of them at random, as an indexer would.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>

#include "bench.h"
#include "harness.h"

namespace mla::tools {

std::vector<BenchWorkload> sparse_table(int topk) {
  auto row = [topk](const char* name, int h_q, int s_q, int batch, int seq_len) {
    BenchWorkload w;
    w.name = name;
    w.h_q = h_q;
    w.s_q = s_q;
    w.batch = batch;
    w.seq_len = seq_len;
    w.sparse_topk = topk;
    return w;
  };
  return {
      row("sparse TP8", 16, 1, 128, 4096),  row("sparse TP8 MTP", 16, 2, 128, 4096),
      row("sparse TP2", 64, 1, 128, 4096),  row("sparse TP2 MTP", 64, 2, 128, 4096),
      row("sparse TP1", 128, 1, 128, 4096), row("sparse TP1 MTP", 128, 2, 128, 4096),
      row("sparse lat h8", 8, 1, 1, 32768), row("sparse lat h16", 16, 1, 1, 32768),
  };
}

BenchResult bench_sparse_cpu(const BenchOptions& o, const BenchWorkload& w, int threads) {
  std::mt19937 rng(42);
  const int topk = w.sparse_topk;
  const int64_t pages_per_req = (std::max(w.seq_len, topk) + w.page_size - 1) / w.page_size;
  const int64_t num_pages = std::max<int64_t>(1, pages_per_req * w.batch);
  std::vector<int32_t> ids(num_pages);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const int64_t rows = int64_t{w.batch} * w.s_q * w.h_q;
  std::vector<uint16_t> kv = random_kv_rows(num_pages * w.page_size, w, rng());
  std::vector<uint16_t> q = random_halves(rows * kHeadDimQK, w.dtype, rng());
  std::vector<uint16_t> out(rows * kHeadDimV);
  std::vector<float> lse(rows);
  // topk distinct token positions of the request's context per query token (partial shuffle).
  std::vector<int32_t> indices(int64_t{w.batch} * w.s_q * topk);
  const int context = std::max(w.seq_len, topk);
  std::vector<int32_t> pos(context);
  for (int b = 0; b < w.batch; ++b) {
    for (int s = 0; s < w.s_q; ++s) {
      std::iota(pos.begin(), pos.end(), 0);
      for (int k = 0; k < topk; ++k) {
        std::swap(pos[k], pos[k + rng() % (context - k)]);
        const int32_t page = ids[b * pages_per_req + pos[k] / w.page_size];
        indices[(int64_t{b} * w.s_q + s) * topk + k] = page * w.page_size + pos[k] % w.page_size;
      }
    }
  }
  SparseDecodeParams p;
  p.q = make_tensor(q.data(), w.dtype, {w.batch, w.s_q, w.h_q, kHeadDimQK});
  set_kv_cache(kv.data(), num_pages, w, &p);
  p.indices = make_tensor(indices.data(), DType::kInt32, {w.batch, w.s_q, topk});
  p.out = make_tensor(out.data(), w.dtype, {w.batch, w.s_q, w.h_q, kHeadDimV});
  p.lse = make_tensor(lse.data(), DType::kFloat32, {w.batch, w.s_q, w.h_q});
  p.softmax_scale = 0.0721687836f;

  ExecConfig config;
  config.num_threads = threads;
  size_t bytes = 0;
  Status st = sparse_workspace_size({w.batch, w.s_q, w.h_q, topk}, Device{}, config, &bytes);
  auto ws = testing::allocate(Device{}, bytes);
  auto call = [&] {
    if (st.ok()) st = sparse_decode(p, Workspace{ws->data(), bytes}, config);
  };
  for (int i = 0; i < o.warmup; ++i) call();
  int iters = o.iters;
  std::vector<double> times;
  for (int i = 0; i < (iters > 0 ? iters : 200); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    times.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    double total = 0;
    for (double t : times) total += t;
    if (iters <= 0 && times.size() >= 3 && total > 2e6) break;
  }
  if (!st.ok()) {
    std::fprintf(stderr, "mla-decode bench: %s\n", st.message().c_str());
    std::exit(1);
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  BenchResult r;
  r.workload = w;
  r.variant = "sparse fast";
  r.time_us = times[times.size() / 2];
  // Each query token reads its topk chosen tokens once (shared by its heads); q read, out written.
  const double esize = static_cast<double>(dtype_size(w.dtype));
  const double selected = static_cast<double>(w.batch) * w.s_q * topk;
  r.bytes =
      selected * static_cast<double>(kv_token_bytes(w)) + rows * (kHeadDimQK + kHeadDimV) * esize;
  r.flops = 2.0 * w.h_q * selected * (kHeadDimQK + kHeadDimV);
  return r;
}

}  // namespace mla::tools
