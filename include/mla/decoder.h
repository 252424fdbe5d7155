// mla::Decoder: the decode backend object for C++ serving engines.
//
// Plain C++17; no CUDA headers. A Decoder owns what an engine would otherwise manage around
// mla::plan() / mla::decode_planned(): the workspace, sized once for the largest step, and the
// step's metadata (block table and seq_lens) on the device. On CUDA the metadata travels from
// pinned host staging with asynchronous copies on the caller's stream, so a step never blocks
// the host and never performs a pageable copy. Every call returns a Status and never throws.
//
// Typical use, one model step:
//
//   decoder->begin_step(step_metadata, stream);       // host arrays -> device, async
//   for (each layer) decoder->decode(layer, stream);  // the first also plans the step
//
// CUDA graphs: the calls to decode() that follow a begin_step() are capturable (the first one
// captures the step's plan too). Replay such a graph after a fresh begin_step() outside the
// capture: the graph reads the Decoder's device metadata buffers, whose addresses never change,
// so each replay sees the seq_lens and block table uploaded last. Keep `batch` and
// `pages_per_seq` equal to those of the captured step (pad with seq_len 0 rows).
#pragma once

#include <cstdint>
#include <memory>

#include "mla/mla.h"

namespace mla {

/// The limits a Decoder is created for. They size its workspace and metadata buffers.
struct DecoderConfig {
  Device device{};                ///< Where decode runs; the Decoder's buffers live there.
  int64_t max_batch = 0;          ///< Largest batch of any step (>= 1).
  int64_t s_q = 1;                ///< Query tokens per request, in [1, kMaxSeqQ].
  int64_t h_q = 0;                ///< Query heads, in [1, kMaxHeadsQ].
  int64_t max_pages_per_seq = 0;  ///< Widest block-table row of any step (>= 1).
  int num_threads = 0;            ///< CPU: worker threads (0 = all hardware threads).
};

/// One step's metadata, in host memory (any memory the host can read; it is copied during
/// begin_step() and may be reused as soon as that returns).
struct StepMetadata {
  int64_t batch = 0;                     ///< Requests in this step, in [0, max_batch].
  const int32_t* seq_lens = nullptr;     ///< [batch]: cached tokens per request, this step's
                                         ///< new tokens included.
  const int32_t* block_table = nullptr;  ///< [batch, pages_per_seq] page ids, rows
                                         ///< `block_table_stride` elements apart.
  int64_t pages_per_seq = 0;             ///< Block-table row width, in [1, max_pages_per_seq].
  int64_t block_table_stride = 0;        ///< Elements between rows; 0 means pages_per_seq.
};

/// One layer's tensors; the step's block table and seq_lens come from the Decoder. The
/// semantics, layouts and the full-write contract are those of mla::DecodeParams.
struct LayerParams {
  TensorView q;         ///< [batch, s_q, h_q, 576]; or q_nope [batch, s_q, h_q, 512] with q_pe.
  TensorView q_pe;      ///< Optional [batch, s_q, h_q, 64].
  TensorView kv_cache;  ///< [num_pages, page_size, 576] of this layer.
  TensorView out;       ///< [batch, s_q, h_q, 512]. Written in full.
  TensorView lse;       ///< Optional [batch, s_q, h_q] fp32 (natural log). Written in full.
  float softmax_scale = 0.0f;  ///< Finite and > 0.
  bool causal = false;         ///< Causal rule among the s_q query tokens of a request.
};

/// Decode backend for one device and fixed maximum shapes. Not thread-safe: drive one Decoder
/// from one host thread, and keep its calls of one step on one stream (or order the streams),
/// because every step reuses the same device metadata buffers.
class Decoder {
 public:
  /// Allocates the workspace (mla::workspace_size for max_batch, s_q, h_q) and the metadata
  /// buffers; on CUDA also two pinned staging buffers and their events. `*decoder` is set
  /// only on success.
  static Status create(const DecoderConfig& config, std::unique_ptr<Decoder>* decoder);
  /// Waits for this Decoder's own pending uploads, then frees its memory. Work that still reads
  /// the workspace must have completed (or be on a stream that the caller synchronises first).
  ~Decoder();
  Decoder(const Decoder&) = delete;
  Decoder& operator=(const Decoder&) = delete;

  /// Starts a step: copies the host metadata into staging and, on CUDA, uploads it with one
  /// cudaMemcpyAsync on `stream` (a cudaStream_t; nullptr = legacy default stream). Never
  /// synchronises the stream; it waits on the host only in the rare case that the staging
  /// buffer it reuses (from two steps earlier) is still being copied. Must not be called while
  /// `stream` is being captured into a CUDA graph (the staging buffers alternate between
  /// steps, so a captured copy would replay from a stale buffer): that returns kInvalidArgument.
  /// Nothing is validated against the cache here; decode() reports bad metadata (see
  /// check_data_errors()).
  Status begin_step(const StepMetadata& step, void* stream);

  /// Decodes one layer of the current step on `stream`. The first decode() after
  /// begin_step() also computes the step's split-KV schedule (mla::plan); later layers reuse it
  /// (mla::decode_planned), so all layers of a step must share `batch`, s_q and h_q.
  /// Argument errors name the argument and leave nothing launched or written.
  Status decode(const LayerParams& layer, void* stream);

  /// Reports data errors the device found since the step's plan (negative seq_len, seq_len
  /// beyond the block table, page id outside the cache) as kDataError naming the first bad
  /// request. Synchronises `stream` on CUDA; on the CPU, decode() rejects bad data itself.
  Status check_data_errors(void* stream);

  /// The limits this Decoder was created with.
  const DecoderConfig& config() const;

 private:
  struct Impl;
  explicit Decoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mla
