// Instance: 1x16 query rows, 32-token KV stages, 2 stages, 4 warps (see launch.cu).
#include "cuda/sm80/launch_config.cuh"

namespace mla::cuda::sm80 {
template Status launch_config<Config<1, 32, 2, 4>>(const detail::DecodeProblem&,
                                                   const ScheduleView&, cudaStream_t, bool);
}  // namespace mla::cuda::sm80
