// mla_decode._C: nanobind bindings over the public C++ API (include/mla/mla.h).
//
// Arrays arrive through DLPack (torch, cupy, jax) or the buffer protocol (numpy) and become
// mla::TensorView without a copy. numpy has no bfloat16 of its own: an ml_dtypes.bfloat16 array
// exports neither DLPack nor a buffer, so it is read through a uint16 view of the same memory.
// A failed Status raises the matching class of mla_decode.errors with the library's message.
// The GIL is released while the library runs. Nothing here allocates a caller-visible tensor:
// the Python layer (mla_decode/__init__.py) does that with the caller's framework.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "mla/mla.h"

namespace nb = nanobind;

namespace {

const char* error_class_name(mla::StatusCode code) {
  switch (code) {
    case mla::StatusCode::kInvalidArgument:
      return "InvalidArgumentError";
    case mla::StatusCode::kUnsupported:
      return "UnsupportedError";
    case mla::StatusCode::kDataError:
      return "DataError";
    case mla::StatusCode::kCudaError:
      return "CudaError";
    case mla::StatusCode::kOk:
    case mla::StatusCode::kInternal:
      break;
  }
  return "InternalError";
}

[[noreturn]] void raise_error(mla::StatusCode code, const std::string& message) {
  nb::object cls = nb::module_::import_("mla_decode.errors").attr(error_class_name(code));
  PyErr_SetString(cls.ptr(), message.c_str());
  throw nb::python_error();
}

[[noreturn]] void raise_invalid(const char* fn, const char* name, const std::string& what) {
  raise_error(mla::StatusCode::kInvalidArgument,
              std::string(fn) + ": argument '" + name + "': " + what);
}

void check(const mla::Status& status) {
  if (!status.ok()) raise_error(status.code(), status.message());
}

std::string describe_dtype(nb::dlpack::dtype dt) {
  const char* kind = "";
  switch (static_cast<nb::dlpack::dtype_code>(dt.code)) {
    case nb::dlpack::dtype_code::Int:
      kind = "int";
      break;
    case nb::dlpack::dtype_code::UInt:
      kind = "uint";
      break;
    case nb::dlpack::dtype_code::Float:
      kind = "float";
      break;
    case nb::dlpack::dtype_code::Bfloat:
      kind = "bfloat";
      break;
    case nb::dlpack::dtype_code::Complex:
      kind = "complex";
      break;
    case nb::dlpack::dtype_code::Bool:
      kind = "bool";
      break;
    default:
      return "DLPack type code " + std::to_string(dt.code);
  }
  return kind + std::to_string(dt.bits) + (dt.lanes != 1 ? "x" + std::to_string(dt.lanes) : "");
}

bool to_mla_dtype(nb::dlpack::dtype dt, mla::DType* out) {
  if (dt.lanes != 1) return false;
  const auto code = static_cast<nb::dlpack::dtype_code>(dt.code);
  if (code == nb::dlpack::dtype_code::Bfloat && dt.bits == 16) {
    *out = mla::DType::kBFloat16;
  } else if (code == nb::dlpack::dtype_code::Float && dt.bits == 16) {
    *out = mla::DType::kFloat16;
  } else if (code == nb::dlpack::dtype_code::Float && dt.bits == 32) {
    *out = mla::DType::kFloat32;
  } else if (code == nb::dlpack::dtype_code::Int && dt.bits == 32) {
    *out = mla::DType::kInt32;
  } else if (code == nb::dlpack::dtype_code::Int && dt.bits == 64) {
    *out = mla::DType::kInt64;
  } else if (code == nb::dlpack::dtype_code::UInt && dt.bits == 8) {
    *out = mla::DType::kUInt8;
  } else {
    return false;
  }
  return true;
}

std::string device_string(mla::Device d) {
  return d.type == mla::DeviceType::kCPU ? std::string("cpu") : "cuda:" + std::to_string(d.index);
}

bool same_device(mla::Device a, mla::Device b) {
  return a.type == b.type && (a.type == mla::DeviceType::kCPU || a.index == b.index);
}

// The arrays of one call: imports them (keeping each alive until the call returns) and turns
// them into views. Required array arguments are bound with .none() so that None reaches
// import_array() and raises InvalidArgumentError naming the argument, not nanobind's TypeError.
// Errors name the argument as the library does ("fn: argument 'name': ...").
class Call {
 public:
  explicit Call(const char* fn) : fn_(fn) {}

