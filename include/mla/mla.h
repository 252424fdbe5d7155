// mla-decode: Multi-head Latent Attention decode against a paged latent KV cache.
//
// Plain C++17; no CUDA, framework or third-party headers. Every call returns a Status and
// never throws. Every tensor is described by a TensorView (pointer, dtype, shape, strides in
// elements, device); the library never allocates the caller's tensors.
//
// The full-write contract: one decode() call writes every element of `out` (and of `lse` when
// given), whatever the inputs, and nothing else. Callers may pass uninitialised memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

namespace mla {

/// Width of one cached latent token and of each query row: 512 "nope" + 64 RoPE values.
inline constexpr int kHeadDimQK = 576;
/// Width of the value (the first 512 entries of the cached latent) and of each output row.
inline constexpr int kHeadDimV = 512;
/// Width of the RoPE part (entries 512..575).
inline constexpr int kHeadDimRope = kHeadDimQK - kHeadDimV;
/// Largest number of query heads a call accepts.
inline constexpr int kMaxHeadsQ = 128;
/// Largest number of query tokens per request (s_q) a call accepts.
inline constexpr int kMaxSeqQ = 16;
/// Largest page size (tokens per KV page); every power of two from 1 to this is accepted.
inline constexpr int kMaxPageSize = 256;
/// Required alignment, in bytes, of Workspace::data on every device (the CUDA workspace's
/// sections start on 256-byte boundaries; the CPU's on 64-byte cache lines).
inline constexpr size_t kWorkspaceAlignment = 256;

/// Element types. Values match nothing external; use the names. kUInt8 holds raw bytes: the
/// fp8 KV cache formats (see KvFormat) are passed as uint8 tensors.
enum class DType : int32_t { kBFloat16, kFloat16, kFloat32, kInt32, kInt64, kUInt8 };

/// "bfloat16", "float16", "float32", "int32", "int64", "uint8".
const char* dtype_name(DType dtype);
/// Bytes per element.
size_t dtype_size(DType dtype);

/// Where a tensor lives. The numeric values are DLPack's device codes.
enum class DeviceType : int32_t { kCPU = 1, kCUDA = 2 };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;  ///< CUDA device ordinal; 0 for the CPU.
};

inline constexpr int kMaxDims = 4;

/// How the KV cache stores a token (docs/kv_formats.md has the byte layouts).
enum class KvFormat : int32_t {
  /// [num_pages, page_size, 576] in the dtype of q (bf16 or fp16).
  kSameAsQ = 0,
  /// "fp8_e4m3": [num_pages, page_size, 576] uint8, every value (RoPE part included) an OCP
  /// float8 e4m3 code; dequantised value = fp8 value * kv_scale (one scale per tensor).
  kFp8E4M3 = 1,
  /// "fp8_ds_mla": [num_pages, page_size, 656] uint8 (DeepSeek-V3.2 / FlashMLA's FP8 cache):
  /// bytes [0, 512) the 512 latent values as e4m3, [512, 528) four fp32 scales (scale i
  /// multiplies latent values [128 i, 128 i + 128)), [528, 656) the 64 RoPE values as bf16.
  kFp8DsMla = 2,
};

/// "same_as_q", "fp8_e4m3", "fp8_ds_mla".
const char* kv_format_name(KvFormat format);

/// Bytes per cached token of the fp8_ds_mla format.
inline constexpr int kFp8DsMlaTokenBytes = 656;

/// A non-owning view of a strided tensor. `ndim == 0` means "absent" (for optional arguments).
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};
  int64_t strides[kMaxDims] = {0, 0, 0, 0};  ///< In elements, not bytes.
  Device device{};

  bool present() const { return ndim > 0; }
  int64_t numel() const;
};

/// A densely packed (row-major) view of `data` with the given shape (1 to 4 dimensions).
TensorView make_tensor(void* data, DType dtype, std::initializer_list<int64_t> shape,
                       Device device = {});
/// The same with explicit strides, in elements.
TensorView make_tensor(void* data, DType dtype, std::initializer_list<int64_t> shape,
                       std::initializer_list<int64_t> strides, Device device = {});

enum class StatusCode : int32_t {
  kOk = 0,
  kInvalidArgument,  ///< A host-checkable argument is wrong; nothing was launched or written.
  kUnsupported,      ///< A valid request this build or device cannot serve; nothing was written.
  kDataError,        ///< seq_lens / block_table / slot_mapping contents are out of range.
  kCudaError,        ///< The CUDA runtime reported an error.
  kInternal,         ///< A bug in mla-decode; please report it.
};

/// The outcome of a call: a code plus a message that names the argument and the offending value.
class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

