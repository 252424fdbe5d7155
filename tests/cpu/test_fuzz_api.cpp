// Randomized, hostile calls of every host entry point: workspace_size, plan, decode_planned,
// decode, check_data_errors, write_kv_cache, merge_states and mla::Decoder.
//
// Each call starts from a random valid problem on real host buffers and gets zero to three
// adversarial mutations: wrong ranks, negative or huge extents and strides, null and misaligned
// pointers, wrong dtypes, tensors on a CUDA device or an unknown one, bad softmax scales, outputs
// that overlap inputs or themselves, short, null or misaligned workspaces, negative thread counts,
// and bad seq_lens, page ids and slots. What every call must do:
//   - not crash, and (in the ASan/UBSan build) cause no sanitizer report: every view's memory is
//     an allocation of exactly the bytes the view spans, so any access outside it is caught;
//   - be rejected when a mutation made it invalid, with a message that starts with the entry
//     point's name, and then leave every buffer (outputs, inputs, workspace) byte for byte as it
//     was;
//   - when accepted, write every element of its outputs and nothing else (padding between rows
//     and every input keep their bytes); decode results agree with the reference.
// Some mutations keep a call valid on purpose: a cache view with more pages than its memory holds
// (pages past the live ones must never be read), a broadcast input, another thread count.
//
// MLA_FUZZ_SEED picks another seed (default fixed); MLA_FUZZ_ITERATIONS the number of calls per
// entry point.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "harness.h"
#include "mla/decoder.h"

namespace mla::testing {
namespace {

using Rng = std::mt19937_64;
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();
constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();

uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v == nullptr || *v == '\0' ? fallback : std::strtoull(v, nullptr, 0);
}

uint64_t fuzz_seed() { return env_u64("MLA_FUZZ_SEED", 20261129); }
int iterations(int fallback) { return static_cast<int>(env_u64("MLA_FUZZ_ITERATIONS", fallback)); }

int64_t pick(Rng& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}
bool chance(Rng& rng, double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }
template <typename T>
T one_of(Rng& rng, std::initializer_list<T> values) {
  return *(values.begin() + pick(rng, 0, static_cast<int64_t>(values.size()) - 1));
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

uintptr_t address(const void* p) { return reinterpret_cast<uintptr_t>(p); }
void* at_address(uintptr_t a) { return reinterpret_cast<void*>(a); }

// ---------------------------------------------------------------------------------------------
// Tensor arguments backed by memory of exactly their span.

bool sane(const TensorView& t) {
  if (t.ndim < 1 || t.ndim > kMaxDims) return false;
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] < 0 || t.shape[i] > (int64_t{1} << 32)) return false;
    if (t.strides[i] < 0 || t.strides[i] > (int64_t{1} << 32)) return false;
  }
  return true;
}

bool empty_view(const TensorView& t) {
  for (int i = 0; i < std::min(t.ndim, kMaxDims); ++i) {
    if (t.shape[i] == 0) return true;
  }
  return false;
}

// Bytes from the first element to the end of the last; 0 for an empty view. `t` must be sane.
int64_t span_bytes(const TensorView& t) {
  if (empty_view(t)) return 0;
  int64_t last = 0;
  for (int i = 0; i < t.ndim; ++i) last += (t.shape[i] - 1) * t.strides[i];
  return (last + 1) * static_cast<int64_t>(dtype_size(t.dtype));
}

// Calls f(element offset, linear index) for every element of a sane view, in row-major order.
template <typename F>
void for_each_element(const TensorView& t, F&& f) {
  if (empty_view(t)) return;
  int64_t e[kMaxDims] = {1, 1, 1, 1}, s[kMaxDims] = {0, 0, 0, 0};
  for (int i = 0; i < t.ndim; ++i) {
    e[i] = t.shape[i];
    s[i] = t.strides[i];
  }
  int64_t n = 0;
  for (int64_t i0 = 0; i0 < e[0]; ++i0)
    for (int64_t i1 = 0; i1 < e[1]; ++i1)
      for (int64_t i2 = 0; i2 < e[2]; ++i2)
        for (int64_t i3 = 0; i3 < e[3]; ++i3) f(i0 * s[0] + i1 * s[1] + i2 * s[2] + i3 * s[3], n++);
}

struct Arg {
  std::string name;
  bool output = false;
  std::vector<unsigned char> mem;  // exactly span_bytes() of the view as generated
  TensorView view;                 // generated view; params may carry a mutated copy
  std::vector<unsigned char> saved;

  void save() { saved = mem; }
  bool unchanged() const { return saved == mem; }
};

// A view of `shape` whose last dimension is contiguous (or, with `any_order`, any dimension may
// be innermost), other dimensions in a random order, each padded at random; memory of exactly
// its span, zeroed (inputs) or 0xff-filled (outputs: NaN in every float type).
void make_arg(Rng& rng, Arg& a, const char* name, DType dtype, std::vector<int64_t> shape,
              bool output, bool any_order = false) {
  a.name = name;
  a.output = output;
  TensorView& t = a.view;
  t = TensorView{};
  t.dtype = dtype;
  t.ndim = static_cast<int>(shape.size());
  std::vector<int> order;  // innermost first
  for (int i = t.ndim - 1; i >= 0; --i) order.push_back(i);
  if (any_order) {
    std::shuffle(order.begin(), order.end(), rng);
  } else if (order.size() > 2 && chance(rng, 0.3)) {
    std::shuffle(order.begin() + 1, order.end(), rng);
  }
  int64_t stride = 1;
  const bool pad = chance(rng, 0.4);
  for (int d : order) {
    t.shape[d] = shape[d];
    t.strides[d] = stride;
    stride *= std::max<int64_t>(shape[d], 1) + (pad ? pick(rng, 0, 3) : 0);
  }
  a.mem.assign(static_cast<size_t>(span_bytes(t)), output ? 0xff : 0);
  t.data = a.mem.empty() ? nullptr : a.mem.data();
}

uint16_t to_half(DType dtype, float v) {
  return dtype == DType::kBFloat16 ? detail::float_to_bf16(v) : detail::float_to_fp16(v);
}
float from_half(DType dtype, uint16_t h) {
  return dtype == DType::kBFloat16 ? detail::bf16_to_float(h) : detail::fp16_to_float(h);
}

// Random values in [-1, 1] for every element of a floating-point argument.
void fill_random(Rng& rng, Arg& a) {
  std::uniform_real_distribution<float> dist(-1, 1);
  unsigned char* base = a.mem.data();
  for_each_element(a.view, [&](int64_t off, int64_t) {
    if (a.view.dtype == DType::kFloat32) {
      const float v = dist(rng);
      std::memcpy(base + off * 4, &v, 4);
    } else {
      const uint16_t h = to_half(a.view.dtype, dist(rng));
      std::memcpy(base + off * 2, &h, 2);
    }
  });
}