  const char* fn() const { return fn_; }

  mla::TensorView input(const char* name, nb::handle obj) {
    bool bf16 = false;
    inputs_.push_back(import_array<nb::ndarray<nb::ro>>(name, obj, &bf16));
    const nb::ndarray<nb::ro>& array = inputs_.back();
    return view(name, array, bf16);
  }

  mla::TensorView output(const char* name, nb::handle obj) {
    bool bf16 = false;
    outputs_.push_back(import_array<nb::ndarray<>>(name, obj, &bf16));
    const nb::ndarray<>& array = outputs_.back();
    return view(name, array, bf16);
  }

  mla::TensorView optional_input(const char* name, nb::handle obj) {
    return obj.is_none() ? mla::TensorView{} : input(name, obj);
  }

  mla::TensorView optional_output(const char* name, nb::handle obj) {
    return obj.is_none() ? mla::TensorView{} : output(name, obj);
  }

  // Scratch memory (the workspace): any densely packed array on `device`, or on its own device
  // when `device` is null, counted in bytes.
  mla::Workspace buffer(const char* name, nb::handle obj, const mla::Device* device,
                        mla::Device* found) {
    bool bf16 = false;
    outputs_.push_back(import_array<nb::ndarray<>>(name, obj, &bf16));
    const nb::ndarray<>& array = outputs_.back();
    mla::TensorView t;
    fill_geometry(name, array, &t);
    int64_t expected_stride = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      if (t.shape[i] > 1 && t.strides[i] != expected_stride) {
        raise_invalid(fn_, name, "must be densely packed (C-contiguous)");
      }
      expected_stride *= t.shape[i];
    }
    if (device != nullptr && !same_device(t.device, *device)) {
      raise_invalid(
          fn_, name,
          "is on " + device_string(t.device) + " but the call runs on " + device_string(*device));
    }
    *found = t.device;
    return mla::Workspace{data_of(array), array.nbytes()};
  }

 private:
  // "module.name" of an object's type, e.g. "numpy.ndarray" (just "list" for built-ins).
  static std::string type_name(nb::handle obj) {
    nb::handle type = obj.type();
    const std::string module = nb::cast<std::string>(nb::str(type.attr("__module__")));
    const std::string name = nb::cast<std::string>(nb::str(type.attr("__name__")));
    return module == "builtins" ? name : module + "." + name;
  }

  // numpy arrays of ml_dtypes.bfloat16 are reinterpreted as uint16 (same memory, same strides),
  // those of ml_dtypes.float8_e4m3fn as uint8 (fp8 KV caches are passed as bytes).
  static nb::object importable(nb::handle obj, bool* bf16) {
    if (type_name(obj) == "numpy.ndarray") {
      nb::str name = nb::str(obj.attr("dtype").attr("name"));
      if (name.equal(nb::str("bfloat16"))) {
        *bf16 = true;
        return obj.attr("view")("uint16");
      }
      if (name.equal(nb::str("float8_e4m3fn"))) return obj.attr("view")("uint8");
    }
    return nb::borrow(obj);
  }

  // Imports obj as a read-only (nb::ndarray<nb::ro>) or writable (nb::ndarray<>) array.
  template <typename Array>
  Array import_array(const char* name, nb::handle obj, bool* bf16) const {
    if (obj.is_none()) raise_invalid(fn_, name, "is required but None was given");
    nb::object source = importable(obj, bf16);
    Array array;
    if (!nb::try_cast(source, array)) {
      constexpr bool kWritable = std::is_same_v<Array, nb::ndarray<>>;
      raise_invalid(fn_, name,
                    "cannot use a " + type_name(obj) +
                        (kWritable ? " as a writable array" : " as an array") +
                        " (expected an object with __dlpack__ or the buffer protocol: a numpy, "
                        "torch, cupy or jax array; torch tensors that require grad must be "
                        "detached)");
    }
    return array;
  }

