// Error handling for the CUDA backend: every runtime call is checked and turned into a Status
// that names the call, instead of an abort.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "mla/mla.h"

namespace mla::cuda {

inline Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status();
  return Status(StatusCode::kCudaError, std::string(what) + ": " + cudaGetErrorName(err) + " (" +
                                            cudaGetErrorString(err) + ")");
}

}  // namespace mla::cuda

// Returns a kCudaError Status from the enclosing function when `expr` fails.
#define MLA_CUDA_RETURN_IF_ERROR(expr)                                        \
  do {                                                                        \
    ::mla::Status mla_cuda_status_ = ::mla::cuda::cuda_status((expr), #expr); \
    if (!mla_cuda_status_.ok()) return mla_cuda_status_;                      \
  } while (0)
