// A persistent pool of worker threads for the CPU fast path. run(n, fn) calls fn(0..n-1), one
// index per thread, on the calling thread (index 0) and n - 1 workers, and returns when all
// are done. Workers are created on first need and kept; concurrent run() calls are serialised.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mla::cpu::fast {

class ThreadPool {
 public:
  static ThreadPool& instance();
  ~ThreadPool();

  void run(int n, const std::function<void(int)>& fn);

  // Splits [0, count) into min(max_threads, count) equal ranges and runs fn(begin, end) on each.
  void run_ranges(int max_threads, int64_t count, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop(int index);

  std::mutex run_mutex_;  // one run() at a time
  std::mutex mutex_;
  std::condition_variable start_cv_, done_cv_;
  std::vector<std::thread> workers_;  // worker i runs index i + 1
  const std::function<void(int)>* fn_ = nullptr;
  int active_ = 0;   // indices taking part in the current run
  int pending_ = 0;  // workers of the current run not yet finished
  unsigned generation_ = 0;
  bool stop_ = false;
};

}  // namespace mla::cpu::fast
