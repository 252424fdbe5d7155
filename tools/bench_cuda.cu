// `mla-decode bench --device cuda`: decode timed as CUDA-graph replays on random data larger
// than L2, next to the ceilings measured in the same run on the same card (device-to-device
// copy bandwidth and cuBLAS bf16 GEMM rate).
//
// Per-call mode: one graph per input set, each holding one decode call (plan + decode_planned);
// replays rotate through the sets so that every replay reads its KV cache from HBM, and each
// replay is bracketed by its own events. --layers N: one graph holds a whole model step (one
// plan, then N decode_planned calls over per-layer caches and outputs), timed with and without
// a cudaMemsetAsync zero-fill of each layer's output, the two graphs replayed alternately so
// clock drift hits both alike. --sparse-topk N: sparse_decode per call, as per-call mode
// (bench_sparse).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench.h"

namespace mla::tools {
namespace {

// The CLI reports a failure and exits; nothing here needs to unwind.
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "mla-decode bench: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

void check(const Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "mla-decode bench: %s: %s\n", what, s.message().c_str());
    std::exit(1);
  }
}

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "mla-decode bench: %s: cuBLAS status %d\n", what, static_cast<int>(s));
    std::exit(1);
  }
}

// Device memory freed at scope exit.
class DeviceMemory {
 public:
  explicit DeviceMemory(size_t bytes) : bytes_(bytes) {
    check(cudaMalloc(&ptr_, std::max<size_t>(bytes, 256)), "cudaMalloc");
  }
  ~DeviceMemory() { cudaFree(ptr_); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
};

// Uniform values in [-1, 1) from a hash of the index: random enough to defeat any data
// dependence of the hardware (zeros run measurably faster) and fast for gigabytes.
__global__ void fill_uniform_kernel(uint16_t* p, size_t n, uint64_t seed, bool bf16) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    uint64_t z = (i + seed) * 0x9e3779b97f4a7c15ull;  // splitmix64 finaliser
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float v = static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
    p[i] =
        bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(v)) : __half_as_ushort(__float2half_rn(v));
  }
}

void fill_uniform(void* p, size_t elems, DType dtype, uint64_t seed, cudaStream_t stream) {
  fill_uniform_kernel<<<1024, 256, 0, stream>>>(static_cast<uint16_t*>(p), elems, seed,
                                                dtype == DType::kBFloat16);
  check(cudaGetLastError(), "fill_uniform_kernel launch");
}

// fp8 caches: random finite e4m3 codes (never the NaN codes 0x7F / 0xFF); fp8_ds_mla tokens get
// scales 1/448 and bf16 RoPE values in [-1, 1), as the CPU benchmark's. Byte i of token i / width.
__global__ void fill_fp8_kernel(uint8_t* p, size_t bytes, int width, uint64_t seed, bool ds_mla) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < bytes;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int off = static_cast<int>(i % width);
    const size_t elem = ds_mla && off >= 528 ? i / 2 : i;  // both bytes of a bf16 from one hash
    uint64_t z = (elem + seed) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    uint8_t byte;
    if (ds_mla && off >= 528) {
      const float v = static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
      const uint16_t h = __bfloat16_as_ushort(__float2bfloat16_rn(v));
      byte = static_cast<uint8_t>(off % 2 == 0 ? h : h >> 8);
    } else if (ds_mla && off >= 512) {
      const uint32_t bits = __float_as_uint(1.0f / 448);
      byte = static_cast<uint8_t>(bits >> (8 * (off % 4)));
    } else {
      byte = static_cast<uint8_t>(z >> 56);
      if ((byte & 0x7f) == 0x7f) byte ^= 1;
    }
    p[i] = byte;
  }
}