  template <typename Array>
  void fill_geometry(const char* name, const Array& array, mla::TensorView* t) const {
    const size_t ndim = array.ndim();
    if (ndim < 1 || ndim > static_cast<size_t>(mla::kMaxDims)) {
      raise_invalid(fn_, name,
                    "expected an array with 1 to " + std::to_string(mla::kMaxDims) +
                        " dimensions, got " + std::to_string(ndim));
    }
    t->ndim = static_cast<int>(ndim);
    for (size_t i = 0; i < ndim; ++i) {
      t->shape[i] = static_cast<int64_t>(array.shape(i));
      t->strides[i] = array.stride(i);
    }
    if (array.device_type() == nb::device::cpu::value) {
      t->device = mla::Device{mla::DeviceType::kCPU, 0};
    } else if (array.device_type() == nb::device::cuda::value) {
      t->device = mla::Device{mla::DeviceType::kCUDA, array.device_id()};
    } else {
      raise_invalid(fn_, name,
                    "DLPack device type " + std::to_string(array.device_type()) +
                        " is not supported (cpu or cuda)");
    }
  }

  // The first element (DLPack's data + byte_offset). Inputs are only read through it; the const
  // qualification of data() differs between nanobind versions.
  template <typename Array>
  static void* data_of(const Array& array) {
    return const_cast<void*>(static_cast<const void*>(array.data()));
  }

  template <typename Array>
  mla::TensorView view(const char* name, const Array& array, bool bf16) const {
    mla::TensorView t;
    fill_geometry(name, array, &t);
    t.data = data_of(array);
    if (bf16) {
      t.dtype = mla::DType::kBFloat16;
    } else if (!to_mla_dtype(array.dtype(), &t.dtype)) {
      raise_invalid(
          fn_, name,
          "unsupported dtype " + describe_dtype(array.dtype()) +
              " (expected bfloat16, float16, float32, int32, int64 or uint8 as the call needs)");
    }
    return t;
  }

  const char* fn_;
  std::vector<nb::ndarray<nb::ro>> inputs_;
  std::vector<nb::ndarray<>> outputs_;
};

mla::ExecConfig exec_config(int num_threads, bool reference, uintptr_t stream) {
  mla::ExecConfig config;
  config.stream = reinterpret_cast<void*>(stream);
  config.num_threads = num_threads;
  config.reference = reference;
  return config;
}

enum class Stage { kDecode, kPlan, kDecodePlanned };

// "same_as_q", "fp8_e4m3" or "fp8_ds_mla" (mla::kv_format_name's spellings).
mla::KvFormat parse_kv_format(const char* fn, const std::string& name) {
  for (mla::KvFormat f :
       {mla::KvFormat::kSameAsQ, mla::KvFormat::kFp8E4M3, mla::KvFormat::kFp8DsMla}) {
    if (name == mla::kv_format_name(f)) return f;
  }
  raise_invalid(fn, "kv_format",
                "expected 'same_as_q', 'fp8_e4m3' or 'fp8_ds_mla', got '" + name + "'");
}

// kv_scale: None (1), a Python number (the host float) or a one-element float32 array (the
// scale tensor, read by the library on the call's device).
void set_kv_scale(Call& call, nb::handle kv_scale, float* value, mla::TensorView* tensor) {
  if (kv_scale.is_none()) return;
  if (PyFloat_Check(kv_scale.ptr()) || PyLong_Check(kv_scale.ptr())) {
    *value = nb::cast<float>(kv_scale);
    return;
  }
  *tensor = call.input("kv_scale", kv_scale);
}

