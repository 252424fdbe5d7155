// mla-decode: the command-line checker and benchmark.
//   mla-decode check [--device auto|cpu|cuda] [--level 0|1|2]
//   mla-decode bench [--device auto|cpu|cuda] [--h-q 16 --s-q 1 --batch 32 --seq-len 4096 ...]
//                    [--sparse-topk 2048 [--table]]   (sparse decode)
//   mla-decode kernels [--cuda-device N]
#include <CLI/CLI.hpp>
#include <cstdio>
#include <map>
#include <string>

#include "bench.h"
#include "check.h"
#include "core/backends.h"

namespace {

// "auto" picks the GPU when one is usable, else the CPU.
mla::Device resolve_device(const std::string& name) {
  if (name == "cpu") return mla::Device{};
  if (name == "cuda" || mla::cuda_device_count() > 0) return mla::Device{mla::DeviceType::kCUDA, 0};
  return mla::Device{};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mla-decode: MLA decode attention over a paged latent KV cache"};
  app.require_subcommand(1);
  std::string device = "auto";
  const std::map<std::string, std::string> devices{
      {"auto", "auto"}, {"cpu", "cpu"}, {"cuda", "cuda"}};

  mla::tools::CheckOptions check;
  CLI::App* check_cmd = app.add_subcommand("check", "Run the correctness and coverage suite");
  check_cmd->add_option("--device", device, "auto, cpu or cuda")
      ->transform(CLI::CheckedTransformer(devices));
  check_cmd->add_option("--level", check.level, "Sweep size: 0 quick, 1 default, 2 exhaustive")
      ->capture_default_str();
  check_cmd->add_option("--threads", check.threads, "CPU threads (0 = all)")->capture_default_str();
  check_cmd->add_option("--filter", check.filter, "Only cases whose name contains this");

  mla::tools::BenchOptions bench;
  mla::tools::BenchWorkload& w = bench.workload;
  std::string dtype = "bf16";
  CLI::App* bench_cmd = app.add_subcommand("bench", "Time decode against the measured ceilings");
  bench_cmd->add_option("--device", device, "auto, cpu or cuda")
      ->transform(CLI::CheckedTransformer(devices));
  bench_cmd->add_option("--h-q", w.h_q, "Query heads")
      ->capture_default_str()
      ->check(CLI::Range(1, 128));
  bench_cmd->add_option("--s-q", w.s_q, "Query tokens per request")
      ->capture_default_str()
      ->check(CLI::Range(1, 16));
  bench_cmd->add_option("--batch", w.batch, "Requests")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  bench_cmd->add_option("--seq-len", w.seq_len, "Cached tokens per request")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  bench_cmd->add_option("--page-size", w.page_size, "Tokens per KV page (power of two, 1..256)")
      ->capture_default_str()
      ->check(CLI::IsMember({1, 2, 4, 8, 16, 32, 64, 128, 256}));
  bench_cmd->add_option("--dtype", dtype, "bf16 or fp16")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp16"}));
  std::string kv_format = "same";
  bench_cmd
      ->add_option("--kv-format", kv_format,
                   "KV cache: same (the dtype of q), fp8_e4m3 or fp8_ds_mla")
      ->capture_default_str()
      ->check(CLI::IsMember({"same", "fp8_e4m3", "fp8_ds_mla"}));
  bench_cmd->add_flag("--causal", w.causal, "Causal rule among the s_q query tokens");
  bench_cmd->add_flag("--varlen", w.varlen, "Draw seq_lens uniformly in [seq_len/2, 3 seq_len/2]");
  bench_cmd->add_option("--empty-fraction", w.empty_fraction, "Share of requests with seq_len 0")
      ->check(CLI::Range(0.0, 1.0));
  bench_cmd
      ->add_option("--sparse-topk", w.sparse_topk,
                   "Time sparse_decode over N chosen tokens of each request's seq_len; with "
                   "--table, the sparse rows of issue 12 with topk N (CUDA: 16-bit caches, "
                   "per call)")
      ->check(CLI::Range(1, 4096));
  bench_cmd->add_flag("--table", bench.table, "Run the eight rows of the spec's section 6");
  bench_cmd->add_option("--layers", bench.layers, "CUDA: time N decode calls captured as one graph")
      ->check(CLI::NonNegativeNumber);
  bench_cmd->add_option("--iters", bench.iters, "Timed iterations (0 = automatic)")
      ->check(CLI::NonNegativeNumber);
  bench_cmd->add_option("--warmup", bench.warmup, "Warm-up iterations")->capture_default_str();
  bench_cmd->add_option("--threads", bench.threads, "CPU threads (0 = all)")->capture_default_str();
  bench_cmd->add_flag("--reference", bench.reference,
                      "CPU: also time the reference, report the speed-up");
  bench_cmd->add_option("--json", bench.json_path, "Also write the results as JSON to this file");

  int kernels_device = 0;
  CLI::App* kernels_cmd = app.add_subcommand(
      "kernels",
      "List the CUDA decode kernel configurations a device runs (MLA_CUDA_KERNEL names)");
  kernels_cmd->add_option("--cuda-device", kernels_device, "CUDA device ordinal")
      ->capture_default_str();

  CLI11_PARSE(app, argc, argv);

  if (kernels_cmd->parsed()) {
    for (const std::string& name : mla::cuda::kernel_names(kernels_device)) {
      std::printf("%s\n", name.c_str());
    }
    return 0;
  }

  if (check_cmd->parsed()) {
    check.device = resolve_device(device);
    return mla::tools::run_check(check);
  }
  w.dtype = dtype == "fp16" ? mla::DType::kFloat16 : mla::DType::kBFloat16;
  w.kv_format = kv_format == "fp8_e4m3"     ? mla::KvFormat::kFp8E4M3
                : kv_format == "fp8_ds_mla" ? mla::KvFormat::kFp8DsMla
                                            : mla::KvFormat::kSameAsQ;
  bench.device = resolve_device(device);
  if (bench.device.type == mla::DeviceType::kCUDA) {
    if (w.sparse_topk > 0 && (w.kv_format != mla::KvFormat::kSameAsQ || bench.layers > 0)) {
      std::fprintf(stderr,
                   "mla-decode bench: sparse decode on CUDA times bf16/fp16 caches per call "
                   "(no --kv-format, no --layers)\n");
      return 2;
    }
    return mla::tools::run_bench_cuda(bench);
  }
  return mla::tools::run_bench_cpu(bench);
}
