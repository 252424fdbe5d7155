// Workload definitions, roofline counts, host input data and the report shared by the CPU and
// CUDA drivers.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>

#include "bench.h"
#include "harness.h"

namespace mla::tools {

size_t kv_token_bytes(const BenchWorkload& w) {
  switch (w.kv_format) {
    case KvFormat::kFp8E4M3:
      return kHeadDimQK;
    case KvFormat::kFp8DsMla:
      return kFp8DsMlaTokenBytes;
    case KvFormat::kSameAsQ:
      break;
  }
  return kHeadDimQK * dtype_size(w.dtype);
}

void count_work(const BenchWorkload& w, const std::vector<int>& seq_lens, double* bytes,
                double* flops) {
  const double esize = static_cast<double>(dtype_size(w.dtype));
  const double rows = static_cast<double>(w.h_q) * w.s_q;
  double tokens = 0;
  for (int len : seq_lens) tokens += len;
  // Each cached token is read once; q is read and out written once per row.
  *bytes = tokens * static_cast<double>(kv_token_bytes(w)) +
           w.batch * rows * (kHeadDimQK + kHeadDimV) * esize;
  // Per row and token: a 576-long dot product and a 512-wide multiply-add (2 FLOP each).
  *flops = 2.0 * rows * tokens * (kHeadDimQK + kHeadDimV);
}

std::vector<uint16_t> random_halves(int64_t n, DType dtype, uint32_t seed) {
  std::vector<uint16_t> v(n);
  uint32_t state = seed | 1u;
  for (auto& x : v) {
    state = state * 1664525u + 1013904223u;
    const float f = static_cast<float>(state >> 8) * (2.0f / 16777216.0f) - 1.0f;
    x = testing::to_half(f, dtype);
  }
  return v;
}

std::vector<uint16_t> random_kv_rows(int64_t tokens, const BenchWorkload& w, uint32_t seed) {
  if (w.kv_format == KvFormat::kSameAsQ) return random_halves(tokens * kHeadDimQK, w.dtype, seed);
  const int64_t width = static_cast<int64_t>(kv_token_bytes(w));
  std::vector<uint16_t> v(tokens * width / 2);
  uint8_t* bytes = reinterpret_cast<uint8_t*>(v.data());
  uint32_t state = seed | 1u;
  for (int64_t i = 0; i < tokens * width; ++i) {
    state = state * 1664525u + 1013904223u;
    const uint8_t code = static_cast<uint8_t>(state >> 24);
    bytes[i] = (code & 0x7f) == 0x7f ? code ^ 1 : code;  // never the NaN codes
  }
  if (w.kv_format == KvFormat::kFp8DsMla) {
    const std::vector<uint16_t> rope = random_halves(tokens * kHeadDimRope, DType::kBFloat16, seed);
    const float scales[4] = {1.0f / 448, 1.0f / 448, 1.0f / 448, 1.0f / 448};
    for (int64_t t = 0; t < tokens; ++t) {
      std::memcpy(bytes + t * width + 512, scales, sizeof scales);
      std::memcpy(bytes + t * width + 528, &rope[t * kHeadDimRope], 2 * kHeadDimRope);
    }
  }
  return v;
}

std::vector<int> make_seq_lens(const BenchWorkload& w, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<int> lens(w.batch, w.seq_len);
  if (w.varlen) {
    std::uniform_int_distribution<int> dist(w.seq_len / 2, w.seq_len + w.seq_len / 2);
    for (int& len : lens) len = dist(rng);
  }
  const int empty = static_cast<int>(w.empty_fraction * w.batch + 0.5);
  std::vector<int> order(w.batch);
  for (int i = 0; i < w.batch; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  for (int i = 0; i < empty; ++i) lens[order[i]] = 0;
  return lens;
}

std::vector<BenchWorkload> spec_table() {
  auto row = [](const char* name, int h_q, int s_q, int batch, int seq_len) {
    BenchWorkload w;
    w.name = name;
    w.h_q = h_q;
    w.s_q = s_q;
    w.batch = batch;
    w.seq_len = seq_len;
    return w;
  };
  std::vector<BenchWorkload> rows = {
      row("TP8", 16, 1, 128, 4096),        row("TP4", 32, 1, 128, 4096),
      row("TP2", 64, 1, 128, 4096),        row("TP1", 128, 1, 128, 4096),
      row("MTP causal", 128, 2, 64, 4096), row("long context", 128, 1, 4, 65536),
      row("latency", 16, 1, 1, 8192),      row("padding", 64, 1, 128, 4096),
  };
  rows[4].causal = true;
  rows[7].varlen = true;
  rows[7].empty_fraction = 0.25;
  return rows;
}

namespace {

std::string workload_label(const BenchWorkload& w) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "h%d s%d b%d L%d%s%s p%d%s%s", w.h_q, w.s_q, w.batch, w.seq_len,
                w.varlen ? "~" : "", w.empty_fraction > 0 ? " +empty" : "", w.page_size,
                w.kv_format == KvFormat::kSameAsQ ? "" : " ",
                w.kv_format == KvFormat::kSameAsQ ? "" : kv_format_name(w.kv_format));
  if (w.sparse_topk > 0) return std::string(buf) + " topk" + std::to_string(w.sparse_topk);
  return buf;
}

void write_json(const std::string& path, const Ceilings& ceilings,
                const std::vector<BenchResult>& results) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "mla-decode bench: cannot write %s\n", path.c_str());
    return;
  }
  std::fprintf(f, "{\n  \"device\": \"%s\",\n  \"driver\": \"%s\",\n", ceilings.device_name.c_str(),
               ceilings.driver.c_str());
  std::fprintf(
      f, "  \"copy_gbps\": %.1f,\n  \"compute_tflops\": %.3f,\n  \"compute_label\": \"%s\",\n",
      ceilings.copy_gbps, ceilings.compute_tflops, ceilings.compute_label.c_str());
  std::fprintf(f, "  \"results\": [\n");
  for (size_t i = 0; i < results.size(); ++i) {
    const BenchResult& r = results[i];
    const BenchWorkload& w = r.workload;
    std::fprintf(
        f,
        "    {\"name\": \"%s\", \"variant\": \"%s\", \"h_q\": %d, \"s_q\": %d, "
        "\"batch\": %d, \"seq_len\": %d, \"page_size\": %d, \"causal\": %s, "
        "\"varlen\": %s, \"empty_fraction\": %.3f, \"dtype\": \"%s\", \"kv_format\": \"%s\", "
        "\"time_us\": %.3f, \"gbps\": %.1f, \"tflops\": %.4f, \"sparse_topk\": %d}%s\n",
        w.name.c_str(), r.variant.c_str(), w.h_q, w.s_q, w.batch, w.seq_len, w.page_size,
        w.causal ? "true" : "false", w.varlen ? "true" : "false", w.empty_fraction,
        dtype_name(w.dtype), kv_format_name(w.kv_format), r.time_us, r.gbps(), r.tflops(),
        w.sparse_topk, i + 1 < results.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  std::fclose(f);
}

}  // namespace