void decode_stage(Stage stage, nb::handle q, nb::handle kv_cache, nb::handle block_table,
                  nb::handle seq_lens, float softmax_scale, nb::handle out, nb::handle workspace,
                  nb::handle q_pe, nb::handle lse, bool causal, const std::string& kv_format,
                  nb::handle kv_scale, int num_threads, bool reference, uintptr_t stream) {
  Call call(stage == Stage::kDecode ? "mla::decode"
            : stage == Stage::kPlan ? "mla::plan"
                                    : "mla::decode_planned");
  mla::DecodeParams params;
  params.q = call.input("q", q);
  params.q_pe = call.optional_input("q_pe", q_pe);
  params.kv_cache = call.input("kv_cache", kv_cache);
  params.block_table = call.input("block_table", block_table);
  params.seq_lens = call.input("seq_lens", seq_lens);
  params.out = call.output("out", out);
  params.lse = call.optional_output("lse", lse);
  params.softmax_scale = softmax_scale;
  params.causal = causal;
  params.kv_format = parse_kv_format(call.fn(), kv_format);
  set_kv_scale(call, kv_scale, &params.kv_scale, &params.kv_scale_tensor);
  mla::Device device;
  const mla::Workspace ws = call.buffer("workspace", workspace, &params.q.device, &device);
  if (reference && params.q.device.type != mla::DeviceType::kCPU) {
    raise_invalid(call.fn(), "reference", "the reference implementation runs on the CPU only");
  }
  const mla::ExecConfig config = exec_config(num_threads, reference, stream);
  mla::Status status;
  {
    nb::gil_scoped_release release;
    switch (stage) {
      case Stage::kDecode:
        status = mla::decode(params, ws, config);
        break;
      case Stage::kPlan:
        status = mla::plan(params, ws, config);
        break;
      case Stage::kDecodePlanned:
        status = mla::decode_planned(params, ws, config);
        break;
    }
  }
  check(status);
}