template <typename T>
T& element(Arg& a, int64_t off) {
  return reinterpret_cast<T*>(a.mem.data())[off];
}

// Every element of an output written (no NaN left: valid inputs never produce one) and every
// byte outside its elements unchanged. Returns an empty string or the first defect.
std::string check_output(const Arg& a) {
  std::vector<bool> covered(a.mem.size(), false);
  const size_t esize = dtype_size(a.view.dtype);
  std::string defect;
  for_each_element(a.view, [&](int64_t off, int64_t n) {
    const unsigned char* p = a.mem.data() + off * esize;
    for (size_t b = 0; b < esize; ++b) covered[off * esize + b] = true;
    float v = 0;
    if (esize == 4) {
      std::memcpy(&v, p, 4);
    } else {
      uint16_t h = 0;
      std::memcpy(&h, p, 2);
      v = from_half(a.view.dtype, h);
    }
    if (std::isnan(v) && defect.empty()) {
      defect = a.name + ": element " + std::to_string(n) + " not written (NaN)";
    }
  });
  for (size_t i = 0; i < a.mem.size() && defect.empty(); ++i) {
    if (!covered[i] && a.mem[i] != a.saved[i]) {
      defect = a.name + ": byte " + std::to_string(i) + " outside the view was written";
    }
  }
  return defect;
}

// ---------------------------------------------------------------------------------------------
// Mutations. Each returns true when it certainly makes the call invalid.

struct Mutation {
  bool invalid = false;
  std::string what;
  std::vector<const void*> touched;  // views already mutated: a second change could undo the first

  bool first_touch(const void* view) {
    if (std::find(touched.begin(), touched.end(), view) != touched.end()) return false;
    touched.push_back(view);
    return true;
  }
  void add(bool certain, const std::string& w) {
    invalid = invalid || certain;
    what += (what.empty() ? "" : "; ") + w;
  }
};

// One structural mutation of `t`, a view of argument `name`. `absent_ok`: ndim 0 keeps the call
// valid (an optional argument). `output`: a zero stride makes the view alias itself.
void mutate_view(Rng& rng, TensorView& t, const std::string& name, bool absent_ok, bool output,
                 Mutation* m) {
  if (!m->first_touch(&t)) return;
  const bool empty = empty_view(t);
  // A dimension to change, inside shape[] and strides[] even after an earlier ndim mutation.
  const int d = static_cast<int>(pick(rng, 0, std::clamp(t.ndim, 1, kMaxDims) - 1));
  switch (pick(rng, 0, 9)) {
    case 0: {
      int ndim = one_of<int>(rng, {-1, 0, 1, 2, 3, 4, 5, 64, kI32Min});
      if (ndim == t.ndim) ndim = -7;
      t.ndim = ndim;
      m->add(!(ndim == 0 && absent_ok), name + ".ndim = " + std::to_string(ndim));
      break;
    }
    case 1:
      t.shape[d] = one_of<int64_t>(rng, {-1, -(int64_t{1} << 31), kI64Min});
      m->add(true, name + ".shape[" + std::to_string(d) + "] = " + std::to_string(t.shape[d]));
      break;
    case 2:
      t.shape[d] = one_of<int64_t>(
          rng, {int64_t{1} << 31, int64_t{1} << 40, int64_t{1} << 62, kI64Max, kI64Max - 1});
      m->add(true, name + ".shape[" + std::to_string(d) + "] = " + std::to_string(t.shape[d]));
      break;
    case 3:
      t.strides[d] = one_of<int64_t>(rng, {int64_t{1} << 60, int64_t{1} << 62, kI64Max});
      m->add(t.shape[d] > 1 && !empty,
             name + ".strides[" + std::to_string(d) + "] = " + std::to_string(t.strides[d]));
      break;
    case 4:
      t.strides[d] = one_of<int64_t>(rng, {-1, -576, kI64Min});
      m->add(true, name + ".strides[" + std::to_string(d) + "] = " + std::to_string(t.strides[d]));
      break;
    case 5:
      t.data = nullptr;
      m->add(!empty, name + ".data = null");
      break;
    case 6:
      // Odd offsets: misaligned for every element size >= 2. Only once: two would realign.
      if (address(t.data) % 2 != 0) break;
      t.data = at_address(address(t.data) + one_of<uintptr_t>(rng, {1, 3}));
      m->add(!empty, name + ".data misaligned");
      break;
    case 7: {
      DType dt = one_of<DType>(rng, {DType::kBFloat16, DType::kFloat16, DType::kFloat32,
                                     DType::kInt32, DType::kInt64, static_cast<DType>(42)});
      if (dt == t.dtype) dt = static_cast<DType>(-3);
      t.dtype = dt;
      m->add(true, name + ".dtype = " + std::to_string(static_cast<int>(dt)));
      break;
    }
    case 8: {
      Device dev =
          one_of<Device>(rng, {Device{DeviceType::kCUDA, 0}, Device{DeviceType::kCUDA, 1},
                               Device{DeviceType::kCUDA, -1}, Device{static_cast<DeviceType>(0), 0},
                               Device{static_cast<DeviceType>(7), 0}});
      t.device = dev;
      // Judged by device_verdict() once every mutation is made.
      m->add(false, name + ".device = " + std::to_string(static_cast<int>(dev.type)) + ":" +
                        std::to_string(dev.index));
      break;
    }
    default:
      // A zero stride: an input is read broadcast (still inside its memory), an output aliases
      // itself.
      if (d == t.ndim - 1 && t.ndim > 1) break;
      t.strides[d] = 0;
      m->add(output && t.shape[d] > 1 && !empty && t.ndim > 0,
             name + ".strides[" + std::to_string(d) + "] = 0");
      break;
  }
}

// Address range [begin, end) of a view, or {0, 0} when it is not sane or empty.
std::pair<uintptr_t, uintptr_t> range_of(const TensorView& t) {
  if (!sane(t) || empty_view(t) || t.data == nullptr) return {0, 0};
  return {address(t.data), address(t.data) + static_cast<uintptr_t>(span_bytes(t))};
}

// Points output view `out` 16 * k bytes into the range of `other` (a view the call also gets),
// so the two certainly overlap. Applied after every other mutation, so nothing moves them apart
// again; skipped where the call could not see an overlap (an absent, empty or broken view).
void alias_into(Rng& rng, TensorView& out, const TensorView& other, const std::string& name,
                const std::string& other_name, Mutation* m) {
  const auto ro = range_of(out), rt = range_of(other);
  if (ro.first == ro.second || rt.first == rt.second || !other.present()) return;
  const uintptr_t steps = (rt.second - rt.first - 1) / 16;
  out.data = at_address(rt.first + 16 * static_cast<uintptr_t>(pick(rng, 0, steps)));
  m->add(true, name + " points into " + other_name);
}

bool same_device(Device a, Device b) {
  return a.type == b.type && (a.type == DeviceType::kCPU || a.index == b.index);
}