/// Decode arguments. Shapes use batch B, query tokens per request S (s_q), query heads H (h_q).
///
/// Semantics (natural-log LSE): for request b, query token s, head h, with L = seq_lens[b],
///   visible = causal ? L - (S - 1 - s) : L        (keys [0, visible))
///   logits[j] = softmax_scale * dot(q[b,s,h,0:576], K[b,j,0:576])
///   out[b,s,h,:] = softmax(logits) @ K[b,0:visible,0:512];  lse[b,s,h] = ln(sum_j exp(logits[j]))
/// where K[b,j] is row j % page_size of page block_table[b, j / page_size].
/// Empty rows (visible <= 0, e.g. seq_lens[b] == 0 for CUDA-graph padding): out = 0, lse = -inf.
/// out and lse must not share memory with any other argument (their address ranges must be
/// disjoint); a call that breaks this is rejected.
struct DecodeParams {
  TensorView q;            ///< [B, S, H, 576] bf16/fp16; or q_nope [B, S, H, 512] when q_pe is set.
  TensorView q_pe;         ///< Optional [B, S, H, 64], same dtype as q.
  TensorView kv_cache;     ///< [num_pages, page_size, 576], same dtype as q; for fp8 formats
                           ///< uint8 [.., 576] (fp8_e4m3) or [.., 656] (fp8_ds_mla).
  TensorView block_table;  ///< [B, max_pages_per_seq] int32.
  TensorView seq_lens;     ///< [B] int32: cached tokens per request, the newest S of them are
                           ///< the tokens being decoded (when causal).
  TensorView out;          ///< [B, S, H, 512], same dtype as q. Written in full.
  TensorView lse;          ///< Optional [B, S, H] fp32 (any strides, so a [B, H, S] buffer
                           ///< works through a permuted view). Written in full when present.
  float softmax_scale = 0.0f;  ///< Usually 1/sqrt(192) for DeepSeek; must be finite and > 0.
  bool causal = false;         ///< Apply the causal rule among the S query tokens.
  /// Storage of kv_cache. K above is the dequantised cache; q, out and lse keep their types.
  KvFormat kv_format = KvFormat::kSameAsQ;
  /// fp8_e4m3 only: the per-tensor scale (dequantised = stored * kv_scale), finite and > 0.
  /// Must stay 1 for the other formats.
  float kv_scale = 1.0f;
  /// fp8_e4m3 only, optional: a one-element fp32 tensor [1] on the call's device holding the
  /// scale (as vLLM passes k_scale); when present it replaces kv_scale (which must stay 1).
  /// On the CPU a value that is not finite and > 0 is a kDataError; on CUDA (read on the
  /// device) the rows of every request with keys are written as NaN and check_data_errors()
  /// reports it.
  TensorView kv_scale_tensor;
};

/// Shapes that decide the workspace size (never the sequence lengths).
struct DecodeShape {
  int64_t batch = 0;
  int64_t s_q = 1;
  int64_t h_q = 0;
};

/// Scratch memory for one decode step: split-KV partials, the schedule and error flags.
/// On the device of the call, `kWorkspaceAlignment`-byte aligned (cudaMalloc's and torch's
/// allocations are). Its contents before a call never influence results.
struct Workspace {
  void* data = nullptr;
  size_t bytes = 0;
};

/// How to run a call.
struct ExecConfig {
  /// CUDA: the cudaStream_t to launch on (nullptr = legacy default stream).
  void* stream = nullptr;
  /// CPU: worker threads (0 = all hardware threads). Must be the same for workspace_size().
  int num_threads = 0;
  /// CPU: run the straightforward double-precision reference instead of the fast path.
  bool reference = false;
};

/// Bytes of workspace decode() needs on `device` for these shapes. Depends on shapes, the
/// device's SM count and (CPU) config.num_threads only, so an engine allocates it once.
Status workspace_size(const DecodeShape& shape, Device device, const ExecConfig& config,
                      size_t* bytes);

/// Computes the split-KV schedule of one step from params.seq_lens into the workspace (on the
/// device, no host synchronisation) and clears the workspace's error flags. The schedule depends
/// on seq_lens and shapes only, so every layer of a step can share it through decode_planned().
Status plan(const DecodeParams& params, Workspace workspace, const ExecConfig& config);

/// Decode using the schedule that the last plan() on this workspace computed. seq_lens and the
/// shapes must be those plan() saw: call plan() once per step (after seq_lens are final, and
/// outside a captured graph that replays with new seq_lens, or inside it), before the step's
/// decode_planned() calls. A fresh workspace needs nothing else: its contents never matter.
/// CUDA checks this on the device: decode_planned() on a workspace that no plan() prepared, or
/// whose last plan() saw other shapes (batch, s_q, h_q, page_size, causal) or another seq_len,
/// still returns OK (the mismatch is found on the device), but writes every element of out and
/// lse as NaN and records the cause for check_data_errors(), until the next plan().
Status decode_planned(const DecodeParams& params, Workspace workspace, const ExecConfig& config);

