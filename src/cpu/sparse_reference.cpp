// The CPU reference of sparse decode: SparseDecodeParams' formula written out plainly, double
// accumulation, every cache format dequantised exactly as the dense reference does
// (dequantize_token). The fast path (src/cpu/fast/sparse.cpp) is tested against it.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/sparse_backends.h"
#include "cpu/elem.h"

namespace mla::cpu {

void reference_sparse_decode(const detail::SparseDecodeProblem& p) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> q(kHeadDimQK), logits, acc(kHeadDimV), kv(kHeadDimQK);
  std::vector<int64_t> keys;  // element offsets of the entries that count, in order
  // The token of entry j, dequantised exactly (in double) into kv.
  auto key = [&](size_t j) {
    dequantize_token(p.kv, keys[j], p.kv_type, p.dtype, p.kv_scale, kv.data());
  };
  for (int32_t b = 0; b < p.batch; ++b) {
    const int32_t n = p.length(b);
    for (int32_t s = 0; s < p.s_q; ++s) {
      const int32_t* idx = p.row_indices(b, s);
      keys.clear();
      for (int32_t k = 0; k < n; ++k) {
        if (idx[k] != -1) keys.push_back(p.slot_offset(idx[k]));  // duplicates count twice
      }
      for (int32_t h = 0; h < p.h_q; ++h) {
        const int64_t q_nope =
            b * p.q_nope_stride_b + s * p.q_nope_stride_s + h * p.q_nope_stride_h;
        const int64_t q_pe = b * p.q_pe_stride_b + s * p.q_pe_stride_s + h * p.q_pe_stride_h;
        for (int d = 0; d < kHeadDimV; ++d) q[d] = load_elem(p.q_nope, q_nope + d, p.dtype);
        for (int d = 0; d < kHeadDimRope; ++d) {
          q[kHeadDimV + d] = load_elem(p.q_pe, q_pe + d, p.dtype);
        }
        // The sink is one more logit whose value row is zero.
        const double sink = p.attn_sink != nullptr
                                ? static_cast<double>(p.attn_sink[h * p.attn_sink_stride])
                                : neg_inf;
        logits.assign(keys.size(), 0.0);
        double max_logit = sink;
        for (size_t j = 0; j < keys.size(); ++j) {
          key(j);
          double dot = 0.0;
          for (int d = 0; d < kHeadDimQK; ++d) dot += q[d] * kv[d];
          logits[j] = dot * static_cast<double>(p.scale);
          max_logit = std::max(max_logit, logits[j]);
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double lse = neg_inf;
        if (max_logit != neg_inf) {
          double sum = sink == neg_inf ? 0.0 : std::exp(sink - max_logit);
          for (size_t j = 0; j < keys.size(); ++j) {
            const double w = std::exp(logits[j] - max_logit);
            sum += w;
            key(j);
            for (int d = 0; d < kHeadDimV; ++d) acc[d] += w * kv[d];
          }
          for (int d = 0; d < kHeadDimV; ++d) acc[d] /= sum;
          lse = max_logit + std::log(sum);
        }
        const int64_t o = b * p.out_stride_b + s * p.out_stride_s + h * p.out_stride_h;
        for (int d = 0; d < kHeadDimV; ++d) {
          store_elem(p.out, o + d, p.dtype, static_cast<float>(acc[d]));
        }
        if (p.lse != nullptr) {
          p.lse[b * p.lse_stride_b + s * p.lse_stride_s + h * p.lse_stride_h] =
              static_cast<float>(lse);
        }
      }
    }
  }
}

}  // namespace mla::cpu