// Whether the devices of a call's present views make it certainly fail: mixed devices, an unknown
// device type, a negative CUDA index, or (without a GPU) a CUDA call that reaches the device
// check, which `reaches_device` says (empty write_kv_cache and merge_states calls return first).
void device_verdict(std::initializer_list<const TensorView*> views, bool reaches_device,
                    Mutation* m) {
  const TensorView* first = nullptr;
  for (const TensorView* v : views) {
    if (!v->present()) continue;
    if (first == nullptr) {
      first = v;
    } else if (!same_device(v->device, first->device)) {
      m->add(true, "(devices differ)");
      return;
    }
  }
  if (first == nullptr) return;
  const Device d = first->device;
  if (d.type != DeviceType::kCPU && d.type != DeviceType::kCUDA) {
    m->add(true, "(unknown device type)");
  } else if (d.type == DeviceType::kCUDA &&
             (d.index < 0 || (reaches_device && d.index >= cuda_device_count()))) {
    m->add(true, "(no such CUDA device)");
  }
}

// Every failure detail an assertion prints: the seed, the iteration and the mutations.
std::string context(uint64_t seed, int iter, const Mutation& m) {
  return "seed " + std::to_string(seed) + ", iteration " + std::to_string(iter) + ": " +
         (m.what.empty() ? std::string("no mutation") : m.what);
}

// A rejected call: a proper code and the entry point's name first.
void expect_proper_rejection(const Status& s, const std::string& fn, const std::string& ctx) {
  EXPECT_NE(s.code(), StatusCode::kInternal) << ctx << ": " << s.message();
  EXPECT_TRUE(starts_with(s.message(), fn + ": "))
      << ctx << ": message does not start with \"" << fn << ": \": " << s.message();
}

// Memory of `bytes` aligned to kWorkspaceAlignment, exactly that size (ASan sees its end).
struct AlignedBuffer {
  struct Free {
    void operator()(void* p) const { ::operator delete (p, std::align_val_t{kWorkspaceAlignment}); }
  };
  std::unique_ptr<void, Free> ptr;
  size_t bytes = 0;
  explicit AlignedBuffer(size_t n)
      : ptr(n == 0 ? nullptr : ::operator new (n, std::align_val_t{kWorkspaceAlignment})),
        bytes(n) {
    if (n > 0) std::memset(ptr.get(), 0xff, n);
  }
  std::vector<unsigned char> snapshot() const {
    const auto* p = static_cast<const unsigned char*>(ptr.get());
    return bytes == 0 ? std::vector<unsigned char>() : std::vector<unsigned char>(p, p + bytes);
  }
};

bool gpu_present() { return cuda_device_count() > 0; }

// ---------------------------------------------------------------------------------------------
// Decode.

struct DecodeSetup {
  int64_t batch = 0, s_q = 1, h_q = 1, page_size = 1, num_pages = 0, max_pages = 1;
  DType dtype = DType::kBFloat16;
  bool split_q = false, has_lse = false;
  Arg q, q_pe, kv, bt, sl, out, lse;
  std::vector<int32_t> lens;  // seq_lens as generated
  DecodeParams params;

  std::vector<Arg*> args() { return {&q, &q_pe, &kv, &bt, &sl, &out, &lse}; }
};

// A random valid problem; batch < 0 picks one.
void make_decode_setup(Rng& rng, DecodeSetup& s, int64_t batch = -1, int64_t s_q = -1,
                       int64_t h_q = -1, int64_t max_pages = -1) {
  s.batch = batch >= 0 ? batch : pick(rng, 0, 3);
  s.s_q = s_q > 0 ? s_q : pick(rng, 1, 3);
  s.h_q = h_q > 0 ? h_q : one_of<int64_t>(rng, {1, 2, 3, 5, 8});
  s.page_size = one_of<int64_t>(rng, {1, 2, 4, 8, 16});
  s.max_pages = max_pages > 0 ? max_pages : pick(rng, 1, 4);
  s.num_pages = s.batch * s.max_pages + pick(rng, 0, 2);
  s.dtype = chance(rng, 0.5) ? DType::kBFloat16 : DType::kFloat16;
  s.split_q = chance(rng, 0.4);
  s.has_lse = chance(rng, 0.7);
  const int64_t qw = s.split_q ? kHeadDimV : kHeadDimQK;
  make_arg(rng, s.q, "q", s.dtype, {s.batch, s.s_q, s.h_q, qw}, false);
  fill_random(rng, s.q);
  if (s.split_q) {
    make_arg(rng, s.q_pe, "q_pe", s.dtype, {s.batch, s.s_q, s.h_q, kHeadDimRope}, false);
    fill_random(rng, s.q_pe);
  } else {
    s.q_pe = Arg{};
    s.q_pe.name = "q_pe";
  }
  make_arg(rng, s.kv, "kv_cache", s.dtype, {s.num_pages, s.page_size, kHeadDimQK}, false);
  fill_random(rng, s.kv);
  make_arg(rng, s.bt, "block_table", DType::kInt32, {s.batch, s.max_pages}, false);
  make_arg(rng, s.sl, "seq_lens", DType::kInt32, {s.batch}, false);
  s.lens.assign(static_cast<size_t>(s.batch), 0);
  const int64_t capacity = s.max_pages * s.page_size;
  for (int64_t b = 0; b < s.batch; ++b) {
    const int64_t len = chance(rng, 0.15) ? 0 : pick(rng, 1, capacity);
    s.lens[b] = static_cast<int32_t>(len);
    element<int32_t>(s.sl, b * s.sl.view.strides[0]) = static_cast<int32_t>(len);
    const int64_t live = (len + s.page_size - 1) / s.page_size;
    for (int64_t i = 0; i < s.max_pages; ++i) {
      element<int32_t>(s.bt, b * s.bt.view.strides[0] + i) =
          i < live ? static_cast<int32_t>(pick(rng, 0, s.num_pages - 1)) : kDeadPageId;
    }
  }
  make_arg(rng, s.out, "out", s.dtype, {s.batch, s.s_q, s.h_q, kHeadDimV}, true);
  if (s.has_lse) {
    make_arg(rng, s.lse, "lse", DType::kFloat32, {s.batch, s.s_q, s.h_q}, true, true);
  } else {
    s.lse = Arg{};
    s.lse.name = "lse";
  }
  DecodeParams& p = s.params;
  p = DecodeParams{};
  p.q = s.q.view;
  p.q_pe = s.q_pe.view;
  p.kv_cache = s.kv.view;
  p.block_table = s.bt.view;
  p.seq_lens = s.sl.view;
  p.out = s.out.view;
  p.lse = s.lse.view;
  p.softmax_scale = std::uniform_real_distribution<float>(0.02f, 0.5f)(rng);
  p.causal = chance(rng, 0.5);
}