// Random contents for a cache of `tokens` tokens in `w`'s format.
void fill_kv(void* p, size_t tokens, const BenchWorkload& w, uint64_t seed, cudaStream_t stream) {
  if (w.kv_format == KvFormat::kSameAsQ) {
    fill_uniform(p, tokens * kHeadDimQK, w.dtype, seed, stream);
    return;
  }
  const int width = static_cast<int>(kv_token_bytes(w));
  fill_fp8_kernel<<<1024, 256, 0, stream>>>(static_cast<uint8_t*>(p), tokens * width, width, seed,
                                            w.kv_format == KvFormat::kFp8DsMla);
  check(cudaGetLastError(), "fill_fp8_kernel launch");
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

// Median over `iters` of the event-timed duration of one call of `op` (after `warmup` calls).
template <typename F>
double median_event_us(cudaStream_t stream, int warmup, int iters, F&& op) {
  for (int i = 0; i < warmup; ++i) op(i);
  std::vector<cudaEvent_t> events(2 * static_cast<size_t>(iters));
  for (cudaEvent_t& e : events) check(cudaEventCreate(&e), "cudaEventCreate");
  for (int i = 0; i < iters; ++i) {
    check(cudaEventRecord(events[2 * i], stream), "cudaEventRecord");
    op(warmup + i);
    check(cudaEventRecord(events[2 * i + 1], stream), "cudaEventRecord");
  }
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  std::vector<double> us(iters);
  for (int i = 0; i < iters; ++i) {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, events[2 * i], events[2 * i + 1]), "cudaEventElapsedTime");
    us[i] = ms * 1e3;
  }
  for (cudaEvent_t e : events) cudaEventDestroy(e);
  return median(us);
}

// Iterations for about `budget_s` of timing, from a quick estimate of one call.
template <typename F>
int choose_iters(const BenchOptions& o, cudaStream_t stream, double budget_s, int lo, int hi,
                 F&& op) {
  if (o.iters > 0) return o.iters;
  const double one_us = median_event_us(stream, 1, 5, op);
  return std::clamp(static_cast<int>(budget_s * 1e6 / std::max(one_us, 1.0)), lo, hi);
}

// ---------------------------------------------------------------------------------------------
// Ceilings

double measure_copy_gbps(cudaStream_t stream) {
  const size_t bytes = size_t{1} << 30;
  DeviceMemory src(bytes), dst(bytes);
  fill_uniform(src.get(), bytes / 2, DType::kBFloat16, 1, stream);
  const double us = median_event_us(stream, 3, 20, [&](int) {
    check(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, stream),
          "cudaMemcpyAsync D2D");
  });
  return 2.0 * bytes / us * 1e-3;  // bytes read + bytes written
}

