// mla::Decoder: workspace and step metadata owned for the engine, on any device. The
// per-device memory (pinned staging and async uploads on CUDA) sits behind DecoderMemory.
#include "mla/decoder.h"

#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "core/decoder_backend.h"
#include "core/status.h"

namespace mla {
namespace {

using detail::invalid_argument;
using detail::with_context;

// A status of mla::plan / decode_planned / check_data_errors, reported as the Decoder method's:
// "mla::plan: argument 'q': ..." becomes "mla::Decoder::decode: argument 'q': ...".
Status as_method(const char* method, const char* inner, const Status& s) {
  if (s.ok()) return s;
  const std::string prefix = std::string(inner) + ": ";
  if (s.message().compare(0, prefix.size(), prefix) == 0) {
    return Status(s.code(), std::string(method) + ": " + s.message().substr(prefix.size()));
  }
  return with_context(method, s);
}

// CPU: the "device" metadata is host memory the step is written into directly.
class HostMemory final : public detail::DecoderMemory {
 public:
  HostMemory(size_t workspace_bytes, size_t metadata_bytes)
      : workspace_storage_(workspace_bytes + kAlign),
        workspace_bytes_(workspace_bytes),
        metadata_(metadata_bytes / sizeof(int32_t)) {}

  Workspace workspace() const override {
    // decode() requires kWorkspaceAlignment; vector storage guarantees only max_align_t.
    const uintptr_t base = reinterpret_cast<uintptr_t>(workspace_storage_.data());
    const uintptr_t aligned = (base + kAlign - 1) / kAlign * kAlign;
    return Workspace{reinterpret_cast<void*>(aligned), workspace_bytes_};
  }
  int32_t* metadata() const override { return const_cast<int32_t*>(metadata_.data()); }
  Status acquire_staging(void*, int32_t** host) override {
    *host = metadata_.data();
    return Status();
  }
  Status upload(size_t, void*) override { return Status(); }

