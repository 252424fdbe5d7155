// The decode kernel registry (registry.h). Each row: configuration, element type, name and
// architecture; the rest (rows per CTA, shared memory, threads) follows from the configuration.
// The launch functions (launch_decode<Cfg, Traits>) are instantiated apart, one file per
// configuration: sm80/instances/*.cu for the portable kernel, sm90/launch.cu (compiled for sm_90a
// alone) for the Hopper one.
//
// Why these configurations (measured on H100, docs/cuda_kernel_notes.md): on Hopper every
// portable tile streams 64-token KV stages, 2 deep (each warp re-reads its Q band from shared
// memory per KV tile, so 64-token tiles halve that traffic, and they beat 4 stages of 32 tokens
// on every spec row). The 16-row tile runs 8 warps (8 tokens of S each) so that each scheduler
// has two warps to hide latency with (248 us against 259 us for 4 warps with 4 x 32 tokens on
// the h_q = 16 row). Ampere-class limits (163 KB a block) fall back to 2 stages of 32 tokens,
// and devices with about 100 KB a block to 16-row tiles for every shape. On Hopper the seesaw
// kernel (sm90ss) serves pages of 8 tokens and more (32 and more up to 32 rows; registry.h has
// the H200 figures); below, sm90n64s2 serves more than 32 rows, and up to 32 the portable 16-
// and 32-row tiles do less padded work and measured faster (H100, h_q = 16: 240 against 250 us;
// h_q = 32: 233 against 237 us).
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <type_traits>

#include "cuda/common/elem.cuh"
#include "cuda/registry.h"
#include "cuda/sm80/config.h"
#if MLA_HAVE_SM90
#include "cuda/sm90/config.h"
#endif