/// plan() followed by decode_planned().
Status decode(const DecodeParams& params, Workspace workspace, const ExecConfig& config);

/// Reports data errors that the device found since the last plan() (or sparse_decode()) on this
/// workspace (negative seq_len, seq_len beyond the block table, page id outside the cache; for
/// sparse_decode an index or topk_lengths out of range): kDataError naming the first bad request,
/// else OK. Rows of a bad request were written as NaN. Also reports, first,
/// a decode_planned() without a matching plan() (see there). Synchronises config.stream on
/// CUDA; the workspace must be on `device`. On the CPU, decode() rejects bad data up front and
/// this returns OK.
Status check_data_errors(Workspace workspace, Device device, const ExecConfig& config);

/// Scatter new tokens into the paged cache: kv_cache[slot / page_size, slot % page_size] =
/// concat(kv_c[t], k_pe[t]) for slot = slot_mapping[t] >= 0; slot == -1 is padding and skipped.
/// fp8 formats quantise (round to nearest even, saturating at +-448: finite input never gives a
/// NaN code): fp8_e4m3 stores e4m3(x / scale) with the given scale; fp8_ds_mla computes each
/// token's 4 scales as amax / 448 of its 128-value blocks (amax clamped below at 1e-4), or that
/// rounded up to a power of two with ds_mla_pow2_scale, and stores the RoPE part as bf16.
struct KvCacheWriteParams {
  TensorView kv_c;          ///< [T, 512] bf16/fp16
  TensorView k_pe;          ///< [T, 64], same dtype as kv_c
  TensorView slot_mapping;  ///< [T] int64
  TensorView kv_cache;      ///< [num_pages, page_size, 576], same dtype as kv_c; fp8 formats as
                            ///< in DecodeParams::kv_cache.
  KvFormat kv_format = KvFormat::kSameAsQ;  ///< As in DecodeParams.
  float kv_scale = 1.0f;                    ///< As in DecodeParams.
  TensorView kv_scale_tensor;               ///< As in DecodeParams.
  /// fp8_ds_mla only: round each scale up to a power of two (DeepSeek's reference quantiser).
  bool ds_mla_pow2_scale = false;
};

/// CPU: slots outside [-1, num_pages * page_size) are rejected before anything is written.
/// CUDA: such slots are skipped (never written out of bounds). fp8_e4m3 with a kv_scale_tensor
/// whose value is not finite and > 0: the CPU returns kDataError and writes nothing; CUDA (which
/// reads it on the device) writes every row it would have written as the NaN code 0x7F.
Status write_kv_cache(const KvCacheWriteParams& params, const ExecConfig& config);

/// Merge two partial attention results over disjoint key sets by their LSEs (natural log):
///   lse = ln(exp(lse_a) + exp(lse_b)), out = (exp(lse_a - lse) out_a + exp(lse_b - lse) out_b).
/// -inf marks an empty part: it contributes nothing; both empty gives out = 0, lse = -inf.
struct MergeParams {
  TensorView out_a;  ///< [T, H, D] bf16/fp16/fp32
  TensorView lse_a;  ///< [T, H] fp32, any strides
  TensorView out_b;  ///< [T, H, D], same dtype as out_a
  TensorView lse_b;  ///< [T, H] fp32
  TensorView out;    ///< [T, H, D], same dtype as out_a. Written in full.
  TensorView lse;    ///< Optional [T, H] fp32. Written in full when present.
};

Status merge_states(const MergeParams& params, const ExecConfig& config);

/// Largest number of selected tokens per query token (topk) sparse_decode() accepts.
inline constexpr int kMaxTopK = 4096;

