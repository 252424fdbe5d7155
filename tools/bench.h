// `mla-decode bench`: options shared by the CPU and CUDA benchmark drivers and the report
// they print (one row per workload, the measured ceilings of the same run beside it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mla/mla.h"

namespace mla::tools {

struct BenchWorkload {
  std::string name;  // e.g. "TP8", "long context"
  int h_q = 16;
  int s_q = 1;
  int batch = 32;
  int seq_len = 4096;
  int page_size = 64;
  bool causal = false;
  double empty_fraction = 0.0;  // share of requests with seq_len 0 (CUDA-graph padding)
  bool varlen = false;          // seq_lens drawn uniformly in [seq_len / 2, 3 seq_len / 2]
  DType dtype = DType::kBFloat16;
  int sparse_topk = 0;  // > 0: sparse_decode() over this many chosen tokens of the seq_len
  KvFormat kv_format = KvFormat::kSameAsQ;
};

struct BenchOptions {
  Device device{};
  BenchWorkload workload;
  bool table = false;  // run the spec's section-6 rows instead of `workload`
  int layers = 0;      // CUDA: capture this many decode calls as one graph (one model step)
  int iters = 0;       // 0 = choose from the measured time
  int warmup = 3;
  int threads = 0;         // CPU threads, 0 = all
  bool reference = false;  // CPU: also time the reference and report the speed-up
  std::string json_path;   // write results as JSON here when non-empty
};

// One measured row.
struct BenchResult {
  BenchWorkload workload;
  std::string variant;  // "fast", "reference", "graph+zero-fill", ...
  double time_us = 0;   // median
  double bytes = 0;     // KV + q + out bytes the call must move
  double flops = 0;     // 2 * rows * tokens * (576 + 512)
  double gbps() const { return time_us > 0 ? bytes / time_us * 1e-3 : 0; }
  double tflops() const { return time_us > 0 ? flops / time_us * 1e-6 : 0; }
};

// Ceilings measured in the same run.
struct Ceilings {
  std::string device_name;
  double copy_gbps = 0;       // device-to-device (or memcpy) bandwidth, bytes read + written
  double compute_tflops = 0;  // CUDA: bf16 GEMM via cuBLAS; CPU: fp32 FMA peak
  std::string compute_label;  // "bf16 GEMM" or "fp32 FMA"
  std::string driver;         // CUDA driver / runtime versions
};

// Bytes and FLOP one decode call must move / do for `w` (the roofline's counts).
void count_work(const BenchWorkload& w, const std::vector<int>& seq_lens, double* bytes,
                double* flops);
// Bytes of one cached token of `w`'s format: 576 values of q's type, 576 e4m3 codes or 656.
size_t kv_token_bytes(const BenchWorkload& w);

// The scale of the benchmarks' fp8_e4m3 caches.
inline constexpr float kBenchKvScale = 1.0f / 448;
// Random host data from an LCG (fast enough for gigabytes): `n` bf16/fp16 values in [-1, 1).
std::vector<uint16_t> random_halves(int64_t n, DType dtype, uint32_t seed);
// `tokens` cache rows of `w`'s format as 16-bit elements (fp8: bytes, two per element): random
// values as random_halves, or random finite e4m3 codes (never the NaN codes) with fp8_ds_mla
// scales 1/448 and bf16 RoPE values in [-1, 1).
std::vector<uint16_t> random_kv_rows(int64_t tokens, const BenchWorkload& w, uint32_t seed);
// A packed [num_pages, page_size, width] view of such rows on `device`, with its kv_format and
// kv_scale set in `params` (DecodeParams or SparseDecodeParams).
template <typename Params>
void set_kv_cache(void* kv, int64_t num_pages, const BenchWorkload& w, Params* params,
                  Device device = {}) {
  if (w.kv_format == KvFormat::kSameAsQ) {
    params->kv_cache = make_tensor(kv, w.dtype, {num_pages, w.page_size, kHeadDimQK}, device);
    return;
  }
  const int64_t width = static_cast<int64_t>(kv_token_bytes(w));
  params->kv_cache = make_tensor(kv, DType::kUInt8, {num_pages, w.page_size, width}, device);
  params->kv_format = w.kv_format;
  if (w.kv_format == KvFormat::kFp8E4M3) params->kv_scale = kBenchKvScale;
}
// seq_lens for `w`, deterministic for a seed.
std::vector<int> make_seq_lens(const BenchWorkload& w, unsigned seed);
// The eight rows of the spec's section 6.
std::vector<BenchWorkload> spec_table();
// The sparse rows of issue 12 with `topk` chosen tokens (bench_sparse_cpu.cpp).
std::vector<BenchWorkload> sparse_table(int topk);
// Times sparse_decode() on the CPU for `w` (w.sparse_topk > 0) with `threads` threads.
BenchResult bench_sparse_cpu(const BenchOptions& options, const BenchWorkload& w, int threads);

// Prints the table (and JSON when requested). Returns 0.
int report(const BenchOptions& options, const Ceilings& ceilings,
           const std::vector<BenchResult>& results);

int run_bench_cpu(const BenchOptions& options);
// Defined in bench_cuda.cu; without the CUDA backend it reports that and returns 2.
int run_bench_cuda(const BenchOptions& options);

}  // namespace mla::tools