// Mutations of decode's tensors and scalars (not the workspace or config). `layer_only`: only
// what mla::Decoder::decode takes from the caller (not block_table, seq_lens or their contents).
// Sets *alias when the outputs are to be pointed into another argument at the end.
void mutate_decode(Rng& rng, DecodeSetup& s, bool layer_only, bool* alias, Mutation* m) {
  DecodeParams& p = s.params;
  switch (pick(rng, 0, 7)) {
    case 0:
    case 1: {
      struct Target {
        TensorView* view;
        const char* name;
        bool absent_ok, output;
      };
      const Target targets[] = {{&p.q, "q", false, false},
                                {&p.q_pe, "q_pe", false, false},
                                {&p.kv_cache, "kv_cache", false, false},
                                {&p.block_table, "block_table", false, false},
                                {&p.seq_lens, "seq_lens", false, false},
                                {&p.out, "out", false, true},
                                {&p.lse, "lse", true, true}};
      const Target& t = targets[pick(rng, 0, 6)];
      if (!t.view->present()) break;
      if (layer_only && (t.view == &p.block_table || t.view == &p.seq_lens)) break;
      mutate_view(rng, *t.view, t.name, t.absent_ok, t.output, m);
      break;
    }
    case 2: {
      const float bad = one_of<float>(
          rng, {0.0f, -0.0f, -1.0f, std::nanf(""), std::numeric_limits<float>::infinity(),
                -std::numeric_limits<float>::infinity()});
      p.softmax_scale = bad;
      m->add(true, "softmax_scale = " + std::to_string(bad));
      break;
    }
    case 3:
      *alias = true;
      break;
    case 4: {
      // Data errors (CPU checks them before writing anything).
      if (layer_only || s.batch == 0 || !p.seq_lens.present()) break;
      const int64_t b = pick(rng, 0, s.batch - 1);
      const int64_t capacity = s.max_pages * s.page_size;
      if (chance(rng, 0.5) || s.lens[b] == 0) {
        const int64_t v = one_of<int64_t>(rng, {-1, capacity + 1, kI32Min, kI32Max});
        element<int32_t>(s.sl, b * s.sl.view.strides[0]) = static_cast<int32_t>(v);
        m->add(true, "seq_lens[" + std::to_string(b) + "] = " + std::to_string(v));
      } else {
        const int64_t live = (s.lens[b] + s.page_size - 1) / s.page_size;
        const int64_t i = pick(rng, 0, live - 1);
        // Not num_pages: another mutation may let kv_cache claim more pages than it has.
        const int32_t v = one_of<int32_t>(rng, {-1, kDeadPageId, kI32Min});
        element<int32_t>(s.bt, b * s.bt.view.strides[0] + i) = v;
        m->add(true, "block_table[" + std::to_string(b) + "][" + std::to_string(i) +
                         "] = " + std::to_string(v));
      }
      break;
    }
    case 5:
      // More pages than the memory holds: valid, and pages past the live ones are never read.
      if (p.kv_cache.shape[0] < 0 || p.kv_cache.shape[0] > (int64_t{1} << 40)) break;
      p.kv_cache.shape[0] += pick(rng, 1, 1000);
      m->add(false, "kv_cache claims " + std::to_string(p.kv_cache.shape[0]) + " pages");
      break;
    case 6:
      // Every tensor on a CUDA device. Without a GPU that is kUnsupported.
      if (gpu_present()) break;
      for (TensorView* t :
           {&p.q, &p.q_pe, &p.kv_cache, &p.block_table, &p.seq_lens, &p.out, &p.lse}) {
        t->device = Device{DeviceType::kCUDA, 0};
      }
      m->add(false, "every tensor on cuda:0");
      break;
    default:
      p.causal = !p.causal;
      m->add(false, "causal flipped");
      break;
  }
}

// Points out or lse into the memory of another argument of the call.
void alias_decode_output(Rng& rng, DecodeSetup& s, bool layer_only, Mutation* m) {
  DecodeParams& p = s.params;
  struct Other {
    const TensorView* view;
    const char* name;
  };
  std::vector<Other> others = {{&p.q, "q"}, {&p.q_pe, "q_pe"}, {&p.kv_cache, "kv_cache"}};
  if (!layer_only) {
    others.push_back({&p.block_table, "block_table"});
    others.push_back({&p.seq_lens, "seq_lens"});
  }
  if (p.lse.present() && chance(rng, 0.3)) {
    others.push_back({&p.out, "out"});
    const Other& o = others[pick(rng, 0, static_cast<int64_t>(others.size()) - 1)];
    alias_into(rng, p.lse, *o.view, "lse", o.name, m);
  } else {
    others.push_back({&p.lse, "lse"});
    const Other& o = others[pick(rng, 0, static_cast<int64_t>(others.size()) - 1)];
    alias_into(rng, p.out, *o.view, "out", o.name, m);
  }
}

// Compares an accepted decode's outputs with the reference run on the same inputs.
std::string compare_with_reference(DecodeSetup& s, const DecodeParams& p) {
  Arg ref_out = s.out, ref_lse = s.lse;
  std::fill(ref_out.mem.begin(), ref_out.mem.end(), 0xff);
  std::fill(ref_lse.mem.begin(), ref_lse.mem.end(), 0xff);
  DecodeParams rp = p;
  // A cache view claiming more pages than its memory holds reads the same pages; its claimed
  // range could overlap the reference's fresh outputs, so the reference sees the real count.
  rp.kv_cache.shape[0] = std::min(rp.kv_cache.shape[0], s.num_pages);
  rp.out.data = ref_out.mem.empty() ? nullptr : ref_out.mem.data();
  rp.lse.data = ref_lse.mem.empty() ? nullptr : ref_lse.mem.data();
  ExecConfig config;
  config.reference = true;
  const Status st = decode(rp, Workspace{}, config);
  if (!st.ok()) return "reference rejected the call: " + st.message();
  std::string defect;
  for_each_element(p.out, [&](int64_t off, int64_t n) {
    const float got = from_half(s.dtype, element<uint16_t>(s.out, off));
    const float want = from_half(s.dtype, element<uint16_t>(ref_out, off));
    if (defect.empty() && !(std::fabs(got - want) <= 2e-2f + 2e-2f * std::fabs(want))) {
      defect = "out element " + std::to_string(n) + ": " + std::to_string(got) + " vs reference " +
               std::to_string(want);
    }
  });
  if (p.lse.present()) {
    for_each_element(p.lse, [&](int64_t off, int64_t n) {
      const float got = element<float>(s.lse, off), want = element<float>(ref_lse, off);
      const bool same_inf = std::isinf(got) && got == want;
      if (defect.empty() && !same_inf &&
          !(std::fabs(got - want) <= 1e-3f + 1e-3f * std::fabs(want))) {
        defect = "lse element " + std::to_string(n) + ": " + std::to_string(got) +
                 " vs reference " + std::to_string(want);
      }
    });
  }
  return defect;
}

