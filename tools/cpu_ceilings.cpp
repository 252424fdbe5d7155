// CPU ceilings. The FMA kernel keeps more independent accumulator chains than FMA latency x
// FMA ports (4 cycles x 2 ports on current x86 cores), so it measures issue throughput, not
// latency. Each ISA variant is compiled with a target attribute and chosen by cpuid at run time.
#include "cpu_ceilings.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MLA_CEILINGS_X86 1
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace mla::tools {
namespace {

constexpr int64_t kFmaIters = int64_t{1} << 26;

// Each kernel returns a value derived from every accumulator so none of the chains is dead.
#if MLA_CEILINGS_X86
__attribute__((target("avx512f"))) float fma_avx512(int64_t iters) {
  constexpr int kChains = 24;  // 32 zmm registers; > 4 cycles x 2 ports
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
  float lanes[16];
  _mm512_storeu_ps(lanes, sum);
  float total = 0.0f;
  for (float v : lanes) total += v;
  return total;
}

__attribute__((target("avx2,fma"))) float fma_avx2(int64_t iters) {
  constexpr int kChains = 12;  // 16 ymm registers
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm256_add_ps(sum, acc[i]);
  float lanes[8];
  _mm256_storeu_ps(lanes, sum);
  float total = 0.0f;
  for (float v : lanes) total += v;
  return total;
}

#endif

// Portable fallback: plain float chains for the compiler to vectorise for the baseline ISA
// (separate multiply and add where it has no FMA), counted as FMAs.
float fma_generic(int64_t iters) {
  constexpr int kChains = 32;
  float acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = static_cast<float>(i);
  const float a = 0.999999f, b = 1e-7f;
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * a + b;
  }
  float total = 0.0f;
  for (float v : acc) total += v;
  return total;
}

// Runs body(thread_index) on `threads` threads released together; returns the wall seconds
// from the release to the last thread finishing.
template <typename F>
double timed_parallel(int threads, F&& body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      body(t);
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  const auto start = std::chrono::steady_clock::now();
  go.store(true, std::memory_order_release);
  for (std::thread& th : pool) th.join();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

double measure_cpu_fma_gflops(int threads) {
  threads = std::max(threads, 1);
  float (*kernel)(int64_t) = fma_generic;
  int chains = 32, lanes = 1;
#if MLA_CEILINGS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    kernel = fma_avx512, chains = 24, lanes = 16;
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    kernel = fma_avx2, chains = 12, lanes = 8;
  }
#endif
  std::vector<float> sink(threads);
  double best = 0.0;
  for (int rep = 0; rep < 3; ++rep) {
    const double seconds = timed_parallel(threads, [&](int t) { sink[t] = kernel(kFmaIters); });
    const double flops = 2.0 * lanes * chains * static_cast<double>(kFmaIters) * threads;
    best = std::max(best, flops / seconds * 1e-9);
  }
  // Keep the results observable so the loops cannot be removed.
  volatile float keep = 0.0f;
  for (float v : sink) keep = keep + v;
  return best;
}

double measure_cpu_copy_gbps(int threads) {
  threads = std::max(threads, 1);
  // 256 MiB each way: beyond the L3 of current server parts, so DRAM is measured.
  constexpr size_t kBytes = size_t{256} << 20;
  std::unique_ptr<char[]> src(new char[kBytes]), dst(new char[kBytes]);
  const size_t chunk = (kBytes / threads) & ~size_t{4095};
  auto copy = [&](int t) {
    const size_t begin = chunk * t;
    const size_t end = t == threads - 1 ? kBytes : begin + chunk;
    std::memcpy(dst.get() + begin, src.get() + begin, end - begin);
  };
  // First touch (page faults) outside the timing, from the threads that will copy.
  timed_parallel(threads, [&](int t) {
    const size_t begin = chunk * t;
    const size_t end = t == threads - 1 ? kBytes : begin + chunk;
    std::memset(src.get() + begin, 1, end - begin);
    std::memset(dst.get() + begin, 0, end - begin);
  });
  double best = 0.0;
  for (int rep = 0; rep < 3; ++rep) {
    const double seconds = timed_parallel(threads, copy);
    best = std::max(best, 2.0 * kBytes / seconds * 1e-9);
  }
  return best;
}

}  // namespace mla::tools
