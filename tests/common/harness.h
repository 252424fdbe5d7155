// Test harness shared by the GoogleTest suites and `mla-decode check`: random problems with
// poisoned outputs and NaN-filled dead memory, device buffers, and element-by-element
// comparison against the CPU reference.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mla/mla.h"

namespace mla::testing {

// How lse is laid out in memory for a case.
enum class LseLayout { kNone, kBSH, kBHS };

// One decode configuration. Data is drawn from `seed`.
struct DecodeCase {
  std::string name;
  int batch = 1;
  int s_q = 1;
  int h_q = 16;
  int page_size = 64;
  std::vector<int32_t> seq_lens;  // size batch
  bool causal = false;
  DType dtype = DType::kBFloat16;
  bool split_q = false;  // q as (q_nope, q_pe) pair
  LseLayout lse = LseLayout::kBSH;
  bool padded_strides = false;  // q/out/kv rows padded: non-packed strides
  int extra_pages = 3;          // spare pages in the cache beyond those needed (NaN-filled)
  float scale = 0.0721687836f;  // 1 / sqrt(192), DeepSeek's softmax scale
  uint64_t seed = 1;
  // Cache format. fp8 caches hold the same drawn values as the bf16/fp16 cache of the same case
  // (same seed), quantised: fp8_e4m3 with kv_scale (or, with scale_tensor, the same scale passed
  // as a one-element fp32 tensor), fp8_ds_mla with per-block scales amax / 448.
  KvFormat kv_format = KvFormat::kSameAsQ;
  float kv_scale = 1.0f / 256;
  bool scale_tensor = false;
};

std::string describe(const DecodeCase& c);

// A case of the given shape and sequence lengths; the other fields keep their defaults.
DecodeCase make_case(std::string name, int batch, int s_q, int h_q, int page_size,
                     std::vector<int32_t> seq_lens, bool causal, uint64_t seed);

// Memory on a device: host vectors for the CPU, cudaMalloc for CUDA.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  virtual void* data() = 0;
  virtual size_t bytes() const = 0;
  virtual void upload(const void* src, size_t bytes) = 0;
  virtual void download(void* dst, size_t bytes) const = 0;
};
// Allocates `bytes` (rounded up, kWorkspaceAlignment-byte aligned) on `device`. Contents are
// unspecified.
std::unique_ptr<DeviceBuffer> allocate(Device device, size_t bytes);
// `host` copied into a new buffer on `device` (of at least one element).
template <typename T>
std::unique_ptr<DeviceBuffer> upload_vector(Device device, const std::vector<T>& host) {
  auto buf = allocate(device, (host.empty() ? 1 : host.size()) * sizeof(T));
  if (!host.empty()) buf->upload(host.data(), host.size() * sizeof(T));
  return buf;
}
// The first `n` elements of `buf`.
template <typename T>
std::vector<T> download_vector(const DeviceBuffer& buf, size_t n) {
  std::vector<T> host(n);
  buf.download(host.data(), n * sizeof(T));
  return host;
}
// Waits for all work on the device (no-op on the CPU).
void synchronize(Device device);
// True when `device` can run (CUDA: a device exists and the backend is built).
bool device_usable(Device device);

// `v` rounded to nearest-even in `dtype` (bf16 or fp16), as bits.
uint16_t to_half(float v, DType dtype);

// Width in bytes (fp8) or elements (bf16/fp16) of one cached token of `format`.
int kv_token_width(KvFormat format);
// Quantises 576 values into one fp8 cache row of `format` (the harness's own quantiser, written
// from the format's definition, independent of write_kv_cache): fp8_e4m3 stores e4m3(x /
// kv_scale); fp8_ds_mla uses per-block scales max(amax, 1e-4) / 448 and bf16 RoPE values.
void quantize_row(KvFormat format, float kv_scale, const float* x, uint8_t* row);
// The 576 values one fp8 cache row of `format` stands for (the inverse of quantize_row, written
// from the format's definition): code * kv_scale (fp8_e4m3); code * its block's scale and the
// bf16 RoPE values (fp8_ds_mla). Each value is rounded once to fp32.
void dequantize_row(KvFormat format, float kv_scale, const uint8_t* row, float* x);