/// Sparse decode arguments (DeepSeek sparse attention): each query token attends to the cache
/// slots an indexer chose for it, not to a block table's prefix. No block table and no causal
/// rule: the indexer decided. Shapes use batch B, query tokens S (s_q), heads H (h_q), and
/// K = topk (1..kMaxTopK).
///
/// Semantics (natural-log LSE): for request b, query token s, head h, the selected entries are
///   J(b, s) = { k < n_b : indices[b,s,k] != -1 },  n_b = topk_lengths ? topk_lengths[b] : K
/// (entries at k >= n_b are never read, whatever they hold). With slot = indices[b,s,k],
/// V[slot] = kv_cache[slot / page_size, slot % page_size] and
///   logit[k] = softmax_scale * dot(q[b,s,h,0:576], V[slot, 0:576])   for k in J
///   Z        = sum_{k in J} exp(logit[k]) + (attn_sink ? exp(attn_sink[h]) : 0)
///   out[b,s,h,:] = sum_{k in J} exp(logit[k]) * V[slot, 0:512] / Z
///   lse[b,s,h]   = ln(Z)                    (the sink's term INCLUDED)
/// The sink is a per-head logit of a token whose value is zero: it only enlarges Z. The
/// returned lse includes it, so lse is the normaliser of `out` (out * exp(lse) is the
/// unnormalised sum). Two results with a sink cannot be merged by merge_states() without
/// counting the sink twice: to merge partial results, decode them without attn_sink.
/// Duplicated slots count once per occurrence, as the formula says; the order of the entries
/// does not matter. Empty rows (J empty: all entries -1, or topk_lengths[b] == 0): out = 0 and
/// lse = -inf; with a sink, out = 0 and lse = attn_sink[h] (the lse of the sink alone).
/// Data errors: an entry of J below -1 or at or beyond num_pages * page_size, or a
/// topk_lengths[b] outside [0, K]. CPU: rejected with kDataError before anything is written.
/// CUDA (checked on the device, never read out of bounds): the rows of every query token with a
/// bad entry (all of request b's for a bad topk_lengths[b]) are written as NaN (out and lse), and
/// check_data_errors() reports the first bad request.
/// The cache takes every KvFormat of decode(), with the same layouts and scales (V above is the
/// dequantised cache). CUDA serves bf16/fp16 caches only so far: a CUDA call with an fp8 format
/// returns kUnsupported naming kv_format, and nothing is launched or written.
/// out and lse must not share memory with any other argument.
struct SparseDecodeParams {
  TensorView q;                ///< [B, S, H, 576] bf16/fp16; or q_nope [B, S, H, 512] with q_pe.
  TensorView q_pe;             ///< Optional [B, S, H, 64], same dtype as q.
  TensorView kv_cache;         ///< [num_pages, page_size, 576], same dtype as q; for fp8 formats
                               ///< uint8 [.., 576] (fp8_e4m3) or [.., 656] (fp8_ds_mla).
  TensorView indices;          ///< [B, S, K] int32: slot = page * page_size + offset, -1 = none.
  TensorView topk_lengths;     ///< Optional [B] int32: only the first topk_lengths[b] entries of
                               ///< request b count.
  TensorView attn_sink;        ///< Optional [H] fp32: per-head sink logit (natural-log domain).
  TensorView out;              ///< [B, S, H, 512], same dtype as q. Written in full.
  TensorView lse;              ///< Optional [B, S, H] fp32, any strides. Written in full if given.
  float softmax_scale = 0.0f;  ///< Must be finite and > 0.
  /// Storage of kv_cache, as in DecodeParams. V above is the dequantised cache; q, out and lse
  /// keep their types.
  KvFormat kv_format = KvFormat::kSameAsQ;
  /// fp8_e4m3 only: the per-tensor scale (dequantised = stored * kv_scale), finite and > 0.
  /// Must stay 1 for the other formats.
  float kv_scale = 1.0f;
  /// fp8_e4m3 only, optional: a one-element fp32 tensor [1] on the call's device holding the
  /// scale (as vLLM passes k_scale); when present it replaces kv_scale (which must stay 1).
  /// On the CPU a value that is not finite and > 0 is a kDataError, and nothing is written.
  TensorView kv_scale_tensor;
};

/// Shapes that decide the sparse workspace size.
struct SparseDecodeShape {
  int64_t batch = 0;
  int64_t s_q = 1;
  int64_t h_q = 0;
  int64_t topk = 1;
};

/// Bytes of workspace sparse_decode() needs on `device` for these shapes (CPU: depends on
/// config.num_threads too; the reference needs none; CUDA: on the device's SM count and shared
/// memory too, never on indices or topk_lengths, so a call is CUDA-graph capturable).
Status sparse_workspace_size(const SparseDecodeShape& shape, Device device,
                             const ExecConfig& config, size_t* bytes);

/// Sparse decode (see SparseDecodeParams). Writes every element of out (and lse when given).
/// CUDA: asynchronous on config.stream (no host synchronisation); each call resets the
/// workspace's error flags, which check_data_errors() then reports. A dense plan() held by the
/// same workspace is lost (decode_planned() on it reports a missing plan).
Status sparse_decode(const SparseDecodeParams& params, Workspace workspace,
                     const ExecConfig& config);

/// Whether this build has the CUDA backend compiled in.
bool cuda_available_in_build();
/// Number of CUDA devices usable now (0 without a driver, a device or the CUDA backend).
int cuda_device_count();

}  // namespace mla
