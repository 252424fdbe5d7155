#include "harness.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>

#include "core/fp8.h"
#include "core/half.h"

namespace mla::testing {

uint16_t to_half(float v, DType dtype) {
  return dtype == DType::kBFloat16 ? detail::float_to_bf16(v) : detail::float_to_fp16(v);
}

namespace {

using detail::bf16_to_float;
using detail::fp16_to_float;

float from_half(uint16_t v, DType dtype) {
  return dtype == DType::kBFloat16 ? bf16_to_float(v) : fp16_to_float(v);
}

// Index of (b, s, h) in the lse buffer of a case.
int64_t lse_index(const DecodeCase& c, int b, int s, int h) {
  if (c.lse == LseLayout::kBHS) return (static_cast<int64_t>(b) * c.h_q + h) * c.s_q + s;
  return (static_cast<int64_t>(b) * c.s_q + s) * c.h_q + h;
}

class HostBuffer final : public DeviceBuffer {
 public:
  explicit HostBuffer(size_t bytes) : bytes_(bytes) {
    // Aligned for any use, workspaces included.
    constexpr size_t kAlign = kWorkspaceAlignment;
    const size_t rounded = (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
    data_ = std::aligned_alloc(kAlign, rounded);
  }
  ~HostBuffer() override { std::free(data_); }
  void* data() override { return data_; }
  size_t bytes() const override { return bytes_; }
  void upload(const void* src, size_t n) override {
    if (n > 0) std::memcpy(data_, src, n);
  }
  void download(void* dst, size_t n) const override {
    if (n > 0) std::memcpy(dst, data_, n);
  }

 private:
  void* data_;
  size_t bytes_;
};

// NaN and Inf must sit in the same places; finite values agree within atol + rtol * |expected|.
bool values_match(double got, double want, double atol, double rtol) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

}  // namespace

#ifdef MLA_HARNESS_CUDA
// cuda_buffer.cu
std::unique_ptr<DeviceBuffer> allocate_cuda(int device, size_t bytes);
void synchronize_cuda(int device);
#endif

std::unique_ptr<DeviceBuffer> allocate(Device device, size_t bytes) {
  if (device.type == DeviceType::kCUDA) {
#ifdef MLA_HARNESS_CUDA
    return allocate_cuda(device.index, bytes);
#else
    std::abort();  // device_usable() is false: callers skip before allocating
#endif
  }
  return std::make_unique<HostBuffer>(bytes);
}

void synchronize(Device device) {
#ifdef MLA_HARNESS_CUDA
  if (device.type == DeviceType::kCUDA) synchronize_cuda(device.index);
#else
  (void)device;
#endif
}

bool device_usable(Device device) {
  if (device.type == DeviceType::kCPU) return true;
#ifdef MLA_HARNESS_CUDA
  return device.index < cuda_device_count();
#else
  return false;
#endif
}

DecodeCase make_case(std::string name, int batch, int s_q, int h_q, int page_size,
                     std::vector<int32_t> seq_lens, bool causal, uint64_t seed) {
  DecodeCase c;
  c.name = std::move(name);
  c.batch = batch;
  c.s_q = s_q;
  c.h_q = h_q;
  c.page_size = page_size;
  c.seq_lens = std::move(seq_lens);
  c.causal = causal;
  c.seed = seed;
  return c;
}

std::string describe(const DecodeCase& c) {
  std::ostringstream os;
  os << (c.name.empty() ? "case" : c.name) << " {batch=" << c.batch << " s_q=" << c.s_q
     << " h_q=" << c.h_q << " page=" << c.page_size << (c.causal ? " causal" : "") << " "
     << dtype_name(c.dtype) << (c.split_q ? " q-pair" : " q-576")
     << (c.lse == LseLayout::kNone  ? " no-lse"
         : c.lse == LseLayout::kBSH ? " lse-bsh"
                                    : " lse-bhs")
     << (c.padded_strides ? " padded" : "")
     << (c.kv_format == KvFormat::kSameAsQ ? "" : std::string(" kv=") + kv_format_name(c.kv_format))
     << (c.scale_tensor ? " scale-tensor" : "") << " seed=" << c.seed << " seq_lens=[";
  for (size_t i = 0; i < c.seq_lens.size(); ++i) {
    if (i == 12) {
      os << ", ... (" << c.seq_lens.size() << " in all)";
      break;
    }
    os << (i ? ", " : "") << c.seq_lens[i];
  }
  os << "]}";
  return os.str();
}

int kv_token_width(KvFormat format) {
  return format == KvFormat::kFp8DsMla ? kFp8DsMlaTokenBytes : kHeadDimQK;
}

void quantize_row(KvFormat format, float kv_scale, const float* x, uint8_t* row) {
  if (format == KvFormat::kFp8E4M3) {
    for (int d = 0; d < kHeadDimQK; ++d) row[d] = detail::float_to_fp8_e4m3(x[d] / kv_scale);
    return;
  }
  for (int blk = 0; blk < 4; ++blk) {
    float amax = 0.0f;
    for (int d = 128 * blk; d < 128 * (blk + 1); ++d) amax = std::max(amax, std::fabs(x[d]));
    const float scale = std::max(amax, 1e-4f) / 448.0f;
    for (int d = 128 * blk; d < 128 * (blk + 1); ++d) {
      row[d] = detail::float_to_fp8_e4m3(x[d] / scale);
    }
    std::memcpy(row + 512 + 4 * blk, &scale, 4);
  }
  for (int d = 0; d < kHeadDimRope; ++d) {
    const uint16_t h = detail::float_to_bf16(x[kHeadDimV + d]);
    std::memcpy(row + 528 + 2 * d, &h, 2);
  }
}

void dequantize_row(KvFormat format, float kv_scale, const uint8_t* row, float* x) {
  if (format == KvFormat::kFp8E4M3) {
    for (int d = 0; d < kHeadDimQK; ++d) x[d] = detail::fp8_e4m3_to_float(row[d]) * kv_scale;
    return;
  }
  for (int d = 0; d < kHeadDimV; ++d) {
    float scale;
    std::memcpy(&scale, row + 512 + 4 * (d / 128), 4);
    x[d] = detail::fp8_e4m3_to_float(row[d]) * scale;
  }
  for (int d = 0; d < kHeadDimRope; ++d) {
    uint16_t h;
    std::memcpy(&h, row + 528 + 2 * d, 2);
    x[kHeadDimV + d] = detail::bf16_to_float(h);
  }
}

DecodeParams HostDecode::params(Device device, void* q_ptr, void* q_pe_ptr, void* kv_ptr,
                                void* block_table_ptr, void* seq_lens_ptr, void* out_ptr,
                                void* lse_ptr, void* kv_scale_ptr) const {
  const int64_t b = c.batch, s = c.s_q, h = c.h_q;
  DecodeParams p;
  if (c.split_q) {
    p.q = make_tensor(q_ptr, c.dtype, {b, s, h, kHeadDimV}, {s * h * q_row, h * q_row, q_row, 1},
                      device);
    p.q_pe = make_tensor(q_pe_ptr, c.dtype, {b, s, h, kHeadDimRope},
                         {s * h * q_pe_row, h * q_pe_row, q_pe_row, 1}, device);
  } else {
    p.q = make_tensor(q_ptr, c.dtype, {b, s, h, kHeadDimQK}, {s * h * q_row, h * q_row, q_row, 1},
                      device);
  }
  if (c.kv_format == KvFormat::kSameAsQ) {
    p.kv_cache = make_tensor(kv_ptr, c.dtype, {num_pages, c.page_size, kHeadDimQK},
                             {c.page_size * kv_row, kv_row, 1}, device);
  } else {
    p.kv_cache =
        make_tensor(kv_ptr, DType::kUInt8, {num_pages, c.page_size, kv_token_width(c.kv_format)},
                    {c.page_size * kv_row, kv_row, 1}, device);
    p.kv_format = c.kv_format;
    if (c.kv_format == KvFormat::kFp8E4M3) {
      if (c.scale_tensor) {
        p.kv_scale_tensor = make_tensor(kv_scale_ptr, DType::kFloat32, {1}, device);
      } else {
        p.kv_scale = c.kv_scale;
      }
    }
  }
  p.block_table = make_tensor(block_table_ptr, DType::kInt32, {b, max_pages}, device);
  p.seq_lens = make_tensor(seq_lens_ptr, DType::kInt32, {b}, device);
  p.out = make_tensor(out_ptr, c.dtype, {b, s, h, kHeadDimV},
                      {s * h * out_row, h * out_row, out_row, 1}, device);
  if (c.lse == LseLayout::kBSH) {
    p.lse = make_tensor(lse_ptr, DType::kFloat32, {b, s, h}, device);
  } else if (c.lse == LseLayout::kBHS) {
    p.lse = make_tensor(lse_ptr, DType::kFloat32, {b, s, h}, {h * s, 1, s}, device);
  }
  p.softmax_scale = c.scale;
  p.causal = c.causal;
  return p;
}

HostDecode make_decode(const DecodeCase& c) {
  HostDecode hd;
  hd.c = c;
  std::mt19937_64 rng(c.seed);
  std::uniform_real_distribution<float> q_dist(-2.0f, 2.0f), kv_dist(-1.0f, 1.0f);
  const int pad = c.padded_strides ? 64 : 0;  // 128 bytes: keeps rows 16-byte aligned
  hd.q_row = (c.split_q ? kHeadDimV : kHeadDimQK) + pad;
  hd.q_pe_row = kHeadDimRope + (c.padded_strides ? 16 : 0);
  const bool fp8 = c.kv_format != KvFormat::kSameAsQ;
  hd.kv_row = kv_token_width(c.kv_format) + pad;  // elements, or bytes for fp8 (always even)
  hd.out_row = kHeadDimV + pad;

  // Pages: each request gets ceil(len / page_size) distinct pages in random order; the cache
  // has extra pages nobody owns. Dead block-table entries point far outside the cache.
  std::vector<int64_t> live(c.batch);
  int64_t total_live = 0, max_live = 0;
  for (int b = 0; b < c.batch; ++b) {
    live[b] = (c.seq_lens[b] + c.page_size - 1) / c.page_size;
    total_live += live[b];
    max_live = std::max(max_live, live[b]);
  }
  hd.num_pages = total_live + c.extra_pages;
  hd.max_pages = max_live + 2;
  std::vector<int32_t> page_ids(static_cast<size_t>(hd.num_pages));
  std::iota(page_ids.begin(), page_ids.end(), 0);
  std::shuffle(page_ids.begin(), page_ids.end(), rng);
  hd.block_table.assign(static_cast<size_t>(c.batch * hd.max_pages), kDeadPageId);
  hd.seq_lens = c.seq_lens;
  int64_t next = 0;
  for (int b = 0; b < c.batch; ++b) {
    for (int64_t i = 0; i < live[b]; ++i) hd.block_table[b * hd.max_pages + i] = page_ids[next++];
  }

  // KV cache: NaN everywhere except the rows that are live tokens (row padding stays NaN).
  // fp8: the bytes alternate between the e4m3 NaN codes 0x7F and 0xFF (0xFF7F as an element),
  // and every fp8_ds_mla row gets NaN scales; live rows are then overwritten.
  const int64_t kv_rows = hd.num_pages * c.page_size;
  hd.kv.assign(static_cast<size_t>(fp8 ? kv_rows * hd.kv_row / 2 : kv_rows * hd.kv_row),
               fp8 ? uint16_t{0xff7f} : kPoison16);
  uint8_t* kv_bytes = reinterpret_cast<uint8_t*>(hd.kv.data());
  if (c.kv_format == KvFormat::kFp8DsMla) {
    const float nan_scales[4] = {std::nanf(""), -std::nanf(""), std::nanf(""), std::nanf("")};
    for (int64_t r = 0; r < kv_rows; ++r) {
      std::memcpy(kv_bytes + r * hd.kv_row + 512, nan_scales, sizeof nan_scales);
    }
  }
  float values[kHeadDimQK];
  for (int b = 0; b < c.batch; ++b) {
    for (int64_t j = 0; j < c.seq_lens[b]; ++j) {
      const int64_t page = hd.block_table[b * hd.max_pages + j / c.page_size];
      const int64_t r = page * c.page_size + j % c.page_size;
      for (int d = 0; d < kHeadDimQK; ++d) values[d] = kv_dist(rng);
      if (fp8) {
        quantize_row(c.kv_format, c.kv_scale, values, kv_bytes + r * hd.kv_row);
      } else {
        for (int d = 0; d < kHeadDimQK; ++d) hd.kv[r * hd.kv_row + d] = to_half(values[d], c.dtype);
      }
    }
  }
  hd.kv_scale.assign(1, c.kv_scale);
  // Queries (row padding NaN).
  const int64_t rows = static_cast<int64_t>(c.batch) * c.s_q * c.h_q;
  hd.q.assign(static_cast<size_t>(rows * hd.q_row), kPoison16);
  const int q_width = c.split_q ? kHeadDimV : kHeadDimQK;
  for (int64_t r = 0; r < rows; ++r) {
    for (int d = 0; d < q_width; ++d) hd.q[r * hd.q_row + d] = to_half(q_dist(rng), c.dtype);
  }
  if (c.split_q) {
    hd.q_pe.assign(static_cast<size_t>(rows * hd.q_pe_row), kPoison16);
    for (int64_t r = 0; r < rows; ++r) {
      for (int d = 0; d < kHeadDimRope; ++d) {
        hd.q_pe[r * hd.q_pe_row + d] = to_half(q_dist(rng), c.dtype);
      }
    }
  }

  // Reference result, computed into poisoned buffers of the case's layouts.
  hd.out_elems = static_cast<size_t>(rows * hd.out_row);
  hd.lse_elems = c.lse == LseLayout::kNone ? 0 : static_cast<size_t>(rows);
  hd.ref_out.assign(hd.out_elems, kPoison16);
  hd.ref_lse.assign(std::max<size_t>(hd.lse_elems, 1), detail::bits_to_float(kPoison32));
  DecodeParams p =
      hd.params(Device{}, hd.q.data(), hd.q_pe.data(), hd.kv.data(), hd.block_table.data(),
                hd.seq_lens.data(), hd.ref_out.data(), hd.ref_lse.data(), hd.kv_scale.data());
  ExecConfig config;
  config.reference = true;
  Status s = decode(p, Workspace{}, config);
  if (!s.ok()) {
    std::fprintf(stderr, "reference decode failed for %s: %s\n", describe(c).c_str(),
                 s.message().c_str());
    std::abort();
  }
  return hd;
}

Comparison compare_decode(const HostDecode& hd, const uint16_t* out, const float* lse) {
  const DecodeCase& c = hd.c;
  const bool bf16 = c.dtype == DType::kBFloat16;
  // bf16 keeps 8 mantissa bits (fp16 11); the fast paths also round softmax weights to the
  // input type before P @ V, so allow a few output ulps plus an absolute floor.
  const double atol = bf16 ? 8e-3 : 1e-3, rtol = bf16 ? 2e-2 : 4e-3;
  const double cos_tol = bf16 ? 5e-5 : 2e-6;
  // fp8_ds_mla: the portable CUDA kernel rounds each dequantised value (code x block scale) to
  // q's 16-bit type before its tensor-core math, so every logit carries up to 2^-8 relative error
  // per term; over 576 terms that moved lse by up to 3.0e-3 on the H200 (corner cases and shape
  // sweep, 2026-11-29) against 1e-3 for every other cache. The outputs stay within atol / rtol.
  const double lse_atol = c.kv_format == KvFormat::kFp8DsMla ? 1e-2 : 1e-3;
  Comparison r;
  double dot = 0, norm_o = 0, norm_r = 0;
  auto record = [&](bool ok, const std::string& what) {
    if (!ok && r.ok) {
      r.ok = false;
      r.failure = what;
    }
  };
  for (int b = 0; b < c.batch; ++b) {
    for (int s = 0; s < c.s_q; ++s) {
      for (int h = 0; h < c.h_q; ++h) {
        const int64_t row = (static_cast<int64_t>(b) * c.s_q + s) * c.h_q + h;
        for (int64_t d = 0; d < hd.out_row; ++d) {
          const int64_t i = row * hd.out_row + d;
          if (d >= kHeadDimV) {
            // Row padding is outside the view: it must still hold the poison pattern.
            if (out[i] != kPoison16) {
              std::ostringstream os;
              os << "out padding written at b=" << b << " s=" << s << " h=" << h << " d=" << d;
              record(false, os.str());
            }
            continue;
          }
          const double o = from_half(out[i], c.dtype), e = from_half(hd.ref_out[i], c.dtype);
          ++r.checked;
          const bool ok = values_match(o, e, atol, rtol);
          if (std::isfinite(o) && std::isfinite(e)) {
            const double err = std::fabs(o - e);
            r.max_abs = std::max(r.max_abs, err);
            if (std::fabs(e) > 1e-3) r.max_rel = std::max(r.max_rel, err / std::fabs(e));
            dot += o * e;
            norm_o += o * o;
            norm_r += e * e;
          }
          if (!ok) {
            std::ostringstream os;
            os << "out[" << b << "," << s << "," << h << "," << d << "] = " << o << ", expected "
               << e;
            record(false, os.str());
          }
        }
        if (hd.lse_elems > 0) {
          const int64_t i = lse_index(c, b, s, h);
          const double o = lse[i], e = hd.ref_lse[i];
          ++r.checked;
          const bool ok = values_match(o, e, lse_atol, 1e-4);
          if (!ok) {
            std::ostringstream os;
            os << "lse[" << b << "," << s << "," << h << "] = " << o << ", expected " << e;
            record(false, os.str());
          }
        }
      }
    }
  }
  if (norm_r > 0 && norm_o > 0) r.cos_diff = 1.0 - dot / std::sqrt(norm_o * norm_r);
  if (r.cos_diff > cos_tol) {
    std::ostringstream os;
    os << "cosine difference " << r.cos_diff << " exceeds " << cos_tol;
    record(false, os.str());
  }
  return r;
}

DeviceDecode::DeviceDecode(const HostDecode& hd, Device device) {
  auto up = [&](const auto& v) {
    const size_t n = v.size() * sizeof(v[0]);
    auto buf = allocate(device, n);
    if (n > 0) buf->upload(v.data(), n);
    return buf;
  };
  q = up(hd.q);
  q_pe = up(hd.q_pe);
  kv = up(hd.kv);
  block_table = up(hd.block_table);
  seq_lens = up(hd.seq_lens);
  kv_scale = up(hd.kv_scale);
  out = up(std::vector<uint16_t>(hd.out_elems, kPoison16));
  lse = up(std::vector<float>(std::max<size_t>(hd.lse_elems, 1), std::nanf("")));
  const DecodeCase& c = hd.c;
  sized = workspace_size(DecodeShape{c.batch, c.s_q, c.h_q}, device, ExecConfig{}, &ws_bytes);
  ws = up(std::vector<uint8_t>(ws_bytes, kPoisonByte));
  params = hd.params(device, q->data(), q_pe->data(), kv->data(), block_table->data(),
                     seq_lens->data(), out->data(), lse->data(), kv_scale->data());
}

std::vector<uint16_t> DeviceDecode::out_host(const HostDecode& hd) const {
  std::vector<uint16_t> v(hd.out_elems);
  out->download(v.data(), v.size() * sizeof(uint16_t));
  return v;
}

std::vector<float> DeviceDecode::lse_host(const HostDecode& hd) const {
  std::vector<float> v(std::max<size_t>(hd.lse_elems, 1));
  lse->download(v.data(), v.size() * sizeof(float));
  return v;
}

Comparison run_decode_case(const DecodeCase& c, Device device, const ExecConfig& config,
                           Status* status) {
  return run_decode_case(make_decode(c), device, config, status);
}

Comparison run_decode_case(const HostDecode& hd, Device device, const ExecConfig& config,
                           Status* status) {
  const DecodeCase& c = hd.c;
  auto upload = [&](const auto& v) {
    const size_t n = v.size() * sizeof(v[0]);
    auto buf = allocate(device, n);
    if (n > 0) buf->upload(v.data(), n);
    return buf;
  };
  auto q = upload(hd.q), q_pe = upload(hd.q_pe), kv = upload(hd.kv);
  auto block_table = upload(hd.block_table), seq_lens = upload(hd.seq_lens);
  auto kv_scale = upload(hd.kv_scale);
  const std::vector<uint16_t> out_poison(hd.out_elems, kPoison16);
  const std::vector<float> lse_poison(std::max<size_t>(hd.lse_elems, 1),
                                      detail::bits_to_float(kPoison32));
  auto out = upload(out_poison);
  auto lse = upload(lse_poison);

  size_t ws_bytes = 0;
  *status = workspace_size(DecodeShape{c.batch, c.s_q, c.h_q}, device, config, &ws_bytes);
  if (!status->ok()) return Comparison{false, 0, 0, 0, 0, "workspace_size: " + status->message()};
  auto ws = allocate(device, ws_bytes);
  const DecodeParams p = hd.params(device, q->data(), q_pe->data(), kv->data(), block_table->data(),
                                   seq_lens->data(), out->data(), lse->data(), kv_scale->data());

  // Two calls: the workspace first NaN-filled, then filled with a plausible finite pattern
  // (0x3c3c3c3c = 0.0115f); outputs re-poisoned before each. Both must match the reference.
  Comparison result;
  for (uint8_t fill : {kPoisonByte, uint8_t{0x3c}}) {
    const std::vector<uint8_t> ws_fill(ws_bytes, fill);
    if (ws_bytes > 0) ws->upload(ws_fill.data(), ws_bytes);
    out->upload(out_poison.data(), hd.out_elems * sizeof(uint16_t));
    lse->upload(lse_poison.data(), lse_poison.size() * sizeof(float));
    *status = decode(p, Workspace{ws->data(), ws_bytes}, config);
    if (!status->ok()) return Comparison{false, 0, 0, 0, 0, "decode: " + status->message()};
    synchronize(device);
    std::vector<uint16_t> got_out(hd.out_elems);
    std::vector<float> got_lse(lse_poison.size());
    out->download(got_out.data(), got_out.size() * sizeof(uint16_t));
    lse->download(got_lse.data(), got_lse.size() * sizeof(float));
    result = compare_decode(hd, got_out.data(), got_lse.data());
    if (!result.ok) {
      result.failure +=
          fill == kPoisonByte ? " (workspace NaN-filled)" : " (workspace 0x3c-filled)";
      return result;
    }
  }
  return result;
}

namespace {

// Sequence lengths for a case: a mix of empty, single-token, page-boundary +-1 and random
// lengths up to `max_len`.
std::vector<int32_t> draw_seq_lens(std::mt19937_64& rng, int batch, int page_size, int max_len) {
  std::vector<int32_t> lens(batch);
  std::uniform_int_distribution<int> kind(0, 6), any(0, max_len);
  std::uniform_int_distribution<int> pages(1, std::max(1, max_len / page_size));
  for (int b = 0; b < batch; ++b) {
    switch (kind(rng)) {
      case 0:
        lens[b] = 0;
        break;
      case 1:
        lens[b] = 1;
        break;
      case 2:
        lens[b] = std::min(max_len, pages(rng) * page_size - 1);
        break;
      case 3:
        lens[b] = std::min(max_len, pages(rng) * page_size);
        break;
      case 4:
        lens[b] = std::min(max_len, pages(rng) * page_size + 1);
        break;
      default:
        lens[b] = any(rng);
        break;
    }
  }
  return lens;
}

}  // namespace

std::vector<DecodeCase> correctness_sweep(int level) {
  // Every dimension of the sweep appears at level 0; higher levels add combinations.
  const int h_values[] = {1, 3, 16, 64, 127, 128};
  const int s_values[] = {1, 2, 4};
  const int page_values[] = {1, 16, 64, 256};
  const int count = level <= 0 ? 24 : level == 1 ? 96 : 384;
  std::mt19937_64 rng(20261125);
  std::vector<DecodeCase> cases;
  for (int i = 0; i < count; ++i) {
    DecodeCase c;
    c.h_q = h_values[i % 6];
    c.s_q = s_values[(i / 2) % 3];
    c.causal = c.s_q > 1 && (i / 6) % 2 == 0;
    c.page_size = page_values[(i / 3) % 4];
    c.dtype = (i / 4) % 2 == 0 ? DType::kBFloat16 : DType::kFloat16;
    c.split_q = (i / 5) % 2 == 1;
    c.lse = static_cast<LseLayout>((i / 7) % 3);
    c.padded_strides = (i / 11) % 2 == 1;
    // Keep the reference's cost bounded: rows * tokens stays around 2e6.
    const int rows = c.h_q * c.s_q;
    const int batch_cap = level >= 2 ? 64 : 16;
    std::uniform_int_distribution<int> batch_dist(1, std::max(1, std::min(batch_cap, 4096 / rows)));
    c.batch = batch_dist(rng);
    const int max_len = std::max(8, std::min(1200, 2000000 / (rows * c.batch)));
    c.seq_lens = draw_seq_lens(rng, c.batch, c.page_size, max_len);
    c.seed = 1000 + static_cast<uint64_t>(i);
    c.name = "sweep" + std::to_string(i);
    cases.push_back(c);
  }
  return cases;
}

std::vector<DecodeCase> corner_cases() {
  std::vector<DecodeCase> cases;
  auto add = [&](const std::string& name, int batch, int s_q, int h_q, int page,
                 std::vector<int32_t> lens, bool causal = false) {
    cases.push_back(
        make_case(name, batch, s_q, h_q, page, std::move(lens), causal, 7 + cases.size()));
  };
  add("all_empty", 4, 1, 16, 64, {0, 0, 0, 0});
  add("all_empty_causal_mtp", 3, 2, 128, 64, {0, 0, 0}, true);
  add("seq_len_1", 3, 1, 16, 64, {1, 1, 1});
  add("page_tails", 4, 1, 16, 64, {63, 65, 127, 129});
  add("page_size_1", 2, 1, 16, 1, {37, 5});
  add("page_size_256", 3, 1, 16, 256, {255, 257, 600});
  add("h_q_1", 2, 1, 1, 16, {100, 33});
  add("h_q_3", 2, 1, 3, 16, {100, 33});
  add("h_q_127", 2, 1, 127, 64, {130, 64});
  add("h_q_128_mtp4", 2, 4, 128, 64, {70, 3}, true);
  add("causal_short_rows", 2, 4, 16, 16, {2, 1}, true);  // rows that see nothing
  add("batch_64_small", 64, 1, 16, 16, std::vector<int32_t>(64, 17));
  add("many_splits", 1, 1, 16, 64, {16384});
  add("many_splits_mixed", 4, 1, 64, 64, {0, 12000, 1, 0});
  add("half_empty", 8, 1, 64, 64, {0, 500, 0, 300, 0, 64, 0, 1});
  add("mtp2_long", 2, 2, 128, 64, {3000, 40}, true);
  add("mtp8_causal", 3, 8, 16, 16, {40, 5, 0}, true);        // 128 rows: two 64-row tiles
  add("s_q_16_h_q_64", 2, 16, 64, 64, {130, 9}, true);       // 1024 rows, the largest s_q
  add("s_q_16_h_q_3", 2, kMaxSeqQ, 3, 16, {16, 15}, false);  // rows not a multiple of 8
  // Thousands of tiny requests: on a GPU of up to ~175 SMs each partition holds many whole
  // requests, so the CUDA schedule takes whole-request cuts (no split, no combine work).
  std::vector<int32_t> tiny(3000);
  for (size_t b = 0; b < tiny.size(); ++b) tiny[b] = static_cast<int32_t>(b * 7 % 21);
  add("whole_requests", 3000, 1, 1, 16, std::move(tiny));
  return cases;
}

int test_level(int fallback) {
  const char* env = std::getenv("MLA_TEST_LEVEL");
  if (env == nullptr || *env == '\0') return fallback;
  return std::atoi(env);
}

}  // namespace mla::testing
