// The argument checks of src/core/validate.cpp that other validators (src/core/sparse_validate.cpp)
// share. Each returns OK or a Status naming the argument (see status.h for the message form).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "mla/mla.h"

namespace mla::detail {

// Expected extent of each dimension; -1 accepts any non-negative extent.
struct Expect {
  const char* layout;  // for messages, e.g. "[batch, s_q, h_q, 576]"
  int ndim;
  int64_t shape[kMaxDims];
};

// ndim within [0, kMaxDims].
Status check_rank(const char* fn, const char* name, const TensorView& t);
// Presence, rank, extents, non-negative strides, device, null data, contiguous last dimension,
// element alignment and an address range that exists.
Status check_tensor(const char* fn, const char* name, const TensorView& t, const Expect& e,
                    Device device);
Status check_dtype(const char* fn, const char* name, const TensorView& t,
                   std::initializer_list<DType> allowed);
Status check_same_dtype(const char* fn, const char* name, const TensorView& t, const char* ref_name,
                        DType ref);
// An fp32 LSE-like tensor of exactly e's shape with any non-negative strides.
Status check_lse_tensor(const char* fn, const char* name, const TensorView& t, const Expect& e,
                        Device device);
// Outputs share no address range with `other`.
Status check_disjoint(const char* fn, const char* name, const TensorView& t, const char* other_name,
                      const TensorView& other);
// A written view does not alias itself.
Status check_non_overlapping(const char* fn, const char* name, const TensorView& t);
// CUDA: 16-byte aligned base and outer strides.
Status check_rows_aligned_16(const char* fn, const char* name, const TensorView& t);
// kUnsupported when an extent exceeds int32.
Status check_int32(const char* fn, const char* name, int64_t value);
Status check_device_supported(const char* fn, const char* name, Device device);
// Every present tensor on the device of the first one.
Status check_same_device(const char* fn,
                         std::initializer_list<std::pair<const char*, const TensorView*>> tensors);
// batch, s_q and h_q limits, reported against `arg`.
Status check_shape(const char* fn, const char* arg, const DecodeShape& shape);

}  // namespace mla::detail
