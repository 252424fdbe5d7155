// Measured CPU ceilings for `mla-decode bench --device cpu`: the fp32 FMA peak and the copy
// bandwidth of the machine the benchmark runs on, so results can be reported as fractions of
// what this CPU can actually do.
#pragma once

namespace mla::tools {

// fp32 FMA throughput with the widest ISA the CPU has (AVX-512, AVX2+FMA, else scalar), all
// `threads` threads at once, each running independent accumulator chains. GFLOP/s, counting 2
// per FMA lane. Best of a few repetitions.
double measure_cpu_fma_gflops(int threads);

// Bandwidth of a large copy (buffers well beyond L3) split over `threads` threads. GB/s,
// counting bytes read + bytes written. Best of a few repetitions.
double measure_cpu_copy_gbps(int threads);

}  // namespace mla::tools