namespace mla::cuda {
namespace {

// The KV format of a configuration: Cfg::kKv where the family has fp8 variants, else the 16-bit
// cache of q's type.
template <typename Cfg, typename = void>
struct KvOf {
  static constexpr detail::KvType kValue = detail::KvType::kHalf;
};
template <typename Cfg>
struct KvOf<Cfg, std::void_t<decltype(Cfg::kKv)>> {
  static constexpr detail::KvType kValue = Cfg::kKv;
};

template <typename Cfg, typename Traits>
KernelEntry entry(const char* name, int arch) {
  return KernelEntry{name,
                     arch,
                     Cfg::kRows,
                     Traits::kElem,
                     KvOf<Cfg>::kValue,
                     Cfg::kSmemBytes,
                     Cfg::kThreads,
                     &launch_decode<Cfg, Traits>};
}

// The table, kept out of clang-format's reflow. Order matters among entries of one tile height:
// the first that fits is chosen.
std::vector<KernelEntry> make_registry() {
  using sm80::Config;
  constexpr detail::KvType kE4m3 = detail::KvType::kFp8E4M3;
  constexpr detail::KvType kDsMla = detail::KvType::kFp8DsMla;
  // clang-format off
  return {
#if MLA_HAVE_SM90
      entry<sm90::Config<64, 2>, Bf16>("sm90n64s2", 90),
      entry<sm90::Config<64, 2>, Fp16>("sm90n64s2", 90),
      // The seesaw kernel: chosen for pages of kSeesawMinPage tokens and more (registry.h);
      // sm90n64s2 before it serves smaller pages (page 1: 470 against 568 us at h_q 128).
      entry<sm90::SeesawConfig, Bf16>(kSeesawName, 90),
      entry<sm90::SeesawConfig, Fp16>(kSeesawName, 90),
#endif
      entry<Config<4, 64, 2, 8>, Bf16>("m4n64s2w8", 80),
      entry<Config<4, 64, 2, 8>, Fp16>("m4n64s2w8", 80),
      entry<Config<2, 64, 2, 8>, Bf16>("m2n64s2w8", 80),
      entry<Config<2, 64, 2, 8>, Fp16>("m2n64s2w8", 80),
      entry<Config<1, 64, 2, 8>, Bf16>("m1n64s2w8", 80),
      entry<Config<1, 64, 2, 8>, Fp16>("m1n64s2w8", 80),
      entry<Config<4, 32, 2, 8>, Bf16>("m4n32s2w8", 80),
      entry<Config<4, 32, 2, 8>, Fp16>("m4n32s2w8", 80),
      entry<Config<1, 32, 2, 4>, Bf16>("m1n32s2w4", 80),
      entry<Config<1, 32, 2, 4>, Fp16>("m1n32s2w4", 80),
      // fp8 caches: the portable kernel with an fp8 ring and one 16-bit tile (sm80/config.h).
      // fp8_e4m3's two raw stages take the bytes of one 16-bit stage, so its tiles need what
      // the 16-bit ones do; fp8_ds_mla's 656-byte tokens do not fit 64-row x 64-token tiles in
      // 227 KB, so its 64-row tile streams 32-token stages. No 32-row tiles: taller ones serve.
      entry<Config<4, 64, 2, 8, kE4m3>, Bf16>("m4n64s2w8", 80),
      entry<Config<4, 64, 2, 8, kE4m3>, Fp16>("m4n64s2w8", 80),
      entry<Config<1, 64, 2, 8, kE4m3>, Bf16>("m1n64s2w8", 80),
      entry<Config<1, 64, 2, 8, kE4m3>, Fp16>("m1n64s2w8", 80),
      entry<Config<4, 32, 2, 8, kE4m3>, Bf16>("m4n32s2w8", 80),
      entry<Config<4, 32, 2, 8, kE4m3>, Fp16>("m4n32s2w8", 80),
      entry<Config<1, 32, 2, 4, kE4m3>, Bf16>("m1n32s2w4", 80),
      entry<Config<1, 32, 2, 4, kE4m3>, Fp16>("m1n32s2w4", 80),
      entry<Config<1, 64, 2, 8, kDsMla>, Bf16>("m1n64s2w8", 80),
      entry<Config<1, 64, 2, 8, kDsMla>, Fp16>("m1n64s2w8", 80),
      entry<Config<4, 32, 2, 8, kDsMla>, Bf16>("m4n32s2w8", 80),
      entry<Config<4, 32, 2, 8, kDsMla>, Fp16>("m4n32s2w8", 80),
      entry<Config<1, 32, 2, 4, kDsMla>, Bf16>("m1n32s2w4", 80),
      entry<Config<1, 32, 2, 4, kDsMla>, Fp16>("m1n32s2w4", 80),
  };
  // clang-format on
}

// Tests and benchmarks may replace the override at run time (set_kernel_override).
struct OverrideState {
  std::mutex mutex;
  ActiveOverride value{};
};

OverrideState& override_state() {
  static OverrideState* state = [] {
    auto* s = new OverrideState;  // never destroyed: calls may still run during exit
    if (const char* k = std::getenv("MLA_CUDA_KERNEL"); k != nullptr) {
      std::strncpy(s->value.kernel, k, sizeof s->value.kernel - 1);
    }
    if (const char* e = std::getenv("MLA_CUDA_SMEM_LIMIT"); e != nullptr && *e != '\0') {
      s->value.smem_limit = static_cast<size_t>(std::strtoull(e, nullptr, 10));
    }
    return s;
  }();
  return *state;
}

}  // namespace

bool KernelEntry::runs_on(const DeviceInfo& info, size_t smem_limit) const {
  const bool arch_ok = arch == 90 ? info.major == 9 && info.minor == 0 : info.major * 10 >= arch;
  return arch_ok && smem_bytes <= smem_limit;
}

const std::vector<KernelEntry>& kernel_registry() {
  static const std::vector<KernelEntry> registry = make_registry();
  return registry;
}

const KernelEntry* choose_kernel(const DeviceInfo& info, int batch, int rows, int page_size,
                                 detail::ElemType elem, detail::KvType kv, size_t smem_limit,
                                 const char* only) {
  const std::vector<KernelEntry>& all = kernel_registry();
  auto usable = [&](const KernelEntry& e) {
    return e.elem == elem && e.kv_format == kv && e.runs_on(info, smem_limit);
  };
  if (only != nullptr) {
    for (const KernelEntry& e : all) {
      if (std::strcmp(e.name, only) == 0 && usable(e)) return &e;
    }
    return nullptr;
  }
  const bool seesaw = rows > 32
                          ? page_size >= kSeesawMinPage
                          : page_size >= kSeesawMinPageFewRows && batch >= kSeesawMinBatchFewRows;
  if (seesaw) {
    for (const KernelEntry& e : all) {
      if (e.arch == 90 && std::strcmp(e.name, kSeesawName) == 0 && usable(e)) return &e;
    }
  }
  if (rows > 32) {
    for (const KernelEntry& e : all) {
      if (e.arch == 90 && usable(e)) return &e;
    }
  }
  const int height = rows <= 16 ? 16 : rows <= 32 ? 32 : 64;
  // Rank 0: the tile height that holds the rows; 1: taller (more padding); 2: shorter (more
  // row tiles, each rereading the cache).
  for (int rank = 0; rank < 3; ++rank) {
    for (const KernelEntry& e : all) {
      const int r = e.rows_per_cta == height ? 0 : e.rows_per_cta > height ? 1 : 2;
      if (e.arch == 80 && r == rank && usable(e)) return &e;
    }
  }
  return nullptr;
}

ActiveOverride active_override() {
  OverrideState& s = override_state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.value;
}

KernelOverride kernel_override() {
  const ActiveOverride a = active_override();
  return KernelOverride{a.kernel, a.smem_limit};
}

void set_kernel_override(const KernelOverride& o) {
  OverrideState& s = override_state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.value = ActiveOverride{};
  std::strncpy(s.value.kernel, o.kernel.c_str(), sizeof s.value.kernel - 1);
  s.value.smem_limit = o.smem_limit;
}

std::vector<std::string> kernel_names(int device, KvFormat format) {
  std::vector<std::string> names;
  DeviceInfo info;
  if (!device_info(device, &info).ok()) return names;
  for (const KernelEntry& e : kernel_registry()) {
    if (static_cast<int>(e.kv_format) != static_cast<int>(format)) continue;
    if (!e.runs_on(info, info.smem_optin)) continue;
    if (names.empty() || names.back() != e.name) names.emplace_back(e.name);
  }
  return names;
}

}  // namespace mla::cuda