 private:
  static constexpr size_t kAlign = kWorkspaceAlignment;
  std::vector<unsigned char> workspace_storage_;
  size_t workspace_bytes_;
  std::vector<int32_t> metadata_;
};

}  // namespace

// Metadata layout, in int32 elements, identical in staging and on the device:
//   [0, max_batch)                         seq_lens
//   [table_offset, + batch * pages_per_seq)  block table, rows packed pages_per_seq apart
// table_offset is max_batch rounded up to 16 bytes. Both parts travel in one copy.
struct Decoder::Impl {
  DecoderConfig config;
  std::unique_ptr<detail::DecoderMemory> memory;
  int64_t table_offset = 0;
  // The current step; batch < 0 until the first successful begin_step().
  int64_t batch = -1;
  int64_t pages_per_seq = 0;
  bool planned = false;  // plan() ran (or was captured) for the current step
};

Decoder::Decoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Decoder::~Decoder() = default;

const DecoderConfig& Decoder::config() const { return impl_->config; }

Status Decoder::create(const DecoderConfig& config, std::unique_ptr<Decoder>* decoder) {
  const char* fn = "mla::Decoder::create";
  if (decoder == nullptr) return invalid_argument(fn, "decoder", "null pointer");
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  if (config.max_batch < 1 || config.max_batch > kInt32Max) {
    return invalid_argument(fn, "config.max_batch",
                            "must be in [1, 2^31 - 1], got " + std::to_string(config.max_batch));
  }
  if (config.max_pages_per_seq < 1 || config.max_pages_per_seq > kInt32Max) {
    return invalid_argument(
        fn, "config.max_pages_per_seq",
        "must be in [1, 2^31 - 1], got " + std::to_string(config.max_pages_per_seq));
  }
  if (config.max_batch * config.max_pages_per_seq > kInt32Max) {
    return invalid_argument(fn, "config.max_pages_per_seq",
                            "max_batch * max_pages_per_seq = " +
                                std::to_string(config.max_batch * config.max_pages_per_seq) +
                                " block-table entries exceed 2^31 - 1");
  }
  ExecConfig exec;
  exec.num_threads = config.num_threads;
  size_t workspace_bytes = 0;
  if (Status s = workspace_size(DecodeShape{config.max_batch, config.s_q, config.h_q},
                                config.device, exec, &workspace_bytes);
      !s.ok()) {
    return with_context(fn, s);
  }
  const int64_t table_offset = (config.max_batch + 3) / 4 * 4;
  const size_t metadata_bytes =
      static_cast<size_t>(table_offset + config.max_batch * config.max_pages_per_seq) *
      sizeof(int32_t);
  try {
    auto impl = std::make_unique<Impl>();
    impl->config = config;
    impl->table_offset = table_offset;
    if (config.device.type == DeviceType::kCUDA) {
      if (Status s = detail::make_cuda_decoder_memory(config.device.index, workspace_bytes,
                                                      metadata_bytes, &impl->memory);
          !s.ok()) {
        return with_context(fn, s);
      }
    } else {
      impl->memory = std::make_unique<HostMemory>(workspace_bytes, metadata_bytes);
    }
    decoder->reset(new Decoder(std::move(impl)));
  } catch (const std::bad_alloc&) {
    return Status(StatusCode::kInternal,
                  std::string(fn) + ": out of host memory for the workspace (" +
                      std::to_string(workspace_bytes) + " bytes) and metadata (" +
                      std::to_string(metadata_bytes) + " bytes)");
  }
  return Status();
}

Status Decoder::begin_step(const StepMetadata& step, void* stream) {
  const char* fn = "mla::Decoder::begin_step";
  Impl& d = *impl_;
  // A failed begin_step leaves no step: decode() must not run on half-replaced metadata.
  d.batch = -1;
  if (step.batch < 0 || step.batch > d.config.max_batch) {
    return invalid_argument(fn, "step.batch",
                            "must be in [0, max_batch = " + std::to_string(d.config.max_batch) +
                                "], got " + std::to_string(step.batch));
  }
  if (step.batch == 0) {
    // Nothing to upload; decode() of an empty batch writes nothing.
    d.batch = 0;
    d.pages_per_seq = 1;
    d.planned = false;
    return Status();
  }
  if (step.seq_lens == nullptr) return invalid_argument(fn, "step.seq_lens", "null pointer");
  if (step.block_table == nullptr) return invalid_argument(fn, "step.block_table", "null pointer");
  if (step.pages_per_seq < 1 || step.pages_per_seq > d.config.max_pages_per_seq) {
    return invalid_argument(
        fn, "step.pages_per_seq",
        "must be in [1, max_pages_per_seq = " + std::to_string(d.config.max_pages_per_seq) +
            "], got " + std::to_string(step.pages_per_seq));
  }
  const int64_t stride =
      step.block_table_stride == 0 ? step.pages_per_seq : step.block_table_stride;
  if (stride < step.pages_per_seq) {
    return invalid_argument(fn, "step.block_table_stride",
                            std::to_string(stride) + " is smaller than pages_per_seq = " +
                                std::to_string(step.pages_per_seq) + " (rows would overlap)");
  }

  int32_t* staging = nullptr;
  if (Status s = d.memory->acquire_staging(stream, &staging); !s.ok()) {
    return with_context(fn, s);
  }
  std::memcpy(staging, step.seq_lens, static_cast<size_t>(step.batch) * sizeof(int32_t));
  int32_t* table = staging + d.table_offset;
  const size_t row_bytes = static_cast<size_t>(step.pages_per_seq) * sizeof(int32_t);
  if (stride == step.pages_per_seq) {
    std::memcpy(table, step.block_table, static_cast<size_t>(step.batch) * row_bytes);
  } else {
    for (int64_t b = 0; b < step.batch; ++b) {
      std::memcpy(table + b * step.pages_per_seq, step.block_table + b * stride, row_bytes);
    }
  }
  const size_t bytes =
      static_cast<size_t>(d.table_offset + step.batch * step.pages_per_seq) * sizeof(int32_t);
  if (Status s = d.memory->upload(bytes, stream); !s.ok()) {
    return with_context(fn, s);
  }
  d.batch = step.batch;
  d.pages_per_seq = step.pages_per_seq;
  d.planned = false;
  return Status();
}

Status Decoder::decode(const LayerParams& layer, void* stream) {
  const char* fn = "mla::Decoder::decode";
  Impl& d = *impl_;
  if (d.batch < 0) {
    return Status(
        StatusCode::kInvalidArgument,
        std::string(fn) + ": no step: call begin_step() first (or again after it failed)");
  }
  if (layer.q.ndim >= 1 && layer.q.shape[0] != d.batch) {
    return invalid_argument(fn, "layer.q", "batch (dimension 0) is ", layer.q.shape[0],
                            " but the step has ", d.batch, " requests");
  }
  int32_t* metadata = d.memory->metadata();
  DecodeParams params;
  params.q = layer.q;
  params.q_pe = layer.q_pe;
  params.kv_cache = layer.kv_cache;
  params.out = layer.out;
  params.lse = layer.lse;
  params.softmax_scale = layer.softmax_scale;
  params.causal = layer.causal;
  params.seq_lens = make_tensor(metadata, DType::kInt32, {d.batch}, d.config.device);
  params.block_table = make_tensor(metadata + d.table_offset, DType::kInt32,
                                   {d.batch, d.pages_per_seq}, d.config.device);
  ExecConfig exec;
  exec.stream = stream;
  exec.num_threads = d.config.num_threads;
  const Workspace workspace = d.memory->workspace();
  if (!d.planned) {
    if (Status s = plan(params, workspace, exec); !s.ok()) return as_method(fn, "mla::plan", s);
    d.planned = true;
  }
  return as_method(fn, "mla::decode_planned", decode_planned(params, workspace, exec));
}

Status Decoder::check_data_errors(void* stream) {
  ExecConfig exec;
  exec.stream = stream;
  exec.num_threads = impl_->config.num_threads;
  return as_method("mla::Decoder::check_data_errors", "mla::check_data_errors",
                   mla::check_data_errors(impl_->memory->workspace(), impl_->config.device, exec));
}

}  // namespace mla
