// The CPU reference: the specification's loops written out plainly, double accumulation.
// Every other backend is tested against it, so it favours obviousness over speed.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/backends.h"
#include "cpu/elem.h"

namespace mla::cpu {

using detail::DecodeProblem;

void reference_decode(const DecodeProblem& p) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  std::vector<double> q(kHeadDimQK), logits, acc(kHeadDimV), kv(kHeadDimQK);
  for (int32_t b = 0; b < p.batch; ++b) {
    const int64_t seq_len = p.seq_lens[b * p.seq_lens_stride];
    const int32_t* pages = p.block_table + b * p.block_table_stride;
    // Key j of request b: row j % page_size of page pages[j / page_size], dequantised exactly
    // (in double) into kv.
    auto key = [&](int64_t j) {
      const int64_t page = pages[j >> p.page_shift];
      dequantize_token(p.kv, page * p.kv_stride_page + (j & (p.page_size - 1)) * p.kv_stride_row,
                       p.kv_type, p.dtype, p.kv_scale, kv.data());
    };
    for (int32_t s = 0; s < p.s_q; ++s) {
      for (int32_t h = 0; h < p.h_q; ++h) {
        const int64_t visible = detail::visible_keys(seq_len, s, p.s_q, p.causal);
        const int64_t q_nope =
            b * p.q_nope_stride_b + s * p.q_nope_stride_s + h * p.q_nope_stride_h;
        const int64_t q_pe = b * p.q_pe_stride_b + s * p.q_pe_stride_s + h * p.q_pe_stride_h;
        for (int d = 0; d < kHeadDimV; ++d) q[d] = load_elem(p.q_nope, q_nope + d, p.dtype);
        for (int d = 0; d < kHeadDimRope; ++d) {
          q[kHeadDimV + d] = load_elem(p.q_pe, q_pe + d, p.dtype);
        }
        double lse = neg_inf;
        std::fill(acc.begin(), acc.end(), 0.0);
        if (visible > 0) {
          logits.assign(static_cast<size_t>(visible), 0.0);
          double max_logit = neg_inf;
          for (int64_t j = 0; j < visible; ++j) {
            key(j);
            double dot = 0.0;
            for (int d = 0; d < kHeadDimQK; ++d) dot += q[d] * kv[d];
            logits[j] = dot * static_cast<double>(p.scale);
            max_logit = std::max(max_logit, logits[j]);
          }
          double sum = 0.0;
          for (int64_t j = 0; j < visible; ++j) {
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

namespace {

// Quantises token t of `p` into the fp8 cache row `dst` (bytes).
void quantize_token(const detail::KvWriteProblem& p, int64_t t, uint8_t* dst) {
  float x[kHeadDimQK];
  for (int d = 0; d < kHeadDimV; ++d) x[d] = load_elem(p.kv_c, t * p.kv_c_stride + d, p.dtype);
  for (int d = 0; d < kHeadDimRope; ++d) {
    x[kHeadDimV + d] = load_elem(p.k_pe, t * p.k_pe_stride + d, p.dtype);
  }
  if (p.kv_type == detail::KvType::kFp8E4M3) {
    for (int d = 0; d < kHeadDimQK; ++d) dst[d] = detail::float_to_fp8_e4m3(x[d] / p.kv_scale);
    return;
  }
  constexpr int kBlocks = kHeadDimV / detail::kDsMlaBlock;
  float scales[kBlocks];
  for (int i = 0; i < kBlocks; ++i) {
    float amax = 0.0f;
    for (int d = i * detail::kDsMlaBlock; d < (i + 1) * detail::kDsMlaBlock; ++d) {
      if (std::isfinite(x[d])) amax = std::max(amax, std::fabs(x[d]));
    }
    scales[i] = detail::ds_mla_scale(amax, p.pow2_scale);
    for (int d = i * detail::kDsMlaBlock; d < (i + 1) * detail::kDsMlaBlock; ++d) {
      dst[d] = detail::float_to_fp8_e4m3(x[d] / scales[i]);
    }
  }
  std::memcpy(dst + detail::kDsMlaScaleOffset, scales, sizeof scales);
  uint16_t rope[kHeadDimRope];
  for (int d = 0; d < kHeadDimRope; ++d) rope[d] = detail::float_to_bf16(x[kHeadDimV + d]);
  std::memcpy(dst + detail::kDsMlaRopeOffset, rope, sizeof rope);
}

}  // namespace

void write_kv_cache(const detail::KvWriteProblem& p) {
  const int64_t mask = p.page_size - 1;
  int page_shift = 0;
  while ((1 << page_shift) < p.page_size) ++page_shift;
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const int64_t slot = p.slot_mapping[t * p.slot_mapping_stride];
    if (slot < 0) continue;  // -1: padding token
    const int64_t offset =
        (slot >> page_shift) * p.kv_stride_page + (slot & mask) * p.kv_stride_row;
    if (p.kv_type != detail::KvType::kHalf) {
      quantize_token(p, t, static_cast<uint8_t*>(p.kv) + offset);
      continue;
    }
    uint16_t* dst = static_cast<uint16_t*>(p.kv) + offset;
    const uint16_t* c = static_cast<const uint16_t*>(p.kv_c) + t * p.kv_c_stride;
    const uint16_t* r = static_cast<const uint16_t*>(p.k_pe) + t * p.k_pe_stride;
    std::copy(c, c + kHeadDimV, dst);
    std::copy(r, r + kHeadDimRope, dst + kHeadDimV);
  }
}

namespace {

float load_merge(const void* base, int64_t i, detail::MergeType type) {
  switch (type) {
    case detail::MergeType::kFloat32:
      return static_cast<const float*>(base)[i];
    case detail::MergeType::kBFloat16:
      return load_elem(base, i, detail::ElemType::kBFloat16);
    case detail::MergeType::kFloat16:
      return load_elem(base, i, detail::ElemType::kFloat16);
  }
  return 0.0f;
}

void store_merge(void* base, int64_t i, detail::MergeType type, float v) {
  switch (type) {
    case detail::MergeType::kFloat32:
      static_cast<float*>(base)[i] = v;
      return;
    case detail::MergeType::kBFloat16:
      store_elem(base, i, detail::ElemType::kBFloat16, v);
      return;
    case detail::MergeType::kFloat16:
      store_elem(base, i, detail::ElemType::kFloat16, v);
      return;
  }
}

}  // namespace

void merge_states(const detail::MergeProblem& p) {
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    for (int32_t h = 0; h < p.num_heads; ++h) {
      const double la = p.lse_a[t * p.lse_a_stride_t + h * p.lse_a_stride_h];
      const double lb = p.lse_b[t * p.lse_b_stride_t + h * p.lse_b_stride_h];
      const int64_t ia = t * p.out_a_stride_t + h * p.out_a_stride_h;
      const int64_t ib = t * p.out_b_stride_t + h * p.out_b_stride_h;
      const int64_t io = t * p.out_stride_t + h * p.out_stride_h;
      double wa = 0.0, wb = 0.0, lse = -std::numeric_limits<double>::infinity();
      if (std::isnan(la) || std::isnan(lb)) {
        wa = wb = lse = std::numeric_limits<double>::quiet_NaN();
      } else if (la != -INFINITY || lb != -INFINITY) {
        // Weights relative to the larger LSE; a -inf side gets weight exactly 0 and its values
        // are never read, so 0 * NaN cannot leak from an empty part.
        const double m = std::max(la, lb);
        wa = la == -INFINITY ? 0.0 : std::exp(la - m);
        wb = lb == -INFINITY ? 0.0 : std::exp(lb - m);
        const double sum = wa + wb;
        lse = m + std::log(sum);
        wa /= sum;
        wb /= sum;
      }
      for (int32_t d = 0; d < p.head_dim; ++d) {
        double v = 0.0;
        if (wa != 0.0) v += wa * load_merge(p.out_a, ia + d, p.dtype);
        if (wb != 0.0) v += wb * load_merge(p.out_b, ib + d, p.dtype);
        store_merge(p.out, io + d, p.dtype, static_cast<float>(v));
      }
      if (p.lse != nullptr)
        p.lse[t * p.lse_stride_t + h * p.lse_stride_h] = static_cast<float>(lse);
    }
  }
}

}  // namespace mla::cpu