enum class Entry { kPlan, kDecodePlanned, kDecode };

TEST(FuzzApi, DecodeEntryPoints) {
  const uint64_t seed = fuzz_seed();
  Rng rng(seed);
  const int n = iterations(1500);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < n; ++iter) {
    DecodeSetup s;
    make_decode_setup(rng, s);
    ExecConfig config;
    config.num_threads = static_cast<int>(pick(rng, 0, 3));
    config.reference = chance(rng, 0.15);
    size_t bytes = 0;
    ASSERT_TRUE(
        workspace_size({std::max<int64_t>(s.batch, 0), s.s_q, s.h_q}, Device{}, config, &bytes)
            .ok());
    if (config.reference) bytes = 0;
    AlignedBuffer ws_mem(bytes);
    Workspace ws{ws_mem.ptr.get(), bytes};

    Mutation m;
    bool alias = false;
    const int mutations = static_cast<int>(one_of<int64_t>(rng, {0, 1, 1, 1, 2, 3}));
    for (int k = 0; k < mutations; ++k) {
      if (chance(rng, 0.8)) {
        mutate_decode(rng, s, false, &alias, &m);
        continue;
      }
      switch (pick(rng, 0, 4)) {
        case 0:
          // Judged below, against the final thread count.
          if (bytes > 0) {
            ws.bytes = bytes - static_cast<size_t>(pick(rng, 1, static_cast<int64_t>(bytes)));
            m.add(false, "workspace " + std::to_string(ws.bytes) + " bytes");
          }
          break;
        case 1:
          ws.data = nullptr;
          m.add(false, "workspace null");
          break;
        case 2:
          if (ws.data != nullptr && address(ws.data) % kWorkspaceAlignment == 0) {
            ws.data = at_address(address(ws.data) + one_of<uintptr_t>(rng, {4, 16, 64, 128}));
            m.add(true, "workspace misaligned");
          }
          break;
        case 3:
          // Judged below, against the final thread count.
          config.num_threads = one_of<int>(rng, {-1, kI32Min});
          m.add(false, "num_threads = " + std::to_string(config.num_threads));
          break;
        default:
          config.num_threads = static_cast<int>(pick(rng, 0, 4));  // may outgrow the workspace
          m.add(false, "num_threads changed to " + std::to_string(config.num_threads));
          break;
      }
    }
    if (alias) alias_decode_output(rng, s, false, &m);
    {
      const DecodeParams& p = s.params;
      device_verdict({&p.q, &p.q_pe, &p.kv_cache, &p.block_table, &p.seq_lens, &p.out, &p.lse},
                     true, &m);
    }
    if (config.num_threads < 0) {
      m.add(true, "(negative num_threads)");
    } else {
      size_t need = 0;
      ASSERT_TRUE(workspace_size({s.batch, s.s_q, s.h_q}, Device{}, config, &need).ok());
      if (config.reference) need = 0;
      if (ws.bytes < need || (need > 0 && ws.data == nullptr)) {
        m.add(true, "workspace short of the " + std::to_string(need) + " bytes required");
      }
    }
    const std::string ctx = context(seed, iter, m);
    for (Arg* a : s.args()) a->save();
    const std::vector<unsigned char> ws_before = ws_mem.snapshot();
    const Entry entry =
        one_of<Entry>(rng, {Entry::kPlan, Entry::kDecodePlanned, Entry::kDecode, Entry::kDecode});
    const char* fn = entry == Entry::kPlan            ? "mla::plan"
                     : entry == Entry::kDecodePlanned ? "mla::decode_planned"
                                                      : "mla::decode";
    const Status st = entry == Entry::kPlan            ? plan(s.params, ws, config)
                      : entry == Entry::kDecodePlanned ? decode_planned(s.params, ws, config)
                                                       : decode(s.params, ws, config);
    if (!st.ok()) {
      ++rejected;
      expect_proper_rejection(st, fn, ctx);
      for (Arg* a : s.args()) ASSERT_TRUE(a->unchanged()) << ctx << ": " << a->name << " written";
      ASSERT_TRUE(ws_mem.snapshot() == ws_before) << ctx << ": workspace written";
      continue;
    }
    ++accepted;
    ASSERT_FALSE(m.invalid) << ctx << ": accepted by " << fn;
    for (Arg* a : {&s.q, &s.q_pe, &s.kv, &s.bt, &s.sl}) {
      ASSERT_TRUE(a->unchanged()) << ctx << ": input " << a->name << " written";
    }
    if (entry == Entry::kPlan) {
      // A CPU plan is made inside each decode: plan() writes no output.
      ASSERT_TRUE(s.out.unchanged() && s.lse.unchanged()) << ctx << ": plan wrote an output";
      continue;
    }
    ASSERT_EQ(check_output(s.out), "") << ctx;
    if (s.params.lse.present()) {
      ASSERT_EQ(check_output(s.lse), "") << ctx;
    }
    if (!config.reference) {
      ASSERT_EQ(compare_with_reference(s, s.params), "") << ctx;
    }
  }
  // Both outcomes must be well represented, or the generator has drifted.
  EXPECT_GT(accepted, n / 5);
  EXPECT_GT(rejected, n / 5);
}

TEST(FuzzApi, WorkspaceSizeAndCheckDataErrors) {
  const uint64_t seed = fuzz_seed() + 1;
  Rng rng(seed);
  const int n = iterations(1500);
  const bool gpu = gpu_present();
  for (int iter = 0; iter < n; ++iter) {
    const auto extent = [&] {
      return one_of<int64_t>(rng, {kI64Min, -1, 0, 1, 2, 3, 16, 17, 64, 128, 129, int64_t{kI32Max},
                                   int64_t{1} << 31, kI64Max});
    };
    const DecodeShape shape{extent(), extent(), extent()};
    Device device{};
    if (chance(rng, 0.3)) {
      device =
          one_of<Device>(rng, {Device{DeviceType::kCUDA, 0}, Device{DeviceType::kCUDA, 3},
                               Device{DeviceType::kCUDA, -1}, Device{static_cast<DeviceType>(0), 0},
                               Device{static_cast<DeviceType>(9), 1}});
    }
    if (gpu && device.type == DeviceType::kCUDA) device = Device{};
    ExecConfig config;
    config.num_threads = one_of<int>(rng, {-1, 0, 1, 3, kI32Min});
    size_t bytes = 12345;
    const bool null_bytes = chance(rng, 0.05);
    const bool valid = !null_bytes && shape.batch >= 0 && shape.batch <= kI32Max &&
                       shape.s_q >= 1 && shape.s_q <= kMaxSeqQ && shape.h_q >= 1 &&
                       shape.h_q <= kMaxHeadsQ && config.num_threads >= 0 &&
                       device.type == DeviceType::kCPU;
    const std::string ctx =
        "seed " + std::to_string(seed) + ", iteration " + std::to_string(iter) + ": shape {" +
        std::to_string(shape.batch) + ", " + std::to_string(shape.s_q) + ", " +
        std::to_string(shape.h_q) + "}, device " + std::to_string(static_cast<int>(device.type)) +
        ":" + std::to_string(device.index) + ", threads " + std::to_string(config.num_threads);
    const Status st = workspace_size(shape, device, config, null_bytes ? nullptr : &bytes);
    ASSERT_EQ(st.ok(), valid) << ctx << ": " << st.message();
    if (!st.ok()) {
      expect_proper_rejection(st, "mla::workspace_size", ctx);
      EXPECT_EQ(bytes, 12345u) << ctx << ": bytes written by a rejected call";
    }

    // check_data_errors on any workspace: the CPU has nothing to report; CUDA without a device
    // is an error, never an access of the (host) workspace.
    AlignedBuffer ws_mem(static_cast<size_t>(pick(rng, 0, 1024)));
    Workspace ws{chance(rng, 0.2) ? nullptr : ws_mem.ptr.get(), ws_mem.bytes};
    const std::vector<unsigned char> ws_before = ws_mem.snapshot();
    const Status ce = check_data_errors(ws, device, config);
    if (device.type == DeviceType::kCUDA) {
      EXPECT_FALSE(ce.ok()) << ctx;
      expect_proper_rejection(ce, "mla::check_data_errors", ctx);
    } else if (device.type == DeviceType::kCPU) {
      EXPECT_TRUE(ce.ok()) << ctx << ": " << ce.message();
    }
    EXPECT_TRUE(ws_mem.snapshot() == ws_before) << ctx << ": workspace written";
  }
}