void bind_decode_stage(nb::module_& m, const char* name, Stage stage, const char* doc) {
  m.def(
      name,
      [stage](nb::handle q, nb::handle kv_cache, nb::handle block_table, nb::handle seq_lens,
              float softmax_scale, nb::handle out, nb::handle workspace, nb::handle q_pe,
              nb::handle lse, bool causal, const std::string& kv_format, nb::handle kv_scale,
              int num_threads, bool reference, uintptr_t stream) {
        decode_stage(stage, q, kv_cache, block_table, seq_lens, softmax_scale, out, workspace, q_pe,
                     lse, causal, kv_format, kv_scale, num_threads, reference, stream);
      },
      nb::arg("q").none(), nb::arg("kv_cache").none(), nb::arg("block_table").none(),
      nb::arg("seq_lens").none(), nb::arg("softmax_scale"), nb::arg("out").none(),
      nb::arg("workspace").none(), nb::kw_only(), nb::arg("q_pe") = nb::none(),
      nb::arg("lse") = nb::none(), nb::arg("causal") = false, nb::arg("kv_format") = "same_as_q",
      nb::arg("kv_scale") = nb::none(), nb::arg("num_threads") = 0, nb::arg("reference") = false,
      nb::arg("stream") = 0, doc);
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "Low-level bindings of the mla-decode C++ library; use the mla_decode package.";

  m.attr("HEAD_DIM_QK") = mla::kHeadDimQK;
  m.attr("HEAD_DIM_V") = mla::kHeadDimV;
  m.attr("HEAD_DIM_ROPE") = mla::kHeadDimRope;
  m.attr("MAX_HEADS_Q") = mla::kMaxHeadsQ;
  m.attr("MAX_SEQ_Q") = mla::kMaxSeqQ;
  m.attr("MAX_PAGE_SIZE") = mla::kMaxPageSize;
  m.attr("WORKSPACE_ALIGNMENT") = mla::kWorkspaceAlignment;

  m.def(
      "workspace_size",
      [](int64_t batch, int64_t s_q, int64_t h_q, bool cuda, int device_index, int num_threads) {
        mla::Device device{cuda ? mla::DeviceType::kCUDA : mla::DeviceType::kCPU,
                           cuda ? device_index : 0};
        size_t bytes = 0;
        mla::Status status;
        {
          nb::gil_scoped_release release;
          status = mla::workspace_size(mla::DecodeShape{batch, s_q, h_q}, device,
                                       exec_config(num_threads, false, 0), &bytes);
        }
        check(status);
        return bytes;
      },
      nb::arg("batch"), nb::arg("s_q"), nb::arg("h_q"), nb::kw_only(), nb::arg("cuda"),
      nb::arg("device_index"), nb::arg("num_threads"),
      "Bytes of workspace decode() needs for these shapes on the CPU or a CUDA device.");

  bind_decode_stage(m, "decode", Stage::kDecode, "mla::decode: plan, then decode.");
  bind_decode_stage(m, "plan", Stage::kPlan,
                    "mla::plan: compute the split-KV schedule of one step into the workspace.");
  bind_decode_stage(m, "decode_planned", Stage::kDecodePlanned,
                    "mla::decode_planned: decode with the schedule of the last plan().");

  m.def(
      "check_data_errors",
      [](nb::handle workspace, uintptr_t stream) {
        Call call("mla::check_data_errors");
        mla::Device device;
        const mla::Workspace ws = call.buffer("workspace", workspace, nullptr, &device);
        mla::Status status;
        {
          nb::gil_scoped_release release;
          status = mla::check_data_errors(ws, device, exec_config(0, false, stream));
        }
        check(status);
      },
      nb::arg("workspace").none(), nb::kw_only(), nb::arg("stream") = 0,
      "Raise DataError if the device found bad seq_lens / block_table data since the last plan.");

  m.def(
      "write_kv_cache",
      [](nb::handle kv_c, nb::handle k_pe, nb::handle slot_mapping, nb::handle kv_cache,
         const std::string& kv_format, nb::handle kv_scale, bool ds_mla_pow2_scale,
         uintptr_t stream) {
        Call call("mla::write_kv_cache");
        mla::KvCacheWriteParams params;
        params.kv_c = call.input("kv_c", kv_c);
        params.k_pe = call.input("k_pe", k_pe);
        params.slot_mapping = call.input("slot_mapping", slot_mapping);
        params.kv_cache = call.output("kv_cache", kv_cache);
        params.kv_format = parse_kv_format(call.fn(), kv_format);
        set_kv_scale(call, kv_scale, &params.kv_scale, &params.kv_scale_tensor);
        params.ds_mla_pow2_scale = ds_mla_pow2_scale;
        mla::Status status;
        {
          nb::gil_scoped_release release;
          status = mla::write_kv_cache(params, exec_config(0, false, stream));
        }
        check(status);
      },
      nb::arg("kv_c").none(), nb::arg("k_pe").none(), nb::arg("slot_mapping").none(),
      nb::arg("kv_cache").none(), nb::kw_only(), nb::arg("kv_format") = "same_as_q",
      nb::arg("kv_scale") = nb::none(), nb::arg("ds_mla_pow2_scale") = false, nb::arg("stream") = 0,
      "Scatter new tokens into the paged cache by slot_mapping (-1 = padding, skipped); "
      "quantises into fp8 caches.");

  m.def(
      "merge_states",
      [](nb::handle out_a, nb::handle lse_a, nb::handle out_b, nb::handle lse_b, nb::handle out,
         nb::handle lse, uintptr_t stream) {
        Call call("mla::merge_states");
        mla::MergeParams params;
        params.out_a = call.input("out_a", out_a);
        params.lse_a = call.input("lse_a", lse_a);
        params.out_b = call.input("out_b", out_b);
        params.lse_b = call.input("lse_b", lse_b);
        params.out = call.output("out", out);
        params.lse = call.optional_output("lse", lse);
        mla::Status status;
        {
          nb::gil_scoped_release release;
          status = mla::merge_states(params, exec_config(0, false, stream));
        }
        check(status);
      },
      nb::arg("out_a").none(), nb::arg("lse_a").none(), nb::arg("out_b").none(),
      nb::arg("lse_b").none(), nb::arg("out").none(), nb::kw_only(), nb::arg("lse") = nb::none(),
      nb::arg("stream") = 0,
      "Merge two partial attention results by their natural-log LSEs (-inf = empty part).");

  m.attr("MAX_TOPK") = mla::kMaxTopK;
  m.def(
      "sparse_workspace_size",
      [](int64_t batch, int64_t s_q, int64_t h_q, int64_t topk, bool cuda, int device_index,
         int num_threads) {
        mla::Device device{cuda ? mla::DeviceType::kCUDA : mla::DeviceType::kCPU,
                           cuda ? device_index : 0};
        size_t bytes = 0;
        mla::Status status;
        {
          nb::gil_scoped_release release;
          status = mla::sparse_workspace_size(mla::SparseDecodeShape{batch, s_q, h_q, topk}, device,
                                              exec_config(num_threads, false, 0), &bytes);
        }
        check(status);
        return bytes;
      },
      nb::arg("batch"), nb::arg("s_q"), nb::arg("h_q"), nb::arg("topk"), nb::kw_only(),
      nb::arg("cuda"), nb::arg("device_index"), nb::arg("num_threads"),
      "Bytes of workspace sparse_decode() needs for these shapes on the device.");

  m.def(
      "sparse_decode",
      [](nb::handle q, nb::handle kv_cache, nb::handle indices, float softmax_scale, nb::handle out,
         nb::handle workspace, nb::handle q_pe, nb::handle topk_lengths, nb::handle attn_sink,
         nb::handle lse, const std::string& kv_format, nb::handle kv_scale, int num_threads,
         bool reference, uintptr_t stream) {
        Call call("mla::sparse_decode");
        mla::SparseDecodeParams params;
        params.q = call.input("q", q);
        params.q_pe = call.optional_input("q_pe", q_pe);
        params.kv_cache = call.input("kv_cache", kv_cache);
        params.indices = call.input("indices", indices);
        params.topk_lengths = call.optional_input("topk_lengths", topk_lengths);
        params.attn_sink = call.optional_input("attn_sink", attn_sink);
        params.out = call.output("out", out);
        params.lse = call.optional_output("lse", lse);
        params.softmax_scale = softmax_scale;
        params.kv_format = parse_kv_format(call.fn(), kv_format);
        set_kv_scale(call, kv_scale, &params.kv_scale, &params.kv_scale_tensor);
        mla::Device device;
        const mla::Workspace ws = call.buffer("workspace", workspace, &params.q.device, &device);
        if (reference && params.q.device.type != mla::DeviceType::kCPU) {
          raise_invalid(call.fn(), "reference",
                        "the reference implementation runs on the CPU only");
        }
        mla::Status status;
        {
          nb::gil_scoped_release release;
          status = mla::sparse_decode(params, ws, exec_config(num_threads, reference, stream));
        }
        check(status);
      },
      nb::arg("q").none(), nb::arg("kv_cache").none(), nb::arg("indices").none(),
      nb::arg("softmax_scale"), nb::arg("out").none(), nb::arg("workspace").none(), nb::kw_only(),
      nb::arg("q_pe") = nb::none(), nb::arg("topk_lengths") = nb::none(),
      nb::arg("attn_sink") = nb::none(), nb::arg("lse") = nb::none(),
      nb::arg("kv_format") = "same_as_q", nb::arg("kv_scale") = nb::none(),
      nb::arg("num_threads") = 0, nb::arg("reference") = false, nb::arg("stream") = 0,
      "mla::sparse_decode: attention over the cache slots in indices (-1 = none).");

  m.def(
      "data_ptr",
      [](nb::handle array) {
        Call call("mla_decode.data_ptr");
        mla::Device device;
        return reinterpret_cast<uintptr_t>(call.buffer("array", array, nullptr, &device).data);
      },
      nb::arg("array").none(),
      "Address of a densely packed array's first byte, as the library sees it.");

  m.def("cuda_available_in_build", &mla::cuda_available_in_build,
        "Whether this build has the CUDA backend compiled in.");
  m.def("cuda_device_count", &mla::cuda_device_count,
        "Number of CUDA devices usable now (0 without a driver, a device or the CUDA backend).");
}