// NaN bit patterns used as poison: bf16/fp16 quiet NaN halves and fp32 NaN.
inline constexpr uint16_t kPoison16 = 0x7fc1;  // a NaN in bf16 and in fp16
inline constexpr uint32_t kPoison32 = 0x7fc00001u;
inline constexpr uint8_t kPoisonByte = 0xff;  // workspace fill: 0xffffffff is NaN in fp32
inline constexpr int32_t kDeadPageId = 2147480000;

// A generated problem in host memory, with the reference result.
struct HostDecode {
  DecodeCase c;
  int64_t num_pages = 0, max_pages = 0;
  // Element strides of the (possibly padded) layouts (kv_row in bytes for fp8 caches).
  int64_t q_row = 0, q_pe_row = 0, kv_row = 0, out_row = 0;
  // kv: dead pages and page tails hold NaN: kPoison16 for bf16/fp16; for fp8 caches (whose bytes
  // kv holds, two per element) the e4m3 NaN codes 0x7F and 0xFF alternating, and NaN fp32
  // scales in the dead rows of fp8_ds_mla.
  std::vector<uint16_t> q, q_pe, kv;
  std::vector<float> kv_scale;  // [1]: the scale tensor of fp8_e4m3 cases with scale_tensor
  std::vector<int32_t> block_table, seq_lens;  // dead entries hold kDeadPageId
  std::vector<uint16_t> ref_out;               // reference, same layout as the out buffer
  std::vector<float> ref_lse;                  // [batch, s_q, h_q] packed
  size_t out_elems = 0, lse_elems = 0;

  // Views over buffers at the given addresses, on `device`; `kv_scale` is the scale tensor's
  // buffer (used when c.scale_tensor).
  DecodeParams params(Device device, void* q, void* q_pe, void* kv, void* block_table,
                      void* seq_lens, void* out, void* lse, void* kv_scale = nullptr) const;
};

HostDecode make_decode(const DecodeCase& c);

// Device buffers of one generated problem on `device`: inputs uploaded, out and lse poisoned, and
// a workspace of workspace_size() bytes (`sized` holds that call's status) NaN-filled.
struct DeviceDecode {
  std::unique_ptr<DeviceBuffer> q, q_pe, kv, block_table, seq_lens, out, lse, ws, kv_scale;
  size_t ws_bytes = 0;
  Status sized;
  DecodeParams params;

  DeviceDecode(const HostDecode& hd, Device device);
  Workspace workspace() { return Workspace{ws->data(), ws_bytes}; }
  std::vector<uint16_t> out_host(const HostDecode& hd) const;
  std::vector<float> lse_host(const HostDecode& hd) const;
};

// Result of comparing one output with the reference.
struct Comparison {
  bool ok = true;
  int64_t checked = 0;  // elements compared
  double max_abs = 0, max_rel = 0, cos_diff = 0;
  std::string failure;  // first failing element, empty when ok
};

// Element-by-element check of out/lse (same layout as HostDecode's) against the reference:
// NaN/Inf positions must match exactly, every finite element within abs + rel tolerance, and
// the cosine difference of the whole output under a bound.
Comparison compare_decode(const HostDecode& h, const uint16_t* out, const float* lse);

// Runs one case end to end on `device`: uploads, poisons out/lse/workspace, calls mla::decode,
// downloads and compares. `status` receives the library's status.
Comparison run_decode_case(const DecodeCase& c, Device device, const ExecConfig& config,
                           Status* status);
// The same for a problem already generated (its data and reference), for running one case on
// several kernel configurations without computing the reference again.
Comparison run_decode_case(const HostDecode& hd, Device device, const ExecConfig& config,
                           Status* status);

// The built-in sweeps. level 0: quick smoke (CI), 1: default, 2: exhaustive.
std::vector<DecodeCase> correctness_sweep(int level);
// Corner cases: seq_len 0/1, page tails, page_size 1 and 256, odd h_q, many splits, causal s_q.
std::vector<DecodeCase> corner_cases();

// MLA_TEST_LEVEL from the environment (default `fallback`).
int test_level(int fallback = 0);

}  // namespace mla::testing
