// The README's example: one decode step of DeepSeek-V3 at TP8 (16 query heads) on the CPU,
// two requests of 100 and 0 cached tokens in a paged cache of 64-token pages.
#include <mla/mla.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

int main() {
  const int64_t batch = 2, s_q = 1, h_q = 16, page_size = 64, num_pages = 4, max_pages = 2;
  std::vector<uint16_t> q(batch * s_q * h_q * 576, 0x3f80);       // bf16 1.0
  std::vector<uint16_t> kv(num_pages * page_size * 576, 0x3f00);  // bf16 0.5
  std::vector<int32_t> block_table = {2, 0, 0, 0};                // request 0: pages 2 and 0
  std::vector<int32_t> seq_lens = {100, 0};                       // request 1 is CUDA-graph padding
  std::vector<uint16_t> out(batch * s_q * h_q * 512);             // uninitialised is fine
  std::vector<float> lse(batch * s_q * h_q);

  mla::DecodeParams p;
  p.q = mla::make_tensor(q.data(), mla::DType::kBFloat16, {batch, s_q, h_q, 576});
  p.kv_cache = mla::make_tensor(kv.data(), mla::DType::kBFloat16, {num_pages, page_size, 576});
  p.block_table = mla::make_tensor(block_table.data(), mla::DType::kInt32, {batch, max_pages});
  p.seq_lens = mla::make_tensor(seq_lens.data(), mla::DType::kInt32, {batch});
  p.out = mla::make_tensor(out.data(), mla::DType::kBFloat16, {batch, s_q, h_q, 512});
  p.lse = mla::make_tensor(lse.data(), mla::DType::kFloat32, {batch, s_q, h_q});
  p.softmax_scale = 1.0f / std::sqrt(192.0f);

  mla::ExecConfig config;  // CPU, all cores; set config.stream for CUDA tensors
  size_t bytes = 0;
  mla::Status s = mla::workspace_size({batch, s_q, h_q}, mla::Device{}, config, &bytes);
  // The workspace pointer must be mla::kWorkspaceAlignment-byte aligned.
  constexpr size_t kAlign = mla::kWorkspaceAlignment;
  std::vector<std::byte> storage(bytes + kAlign);
  void* ws = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(storage.data()) + kAlign - 1) /
                                     kAlign * kAlign);
  if (s.ok()) s = mla::decode(p, mla::Workspace{ws, bytes}, config);
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.message().c_str());
    return 1;
  }
  // Every key is the same, so request 0's output is the value row (0.5) and lse = ln(100) + logit;
  // request 1 is empty: out = 0, lse = -inf.
  std::printf("out[0,0,0,0] = %04x (bf16 0.5 = 3f00), lse[0] = %.4f, lse[1] = %f\n", out[0], lse[0],
              lse[h_q]);
  return out[0] == 0x3f00 && std::isinf(lse[h_q]) && out[h_q * 512] == 0 ? 0 : 1;
}