double measure_gemm_tflops(cudaStream_t stream) {
  const int n = 8192;
  const size_t elems = static_cast<size_t>(n) * n;
  DeviceMemory a(elems * 2), b(elems * 2), c(elems * 2);
  fill_uniform(a.get(), elems, DType::kBFloat16, 2, stream);
  fill_uniform(b.get(), elems, DType::kBFloat16, 3, stream);
  cublasHandle_t handle;
  check(cublasCreate(&handle), "cublasCreate");
  check(cublasSetStream(handle, stream), "cublasSetStream");
  const float alpha = 1.0f, beta = 0.0f;
  const double us = median_event_us(stream, 3, 20, [&](int) {
    check(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a.get(), CUDA_R_16BF, n,
                       b.get(), CUDA_R_16BF, n, &beta, c.get(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
  });
  cublasDestroy(handle);
  return 2.0 * n * n * static_cast<double>(n) / us * 1e-6;
}

std::string version_string(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

// ---------------------------------------------------------------------------------------------
// Inputs

// The step metadata of a workload (shared by every set and layer), pages shuffled as an
// engine's allocator leaves them.
struct Metadata {
  std::vector<int> lens;
  int64_t num_pages = 1, max_pages = 1;
  std::unique_ptr<DeviceMemory> block_table, seq_lens;

  Metadata(const BenchWorkload& w, cudaStream_t stream) : lens(make_seq_lens(w, 7)) {
    std::vector<int64_t> live(lens.size());
    int64_t total = 0;
    for (size_t b = 0; b < lens.size(); ++b) {
      live[b] = (lens[b] + w.page_size - 1) / w.page_size;
      total += live[b];
      max_pages = std::max(max_pages, live[b]);
    }
    num_pages = std::max<int64_t>(total, 1);
    std::vector<int32_t> ids(static_cast<size_t>(num_pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937(42));
    std::vector<int32_t> table(lens.size() * max_pages, 0);
    int64_t next = 0;
    for (size_t b = 0; b < lens.size(); ++b) {
      for (int64_t i = 0; i < live[b]; ++i) table[b * max_pages + i] = ids[next++];
    }
    std::vector<int32_t> lens32(lens.begin(), lens.end());
    block_table = std::make_unique<DeviceMemory>(table.size() * 4);
    seq_lens = std::make_unique<DeviceMemory>(lens32.size() * 4);
    check(cudaMemcpyAsync(block_table->get(), table.data(), table.size() * 4,
                          cudaMemcpyHostToDevice, stream),
          "block table upload");
    check(cudaMemcpyAsync(seq_lens->get(), lens32.data(), lens32.size() * 4, cudaMemcpyHostToDevice,
                          stream),
          "seq_lens upload");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");  // host vectors go away
  }
};

// One set of q / kv / out / lse for a workload.
struct InputSet {
  std::unique_ptr<DeviceMemory> q, kv, out, lse;

  static size_t q_elems(const BenchWorkload& w) {
    return static_cast<size_t>(w.batch) * w.s_q * w.h_q * kHeadDimQK;
  }
  static size_t kv_tokens(const BenchWorkload& w, const Metadata& m) {
    return static_cast<size_t>(m.num_pages) * w.page_size;
  }
  static size_t kv_bytes(const BenchWorkload& w, const Metadata& m) {
    return kv_tokens(w, m) * kv_token_bytes(w);
  }
  static size_t out_elems(const BenchWorkload& w) {
    return static_cast<size_t>(w.batch) * w.s_q * w.h_q * kHeadDimV;
  }
  static size_t bytes(const BenchWorkload& w, const Metadata& m) {
    const size_t e = dtype_size(w.dtype);
    return (q_elems(w) + out_elems(w)) * e + kv_bytes(w, m) +
           static_cast<size_t>(w.batch) * w.s_q * w.h_q * 4;
  }

  InputSet(const BenchWorkload& w, const Metadata& m, uint64_t seed, cudaStream_t stream,
           bool with_kv = true) {
    const size_t e = dtype_size(w.dtype);
    q = std::make_unique<DeviceMemory>(q_elems(w) * e);
    out = std::make_unique<DeviceMemory>(out_elems(w) * e);
    lse = std::make_unique<DeviceMemory>(static_cast<size_t>(w.batch) * w.s_q * w.h_q * 4);
    fill_uniform(q->get(), q_elems(w), w.dtype, seed * 3 + 1, stream);
    if (with_kv) {
      kv = std::make_unique<DeviceMemory>(kv_bytes(w, m));
      fill_kv(kv->get(), kv_tokens(w, m), w, seed * 3 + 2, stream);
    }
  }

  DecodeParams params(const BenchWorkload& w, const Metadata& m, const DeviceMemory& cache,
                      Device dev) const {
    const int64_t b = w.batch, s = w.s_q, h = w.h_q;
    DecodeParams p;
    p.q = make_tensor(q->get(), w.dtype, {b, s, h, kHeadDimQK}, dev);
    set_kv_cache(cache.get(), m.num_pages, w, &p, dev);
    p.block_table = make_tensor(m.block_table->get(), DType::kInt32, {b, m.max_pages}, dev);
    p.seq_lens = make_tensor(m.seq_lens->get(), DType::kInt32, {b}, dev);
    p.out = make_tensor(out->get(), w.dtype, {b, s, h, kHeadDimV}, dev);
    p.lse = make_tensor(lse->get(), DType::kFloat32, {b, s, h}, dev);
    p.softmax_scale = 0.0721687836f;  // 1 / sqrt(192)
    p.causal = w.causal;
    return p;
  }
};

// How many input sets fit in `fraction` of the free device memory (at least 1).
int sets_that_fit(size_t set_bytes, double fraction) {
  size_t free_bytes = 0, total = 0;
  check(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo");
  return std::max(1, static_cast<int>(fraction * free_bytes / std::max<size_t>(set_bytes, 1)));
}

struct Graph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~Graph() {
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    if (graph != nullptr) cudaGraphDestroy(graph);
  }
};

// Captures what `record` enqueues on `stream` into `g`.
template <typename F>
void capture(cudaStream_t stream, Graph* g, F&& record) {
  check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
  record();
  check(cudaStreamEndCapture(stream, &g->graph), "end capture");
  check(cudaGraphInstantiate(&g->exec, g->graph, 0), "cudaGraphInstantiate");
}

std::unique_ptr<DeviceMemory> make_workspace(const BenchWorkload& w, Device dev) {
  size_t bytes = 0;
  check(workspace_size({w.batch, w.s_q, w.h_q}, dev, ExecConfig{}, &bytes), "workspace_size");
  return std::make_unique<DeviceMemory>(bytes);
}

// ---------------------------------------------------------------------------------------------
// Drivers

BenchResult bench_call(const BenchOptions& o, const BenchWorkload& w, size_t l2_bytes,
                       cudaStream_t stream) {
  const Device dev = o.device;
  const Metadata m(w, stream);
  // Enough sets that each replay's inputs were evicted from L2 by the replays before it.
  const size_t set_bytes = InputSet::bytes(w, m);
  const int wanted = static_cast<int>((4 * l2_bytes + set_bytes - 1) / set_bytes);
  const int num_sets = std::clamp(std::min(wanted, sets_that_fit(set_bytes, 0.6)), 1, 64);
  std::vector<std::unique_ptr<InputSet>> sets;
  for (int i = 0; i < num_sets; ++i) sets.push_back(std::make_unique<InputSet>(w, m, i, stream));
  const auto ws = make_workspace(w, dev);
  const Workspace workspace{ws->get(), ws->bytes()};
  ExecConfig config;
  config.stream = stream;

  std::vector<Graph> graphs(num_sets);
  for (int i = 0; i < num_sets; ++i) {
    const DecodeParams p = sets[i]->params(w, m, *sets[i]->kv, dev);
    capture(stream, &graphs[i], [&] { check(decode(p, workspace, config), "decode"); });
  }
  auto replay = [&](int i) {
    check(cudaGraphLaunch(graphs[i % num_sets].exec, stream), "cudaGraphLaunch");
  };
  const int iters = choose_iters(o, stream, 0.3, 20, 2000, replay);
  BenchResult r;
  r.workload = w;
  r.variant = "graph";
  count_work(w, m.lens, &r.bytes, &r.flops);
  r.time_us = median_event_us(stream, std::max(o.warmup, 1), iters, replay);
  check(check_data_errors(workspace, dev, config), "data errors");
  std::fprintf(stderr, "  %s: %d input sets of %.1f MB rotated, %d replays\n", w.name.c_str(),
               num_sets, set_bytes / 1e6, iters);
  return r;
}

// Sparse decode (w.sparse_topk > 0), timed as bench_call times decode: each request owns
// max(seq_len, topk) tokens of a shuffled paged cache and every query token chooses topk distinct
// ones at random, as an indexer would (the CPU benchmark's inputs, bench_sparse_cpu.cpp). Input
// sets (q, cache, out, lse; one index list for all) rotate until a replay's gathered tokens
// were evicted from L2 by the replays before it.
BenchResult bench_sparse(const BenchOptions& o, const BenchWorkload& w, size_t l2_bytes,
                         cudaStream_t stream) {
  const Device dev = o.device;
  const int topk = w.sparse_topk;
  const int64_t b = w.batch, s = w.s_q, h = w.h_q;
  const int context = std::max(w.seq_len, topk);
  const int64_t pages_per_req = (context + w.page_size - 1) / w.page_size;
  const int64_t num_pages = std::max<int64_t>(1, pages_per_req * b);
  std::mt19937 rng(42);
  std::vector<int32_t> ids(static_cast<size_t>(num_pages));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<int32_t> indices(static_cast<size_t>(b * s * topk));
  std::vector<int32_t> pos(context);
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t q = 0; q < s; ++q) {
      std::iota(pos.begin(), pos.end(), 0);
      for (int k = 0; k < topk; ++k) {
        std::swap(pos[k], pos[k + rng() % (context - k)]);
        const int32_t page = ids[r * pages_per_req + pos[k] / w.page_size];
        indices[(r * s + q) * topk + k] = page * w.page_size + pos[k] % w.page_size;
      }
    }
  }
  DeviceMemory d_indices(indices.size() * 4);
  check(cudaMemcpyAsync(d_indices.get(), indices.data(), indices.size() * 4, cudaMemcpyHostToDevice,
                        stream),
        "indices upload");
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");

  const size_t e = dtype_size(w.dtype);
  const size_t rows = static_cast<size_t>(b * s * h);
  const size_t kv_elems = static_cast<size_t>(num_pages) * w.page_size * kHeadDimQK;
  const size_t set_bytes = kv_elems * e + rows * (kHeadDimQK + kHeadDimV) * e + rows * 4;
  const size_t touched = static_cast<size_t>(b * s * topk) * kHeadDimQK * e;
  const int wanted = static_cast<int>((4 * l2_bytes + touched - 1) / touched);
  const int num_sets = std::clamp(std::min(wanted, sets_that_fit(set_bytes, 0.6)), 1, 64);
  struct SparseSet {
    std::unique_ptr<DeviceMemory> q, kv, out, lse;
  };
  std::vector<SparseSet> sets(num_sets);
  for (int i = 0; i < num_sets; ++i) {
    sets[i].q = std::make_unique<DeviceMemory>(rows * kHeadDimQK * e);
    sets[i].kv = std::make_unique<DeviceMemory>(kv_elems * e);
    sets[i].out = std::make_unique<DeviceMemory>(rows * kHeadDimV * e);
    sets[i].lse = std::make_unique<DeviceMemory>(rows * 4);
    fill_uniform(sets[i].q->get(), rows * kHeadDimQK, w.dtype, 3 * i + 1, stream);
    fill_uniform(sets[i].kv->get(), kv_elems, w.dtype, 3 * i + 2, stream);
  }
  size_t ws_bytes = 0;
  check(sparse_workspace_size({b, s, h, topk}, dev, ExecConfig{}, &ws_bytes),
        "sparse_workspace_size");
  DeviceMemory ws(ws_bytes);
  const Workspace workspace{ws.get(), ws.bytes()};
  ExecConfig config;
  config.stream = stream;

  std::vector<Graph> graphs(num_sets);
  for (int i = 0; i < num_sets; ++i) {
    SparseDecodeParams p;
    p.q = make_tensor(sets[i].q->get(), w.dtype, {b, s, h, kHeadDimQK}, dev);
    p.kv_cache = make_tensor(sets[i].kv->get(), w.dtype, {num_pages, w.page_size, kHeadDimQK}, dev);
    p.indices = make_tensor(d_indices.get(), DType::kInt32, {b, s, topk}, dev);
    p.out = make_tensor(sets[i].out->get(), w.dtype, {b, s, h, kHeadDimV}, dev);
    p.lse = make_tensor(sets[i].lse->get(), DType::kFloat32, {b, s, h}, dev);
    p.softmax_scale = 0.0721687836f;
    capture(stream, &graphs[i],
            [&] { check(sparse_decode(p, workspace, config), "sparse_decode"); });
  }
  auto replay = [&](int i) {
    check(cudaGraphLaunch(graphs[i % num_sets].exec, stream), "cudaGraphLaunch");
  };
  const int iters = choose_iters(o, stream, 0.3, 20, 2000, replay);
  BenchResult r;
  r.workload = w;
  r.variant = "sparse graph";
  r.time_us = median_event_us(stream, std::max(o.warmup, 1), iters, replay);
  check(check_data_errors(workspace, dev, config), "data errors");
  // As the CPU benchmark counts: each query token reads its topk chosen tokens once (shared by
  // its heads); q read, out written.
  r.bytes = static_cast<double>(touched) + static_cast<double>(rows) * (kHeadDimQK + kHeadDimV) * e;
  r.flops = 2.0 * h * static_cast<double>(b * s * topk) * (kHeadDimQK + kHeadDimV);
  std::fprintf(stderr, "  %s: %d input sets of %.1f MB rotated, %d replays\n", w.name.c_str(),
               num_sets, set_bytes / 1e6, iters);
  return r;
}

// One model step of `layers` decode calls in one graph, with and without a zero-fill of each
// output before its call. Returns the two rows.
std::vector<BenchResult> bench_step(const BenchOptions& o, const BenchWorkload& w,
                                    cudaStream_t stream) {
  const Device dev = o.device;
  const Metadata m(w, stream);
  const int layers = o.layers;
  // Per layer: its own q / out / lse; KV caches distinct while memory allows, else rotated.
  const size_t e = dtype_size(w.dtype);
  const size_t kv_bytes = InputSet::kv_bytes(w, m);
  std::vector<std::unique_ptr<InputSet>> per_layer;
  for (int l = 0; l < layers; ++l) {
    per_layer.push_back(std::make_unique<InputSet>(w, m, 1000 + l, stream, /*with_kv=*/false));
  }
  const int num_caches = std::clamp(sets_that_fit(kv_bytes, 0.7), 1, layers);
  std::vector<std::unique_ptr<DeviceMemory>> caches;
  for (int c = 0; c < num_caches; ++c) {
    caches.push_back(std::make_unique<DeviceMemory>(kv_bytes));
    fill_kv(caches.back()->get(), InputSet::kv_tokens(w, m), w, 5000 + c, stream);
  }
  const auto ws = make_workspace(w, dev);
  const Workspace workspace{ws->get(), ws->bytes()};
  ExecConfig config;
  config.stream = stream;

  Graph plain, zero_filled;
  for (bool zero : {false, true}) {
    capture(stream, zero ? &zero_filled : &plain, [&] {
      for (int l = 0; l < layers; ++l) {
        const DecodeParams p = per_layer[l]->params(w, m, *caches[l % num_caches], dev);
        if (l == 0) check(plan(p, workspace, config), "plan");
        if (zero) {
          check(cudaMemsetAsync(per_layer[l]->out->get(), 0, InputSet::out_elems(w) * e, stream),
                "cudaMemsetAsync");
        }
        check(decode_planned(p, workspace, config), "decode_planned");
      }
    });
  }
  // Alternate the two graphs so that drift in clocks or temperature affects both alike.
  auto replay = [&](int i) {
    check(cudaGraphLaunch((i % 2 ? zero_filled : plain).exec, stream), "cudaGraphLaunch");
  };
  const int iters = 2 * (choose_iters(o, stream, 0.3, 10, 500, replay) / 2 + 1);
  const int warmup = 2 * std::max(o.warmup, 1);
  for (int i = 0; i < warmup; ++i) replay(i);
  std::vector<double> times[2];
  std::vector<cudaEvent_t> events(2 * static_cast<size_t>(iters));
  for (cudaEvent_t& ev : events) check(cudaEventCreate(&ev), "cudaEventCreate");
  for (int i = 0; i < iters; ++i) {
    check(cudaEventRecord(events[2 * i], stream), "cudaEventRecord");
    replay(i);
    check(cudaEventRecord(events[2 * i + 1], stream), "cudaEventRecord");
  }
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  for (int i = 0; i < iters; ++i) {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, events[2 * i], events[2 * i + 1]), "cudaEventElapsedTime");
    times[i % 2].push_back(ms * 1e3);
  }
  for (cudaEvent_t ev : events) cudaEventDestroy(ev);
  check(check_data_errors(workspace, dev, config), "data errors");
  std::fprintf(stderr, "  %s: %d layers, %d distinct KV caches of %.1f MB, %d replays each\n",
               w.name.c_str(), layers, num_caches, kv_bytes / 1e6, iters / 2);

  std::vector<BenchResult> rows(2);
  for (int zero = 0; zero < 2; ++zero) {
    BenchResult& r = rows[zero];
    r.workload = w;
    r.variant = "step x" + std::to_string(layers) + (zero ? " +zero-fill" : "");
    count_work(w, m.lens, &r.bytes, &r.flops);
    r.bytes *= layers;
    r.flops *= layers;
    r.time_us = median(times[zero]);
  }
  return rows;
}

}  // namespace