// ---------------------------------------------------------------------------------------------
// write_kv_cache.

TEST(FuzzApi, WriteKvCache) {
  const uint64_t seed = fuzz_seed() + 2;
  Rng rng(seed);
  const int n = iterations(1500);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < n; ++iter) {
    const DType dtype = chance(rng, 0.5) ? DType::kBFloat16 : DType::kFloat16;
    const int64_t page_size = one_of<int64_t>(rng, {1, 2, 4, 8});
    const int64_t num_pages = pick(rng, 0, 4);
    const int64_t capacity = num_pages * page_size;
    const int64_t tokens = pick(rng, 0, std::min<int64_t>(5, capacity + 2));
    Arg kv_c, k_pe, slots, cache;
    make_arg(rng, kv_c, "kv_c", dtype, {tokens, kHeadDimV}, false);
    make_arg(rng, k_pe, "k_pe", dtype, {tokens, kHeadDimRope}, false);
    make_arg(rng, slots, "slot_mapping", DType::kInt64, {tokens}, false);
    make_arg(rng, cache, "kv_cache", dtype, {num_pages, page_size, kHeadDimQK}, true);
    fill_random(rng, kv_c);
    fill_random(rng, k_pe);
    // Distinct slots (or -1), so the expected cache is well defined.
    std::vector<int64_t> free_slots(static_cast<size_t>(capacity));
    for (int64_t i = 0; i < capacity; ++i) free_slots[i] = i;
    std::shuffle(free_slots.begin(), free_slots.end(), rng);
    std::vector<int64_t> slot(static_cast<size_t>(tokens));
    for (int64_t t = 0; t < tokens; ++t) {
      slot[t] = t < capacity && chance(rng, 0.8) ? free_slots[t] : -1;
      element<int64_t>(slots, t * slots.view.strides[0]) = slot[t];
    }
    KvCacheWriteParams p;
    p.kv_c = kv_c.view;
    p.k_pe = k_pe.view;
    p.slot_mapping = slots.view;
    p.kv_cache = cache.view;

    Mutation m;
    bool alias = false;
    const int mutations = static_cast<int>(one_of<int64_t>(rng, {0, 1, 1, 1, 2}));
    for (int k = 0; k < mutations; ++k) {
      switch (pick(rng, 0, 5)) {
        case 0:
        case 1: {
          TensorView* views[] = {&p.kv_c, &p.k_pe, &p.slot_mapping, &p.kv_cache};
          const char* names[] = {"kv_c", "k_pe", "slot_mapping", "kv_cache"};
          const int i = static_cast<int>(pick(rng, 0, 3));
          mutate_view(rng, *views[i], names[i], false, i == 3, &m);
          break;
        }
        case 2:
          if (tokens > 0) {
            const int64_t t = pick(rng, 0, tokens - 1);
            // Not capacity: another mutation may let kv_cache claim more pages than it has.
            const int64_t v = one_of<int64_t>(rng, {-2, -1000, kI64Min, kI64Max});
            element<int64_t>(slots, t * slots.view.strides[0]) = v;
            m.add(true, "slot_mapping[" + std::to_string(t) + "] = " + std::to_string(v));
          }
          break;
        case 3:
          alias = true;
          break;
        case 4:
          // More pages than the memory holds: valid; only slot rows are written.
          if (p.kv_cache.shape[0] < 0 || p.kv_cache.shape[0] > (int64_t{1} << 40)) break;
          p.kv_cache.shape[0] += pick(rng, 1, 100);
          m.add(false, "kv_cache claims " + std::to_string(p.kv_cache.shape[0]) + " pages");
          break;
        default:
          if (gpu_present()) break;
          for (TensorView* t : {&p.kv_c, &p.k_pe, &p.slot_mapping, &p.kv_cache}) {
            t->device = Device{DeviceType::kCUDA, 0};
          }
          m.add(false, "every tensor on cuda:0");
          break;
      }
    }
    if (alias) {
      const TensorView* others[] = {&p.kv_c, &p.k_pe, &p.slot_mapping};
      const char* names[] = {"kv_c", "k_pe", "slot_mapping"};
      const int i = static_cast<int>(pick(rng, 0, 2));
      alias_into(rng, p.kv_cache, *others[i], "kv_cache", names[i], &m);
    }
    device_verdict({&p.kv_c, &p.k_pe, &p.slot_mapping, &p.kv_cache}, tokens > 0, &m);
    const std::string ctx = context(seed, iter, m);
    for (Arg* a : {&kv_c, &k_pe, &slots, &cache}) a->save();
    const Status st = write_kv_cache(p, ExecConfig{});
    if (!st.ok()) {
      ++rejected;
      expect_proper_rejection(st, "mla::write_kv_cache", ctx);
      for (Arg* a : {&kv_c, &k_pe, &slots, &cache}) {
        ASSERT_TRUE(a->unchanged()) << ctx << ": " << a->name << " written";
      }
      continue;
    }
    ++accepted;
    ASSERT_FALSE(m.invalid) << ctx << ": accepted";
    for (Arg* a : {&kv_c, &k_pe, &slots}) {
      ASSERT_TRUE(a->unchanged()) << ctx << ": input " << a->name << " written";
    }
    // The expected cache: the saved bytes with each slot's row replaced.
    std::vector<unsigned char> want = cache.saved;
    const TensorView& cv = cache.view;
    for (int64_t t = 0; t < tokens; ++t) {
      if (slot[t] < 0) continue;
      const int64_t row =
          (slot[t] / page_size) * cv.strides[0] + (slot[t] % page_size) * cv.strides[1];
      for (int64_t d = 0; d < kHeadDimQK; ++d) {
        const uint16_t v = d < kHeadDimV
                               ? element<uint16_t>(kv_c, t * p.kv_c.strides[0] + d)
                               : element<uint16_t>(k_pe, t * p.k_pe.strides[0] + d - kHeadDimV);
        std::memcpy(&want[(row + d) * 2], &v, 2);
      }
    }
    ASSERT_TRUE(want == cache.mem) << ctx << ": cache differs from the expected scatter";
  }
  EXPECT_GT(accepted, n / 5);
  EXPECT_GT(rejected, n / 5);
}