int report(const BenchOptions& options, const Ceilings& ceilings,
           const std::vector<BenchResult>& results) {
  std::printf("\ndevice: %s%s%s\n", ceilings.device_name.c_str(),
              ceilings.driver.empty() ? "" : ", ", ceilings.driver.c_str());
  std::printf("ceilings measured in this run: copy %.1f GB/s, %s %.2f TFLOP/s\n",
              ceilings.copy_gbps, ceilings.compute_label.c_str(), ceilings.compute_tflops);
  std::printf("%-14s %-28s %-18s %12s %9s %7s %9s %7s\n", "workload", "shape", "variant",
              "time (us)", "GB/s", "%copy", "TFLOP/s", "%peak");
  for (const BenchResult& r : results) {
    std::printf("%-14s %-28s %-18s %12.1f %9.1f %6.1f%% %9.3f %6.1f%%\n", r.workload.name.c_str(),
                workload_label(r.workload).c_str(), r.variant.c_str(), r.time_us, r.gbps(),
                100.0 * r.gbps() / ceilings.copy_gbps, r.tflops(),
                100.0 * r.tflops() / ceilings.compute_tflops);
  }
  if (!options.json_path.empty()) write_json(options.json_path, ceilings, results);
  return 0;
}

}  // namespace mla::tools