int run_bench_cuda(const BenchOptions& options) {
  if (cuda_device_count() <= options.device.index) {
    std::fprintf(stderr, "mla-decode bench: no CUDA device %d\n", options.device.index);
    return 2;
  }
  // Allocations and the stream below belong to the requested device.
  check(cudaSetDevice(options.device.index), "cudaSetDevice");
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, options.device.index), "cudaGetDeviceProperties");
  int driver = 0, runtime = 0;
  check(cudaDriverGetVersion(&driver), "cudaDriverGetVersion");
  check(cudaRuntimeGetVersion(&runtime), "cudaRuntimeGetVersion");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");

  Ceilings ceilings;
  ceilings.device_name = std::string(prop.name) + " (" + std::to_string(prop.multiProcessorCount) +
                         " SMs, " + std::to_string(prop.l2CacheSize >> 20) + " MB L2)";
  ceilings.driver =
      "CUDA driver " + version_string(driver) + ", runtime " + version_string(runtime);
  ceilings.compute_label = "bf16 GEMM";
  std::fprintf(stderr, "measuring ceilings...\n");
  ceilings.copy_gbps = measure_copy_gbps(stream);
  ceilings.compute_tflops = measure_gemm_tflops(stream);

  const int topk = options.workload.sparse_topk;
  std::vector<BenchWorkload> workloads = options.table
                                             ? (topk > 0 ? sparse_table(topk) : spec_table())
                                             : std::vector<BenchWorkload>{options.workload};
  if (!options.table && workloads[0].name.empty()) workloads[0].name = "default";
  std::vector<BenchResult> results;
  std::vector<std::string> notes;
  for (BenchWorkload& w : workloads) {
    w.dtype = options.workload.dtype;
    w.kv_format = options.workload.kv_format;
    std::fprintf(stderr, "timing %s...\n", w.name.c_str());
    if (w.sparse_topk > 0) {
      results.push_back(bench_sparse(options, w, static_cast<size_t>(prop.l2CacheSize), stream));
    } else if (options.layers > 0) {
      const std::vector<BenchResult> rows = bench_step(options, w, stream);
      results.insert(results.end(), rows.begin(), rows.end());
      char note[160];
      std::snprintf(note, sizeof note,
                    "%s: zero-fill before each of %d calls adds %.1f us per "
                    "step (%+.2f%%)",
                    w.name.c_str(), options.layers, rows[1].time_us - rows[0].time_us,
                    100.0 * (rows[1].time_us - rows[0].time_us) / rows[0].time_us);
      notes.push_back(note);
    } else {
      results.push_back(bench_call(options, w, static_cast<size_t>(prop.l2CacheSize), stream));
    }
  }
  const int rc = report(options, ceilings, results);
  for (const std::string& n : notes) std::printf("%s\n", n.c_str());
  cudaStreamDestroy(stream);
  return rc;
}

}  // namespace mla::tools