// ---------------------------------------------------------------------------------------------
// merge_states.

TEST(FuzzApi, MergeStates) {
  const uint64_t seed = fuzz_seed() + 3;
  Rng rng(seed);
  const int n = iterations(1500);
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < n; ++iter) {
    const DType dtype = one_of<DType>(rng, {DType::kBFloat16, DType::kFloat16, DType::kFloat32});
    const int64_t T = pick(rng, 0, 4), H = pick(rng, 0, 4), D = pick(rng, 1, 40);
    Arg out_a, lse_a, out_b, lse_b, out, lse;
    make_arg(rng, out_a, "out_a", dtype, {T, H, D}, false);
    make_arg(rng, out_b, "out_b", dtype, {T, H, D}, false);
    make_arg(rng, lse_a, "lse_a", DType::kFloat32, {T, H}, false, true);
    make_arg(rng, lse_b, "lse_b", DType::kFloat32, {T, H}, false, true);
    make_arg(rng, out, "out", dtype, {T, H, D}, true);
    const bool has_lse = chance(rng, 0.7);
    if (has_lse) make_arg(rng, lse, "lse", DType::kFloat32, {T, H}, true, true);
    fill_random(rng, out_a);
    fill_random(rng, out_b);
    for (Arg* l : {&lse_a, &lse_b}) {
      for_each_element(l->view, [&](int64_t off, int64_t) {
        element<float>(*l, off) = chance(rng, 0.25)
                                      ? -std::numeric_limits<float>::infinity()
                                      : std::uniform_real_distribution<float>(-20, 20)(rng);
      });
    }
    MergeParams p;
    p.out_a = out_a.view;
    p.lse_a = lse_a.view;
    p.out_b = out_b.view;
    p.lse_b = lse_b.view;
    p.out = out.view;
    p.lse = has_lse ? lse.view : TensorView{};

    Mutation m;
    bool alias = false;
    const int mutations = static_cast<int>(one_of<int64_t>(rng, {0, 1, 1, 1, 2}));
    for (int k = 0; k < mutations; ++k) {
      switch (pick(rng, 0, 3)) {
        case 0:
        case 1: {
          TensorView* views[] = {&p.out_a, &p.lse_a, &p.out_b, &p.lse_b, &p.out, &p.lse};
          const char* names[] = {"out_a", "lse_a", "out_b", "lse_b", "out", "lse"};
          const int i = static_cast<int>(pick(rng, 0, 5));
          if (!views[i]->present()) break;
          mutate_view(rng, *views[i], names[i], i == 5, i >= 4, &m);
          break;
        }
        case 2:
          alias = true;
          break;
        default:
          if (gpu_present()) break;
          for (TensorView* t : {&p.out_a, &p.lse_a, &p.out_b, &p.lse_b, &p.out, &p.lse}) {
            t->device = Device{DeviceType::kCUDA, 0};
          }
          m.add(false, "every tensor on cuda:0");
          break;
      }
    }
    if (alias) {
      const TensorView* others[] = {&p.out_a, &p.lse_a, &p.out_b, &p.lse_b, &p.lse, &p.out};
      const char* names[] = {"out_a", "lse_a", "out_b", "lse_b", "lse", "out"};
      if (p.lse.present() && chance(rng, 0.3)) {
        int i = static_cast<int>(pick(rng, 0, 4));
        if (i == 4) i = 5;
        alias_into(rng, p.lse, *others[i], "lse", names[i], &m);
      } else {
        const int i = static_cast<int>(pick(rng, 0, 4));
        alias_into(rng, p.out, *others[i], "out", names[i], &m);
      }
    }
    device_verdict({&p.out_a, &p.lse_a, &p.out_b, &p.lse_b, &p.out, &p.lse}, T > 0 && H > 0, &m);
    const std::string ctx = context(seed, iter, m);
    Arg* all[] = {&out_a, &lse_a, &out_b, &lse_b, &out, &lse};
    for (Arg* a : all) a->save();
    const Status st = merge_states(p, ExecConfig{});
    if (!st.ok()) {
      ++rejected;
      expect_proper_rejection(st, "mla::merge_states", ctx);
      for (Arg* a : all) ASSERT_TRUE(a->unchanged()) << ctx << ": " << a->name << " written";
      continue;
    }
    ++accepted;
    ASSERT_FALSE(m.invalid) << ctx << ": accepted";
    for (Arg* a : {&out_a, &lse_a, &out_b, &lse_b}) {
      ASSERT_TRUE(a->unchanged()) << ctx << ": input " << a->name << " written";
    }
    ASSERT_EQ(check_output(out), "") << ctx;
    if (p.lse.present()) {
      // lse may be -inf (both parts empty) but never NaN.
      ASSERT_EQ(check_output(lse), "") << ctx;
    }
  }
  EXPECT_GT(accepted, n / 5);
  EXPECT_GT(rejected, n / 5);
}

// ---------------------------------------------------------------------------------------------
// mla::Decoder.

