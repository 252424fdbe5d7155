// How the CPU fast paths (decode.cpp, sparse.cpp) split their work units over threads: units are
// laid end to end by cost, the total is cut into one equal segment per thread, and a unit that a
// segment boundary crosses is cut there too, at a multiple of `granule` keys.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace mla::cpu::fast {

// The pieces of a unit of `len` keys and cost `cost` that starts at cost position `begin`:
// (thread, first key) of each, in key order. A piece that would be empty goes to the later
// thread; a last piece starting at `len` is dropped.
inline void cut_unit(double begin, double cost, int64_t len, double segment, int num_threads,
                     int64_t granule, std::vector<std::pair<int, int64_t>>* cuts) {
  const double end = begin + cost;
  // Thread owning the unit's start, then one more piece per segment boundary inside it.
  int thread = std::min(num_threads - 1, static_cast<int>(begin / segment));
  cuts->assign(1, {thread, 0});
  while (thread + 1 < num_threads && (thread + 1) * segment < end) {
    ++thread;
    const double frac = ((thread * segment) - begin) / cost;
    const int64_t key =
        std::min<int64_t>(len, static_cast<int64_t>(std::llround(frac * len / granule)) * granule);
    if (key > cuts->back().second) {
      cuts->push_back({thread, key});
    } else {
      cuts->back().first = thread;  // empty piece: the later thread takes the range
    }
  }
  if (cuts->size() > 1 && cuts->back().second >= len) cuts->pop_back();
}

}  // namespace mla::cpu::fast
