// Instance: 4x16 query rows, 32-token KV stages, 2 stages, 8 warps (see launch.cu).
#include "cuda/sm80/launch_config.cuh"

namespace mla::cuda::sm80 {
template Status launch_config<Config<4, 32, 2, 8>>(const detail::DecodeProblem&,
                                                   const ScheduleView&, cudaStream_t, bool);
}  // namespace mla::cuda::sm80