TEST(FuzzApi, Decoder) {
  const uint64_t seed = fuzz_seed() + 4;
  Rng rng(seed);
  const int n = iterations(1500) / 5;
  int decoded = 0;
  for (int iter = 0; iter < n; ++iter) {
    DecoderConfig config;
    config.max_batch = pick(rng, 1, 4);
    config.s_q = pick(rng, 1, 2);
    config.h_q = one_of<int64_t>(rng, {1, 3, 4});
    config.max_pages_per_seq = pick(rng, 1, 4);
    config.num_threads = static_cast<int>(pick(rng, 0, 2));
    Mutation m;
    bool null_out = false;
    if (chance(rng, 0.3)) {
      switch (pick(rng, 0, 6)) {
        case 0:
          config.max_batch = one_of<int64_t>(rng, {0, -1, int64_t{1} << 31, kI64Max, kI64Min});
          m.add(true, "max_batch = " + std::to_string(config.max_batch));
          break;
        case 1:
          config.max_pages_per_seq = one_of<int64_t>(rng, {0, -5, int64_t{1} << 31, kI64Max});
          m.add(true, "max_pages_per_seq = " + std::to_string(config.max_pages_per_seq));
          break;
        case 2:
          config.s_q = one_of<int64_t>(rng, {0, -1, 17, kI64Max});
          m.add(true, "s_q = " + std::to_string(config.s_q));
          break;
        case 3:
          config.h_q = one_of<int64_t>(rng, {0, -1, 129, kI64Min});
          m.add(true, "h_q = " + std::to_string(config.h_q));
          break;
        case 4:
          config.num_threads = -1;
          m.add(true, "num_threads = -1");
          break;
        case 5:
          if (gpu_present()) break;
          config.device = one_of<Device>(
              rng, {Device{DeviceType::kCUDA, 0}, Device{static_cast<DeviceType>(5), 0}});
          m.add(true, "device type " + std::to_string(static_cast<int>(config.device.type)));
          break;
        default:
          null_out = true;
          m.add(true, "decoder = null");
          break;
      }
    }
    std::unique_ptr<Decoder> decoder;
    const Status created = Decoder::create(config, null_out ? nullptr : &decoder);
    const std::string create_ctx = context(seed, iter, m);
    if (!created.ok()) {
      expect_proper_rejection(created, "mla::Decoder::create", create_ctx);
      ASSERT_EQ(decoder, nullptr) << create_ctx;
      continue;
    }
    ASSERT_FALSE(m.invalid) << create_ctx << ": accepted";
    for (int step = 0; step < 3; ++step) {
      Mutation sm;
      DecodeSetup s;
      const int64_t batch = pick(rng, 0, config.max_batch);
      const int64_t pages = pick(rng, 1, config.max_pages_per_seq);
      make_decode_setup(rng, s, batch, config.s_q, config.h_q, pages);
      // The step's host metadata, copied into exactly sized arrays (ASan sees over-reads).
      StepMetadata meta;
      meta.batch = batch;
      meta.pages_per_seq = pages;
      int64_t stride = chance(rng, 0.3) ? pages + pick(rng, 1, 3) : pages;
      meta.block_table_stride = stride == pages && chance(rng, 0.5) ? 0 : stride;
      std::vector<int32_t> lens(s.lens), table(static_cast<size_t>(std::max<int64_t>(
                                             batch > 0 ? (batch - 1) * stride + pages : 0, 1)));
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t i = 0; i < pages; ++i) {
          table[b * stride + i] = element<int32_t>(s.bt, b * s.bt.view.strides[0] + i);
        }
      }
      meta.seq_lens = lens.empty() ? nullptr : lens.data();
      bool data_error = false;
      meta.block_table = table.data();
      switch (chance(rng, 0.3) ? pick(rng, 0, 4) : 99) {
        case 0:
          meta.batch = one_of<int64_t>(rng, {-1, config.max_batch + 1, kI64Max});
          sm.add(true, "step.batch = " + std::to_string(meta.batch));
          break;
        case 1:
          meta.seq_lens = nullptr;
          sm.add(batch > 0, "step.seq_lens = null");
          break;
        case 2:
          meta.pages_per_seq = one_of<int64_t>(rng, {0, -1, config.max_pages_per_seq + 1});
          sm.add(batch > 0, "step.pages_per_seq = " + std::to_string(meta.pages_per_seq));
          break;
        case 3:
          meta.block_table_stride = one_of<int64_t>(rng, {-1, pages - 1 == 0 ? -2 : pages - 1});
          sm.add(batch > 0, "step.block_table_stride = " + std::to_string(meta.block_table_stride));
          break;
        case 4:
          if (batch > 0 && s.lens[0] > 0) {
            table[0] = kDeadPageId;
            data_error = true;
            sm.add(false, "block_table[0][0] = 2147480000 (reported by decode)");
          }
          break;
        default:
          break;
      }
      const std::string step_ctx = create_ctx + "; step " + std::to_string(step) + ": " + sm.what;
      const Status begun = decoder->begin_step(meta, nullptr);
      if (!begun.ok()) {
        expect_proper_rejection(begun, "mla::Decoder::begin_step", step_ctx);
        // Without a step, decode is refused.
        LayerParams none;
        const Status refused = decoder->decode(none, nullptr);
        EXPECT_FALSE(refused.ok()) << step_ctx;
        expect_proper_rejection(refused, "mla::Decoder::decode", step_ctx);
        continue;
      }
      ASSERT_FALSE(sm.invalid) << step_ctx << ": accepted";
      for (int layer = 0; layer < 2; ++layer) {
        Mutation lm = sm;
        LayerParams lp;
        bool alias = false;
        if (chance(rng, 0.4)) mutate_decode(rng, s, true, &alias, &lm);
        if (alias) alias_decode_output(rng, s, true, &lm);
        {
          // The step's metadata lives on the Decoder's device (the CPU here).
          int32_t dummy = 0;
          const TensorView metadata = make_tensor(&dummy, DType::kInt32, {1});
          const DecodeParams& p = s.params;
          device_verdict({&metadata, &p.q, &p.q_pe, &p.kv_cache, &p.out, &p.lse}, true, &lm);
        }
        // Only layer tensors come from the setup; the step supplies block_table and seq_lens.
        lp.q = s.params.q;
        lp.q_pe = s.params.q_pe;
        lp.kv_cache = s.params.kv_cache;
        lp.out = s.params.out;
        lp.lse = s.params.lse;
        lp.softmax_scale = s.params.softmax_scale;
        lp.causal = s.params.causal;
        const std::string ctx = context(seed, iter, lm) + "; step " + std::to_string(step) +
                                ", layer " + std::to_string(layer);
        for (Arg* a : s.args()) a->save();
        const Status st = decoder->decode(lp, nullptr);
        if (!st.ok()) {
          expect_proper_rejection(st, "mla::Decoder::decode", ctx);
          for (Arg* a : s.args())
            ASSERT_TRUE(a->unchanged()) << ctx << ": " << a->name << " written";
          continue;
        }
        ASSERT_FALSE(lm.invalid || data_error) << ctx << ": accepted";
        ++decoded;
        ASSERT_TRUE(s.out.unchanged() == (batch == 0)) << ctx;
        ASSERT_EQ(check_output(s.out), "") << ctx;
        if (lp.lse.present()) {
          ASSERT_EQ(check_output(s.lse), "") << ctx;
        }
        // Restore the poison for the next layer.
        std::fill(s.out.mem.begin(), s.out.mem.end(), 0xff);
        std::fill(s.lse.mem.begin(), s.lse.mem.end(), 0xff);
      }
      const Status errors = decoder->check_data_errors(nullptr);
      EXPECT_TRUE(errors.ok()) << step_ctx << ": " << errors.message();
    }
  }
  EXPECT_GT(decoded, n / 4);
}

}  // namespace
}  // namespace mla::testing
