"""A vLLM-style MLA decode backend on mla_decode.torch, and a small demo step.

vLLM's MLA attention absorbs W_UK into the query and then calls the backend's
``forward_mqa(q, kv_c_and_k_pe_cache, attn_metadata)`` for the decode tokens, which returns the
latent output and its LSE. ``MlaDecodeImpl.forward_mqa`` below is that method: it takes q as one
[num_tokens, num_heads, 576] tensor or as the (q_nope, q_pe) pair vLLM already holds (no concat
needed), allocates the output uninitialised with torch.empty (mla_decode writes every element,
padding rows included) and runs on the current stream, so it can be captured in a CUDA graph.

Run: python examples/vllm_forward_mqa.py   (CUDA if available, else CPU)
"""

import dataclasses
from typing import Optional, Tuple, Union

import mla_decode.torch as mla
import torch

KV_LORA_RANK = 512
QK_ROPE_HEAD_DIM = 64


@dataclasses.dataclass
class DecodeMetadata:
    block_table: torch.Tensor  # [num_decodes, max_blocks_per_seq] int32
    seq_lens: torch.Tensor  # [num_decodes] int32, this step's tokens included


@dataclasses.dataclass
class AttnMetadata:
    num_decodes: int
    num_decode_tokens: int  # num_decodes * tokens per request (> 1 with speculative decoding)
    decode: DecodeMetadata


class MlaDecodeImpl:
    def __init__(self, num_heads: int, scale: float):
        self.num_heads = num_heads
        self.scale = scale

    def forward_mqa(
        self,
        q: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
        kv_c_and_k_pe_cache: torch.Tensor,
        attn_metadata: AttnMetadata,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """q: [num_tokens, num_heads, 576] or (q_nope [.., 512], q_pe [.., 64]);
        kv_c_and_k_pe_cache: [num_blocks, block_size, 576].
        Returns o [num_tokens, num_heads, 512] and lse [num_tokens, num_heads] (natural log;
        -inf for padding requests with seq_len 0)."""
        batch = attn_metadata.num_decodes
        num_tokens = attn_metadata.num_decode_tokens
        s_q = num_tokens // batch
        q_nope, q_pe = q if isinstance(q, tuple) else (q, None)
        q_nope = q_nope.view(batch, s_q, self.num_heads, q_nope.shape[-1])
        if q_pe is not None:
            q_pe = q_pe.view(batch, s_q, self.num_heads, QK_ROPE_HEAD_DIM)
        o = torch.empty(
            num_tokens, self.num_heads, KV_LORA_RANK, dtype=q_nope.dtype, device=q_nope.device
        )
        lse = torch.empty(num_tokens, self.num_heads, dtype=torch.float32, device=q_nope.device)
        mla.decode(
            q_nope,
            kv_c_and_k_pe_cache,
            attn_metadata.decode.block_table,
            attn_metadata.decode.seq_lens,
            self.scale,
            q_pe=q_pe,
            causal=s_q > 1,  # speculative tokens see the cache up to themselves
            out=o.view(batch, s_q, self.num_heads, KV_LORA_RANK),
            lse=lse.view(batch, s_q, self.num_heads),
        )
        return o, lse


def naive_attention(q, cache, block_table, seq_lens, scale):
    """Plain torch, one request at a time, for s_q = 1."""
    page_size = cache.shape[1]
    outs = []
    for b in range(q.shape[0]):
        n = int(seq_lens[b])
        j = torch.arange(n, device=q.device)
        keys = cache[block_table[b, j // page_size].long(), j % page_size].float()  # [n, 576]
        probs = torch.softmax(scale * q[b].float() @ keys.T, dim=-1)
        outs.append(probs @ keys[:, :KV_LORA_RANK])
    return torch.stack(outs)


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    num_heads, block_size, num_blocks, batch = 16, 64, 32, 4
    scale = (128 + QK_ROPE_HEAD_DIM) ** -0.5  # DeepSeek: 1 / sqrt(qk_nope + qk_rope head dims)
    cache = torch.empty(num_blocks, block_size, 576, dtype=torch.bfloat16, device=device)

    # Prefill some history with vLLM's concat_and_cache_mla equivalent.
    seq_lens = torch.tensor([100, 1, 257, 64], dtype=torch.int32, device=device)
    block_table = torch.randperm(num_blocks, device=device)[: batch * 8].view(batch, 8).int()
    slots = []
    for b, n in enumerate(seq_lens.tolist()):
        t = torch.arange(n, device=device)
        slots.append(block_table[b, t // block_size].long() * block_size + t % block_size)
    slots = torch.cat(slots)
    kv_c = torch.randn(len(slots), KV_LORA_RANK, dtype=torch.bfloat16, device=device)
    k_pe = torch.randn(len(slots), QK_ROPE_HEAD_DIM, dtype=torch.bfloat16, device=device)
    mla.write_kv_cache(kv_c, k_pe, slots, cache)

    impl = MlaDecodeImpl(num_heads, scale)
    metadata = AttnMetadata(batch, batch, DecodeMetadata(block_table, seq_lens))
    q_nope = torch.randn(batch, num_heads, KV_LORA_RANK, dtype=torch.bfloat16, device=device)
    q_pe = torch.randn(batch, num_heads, QK_ROPE_HEAD_DIM, dtype=torch.bfloat16, device=device)
    o, lse = impl.forward_mqa((q_nope, q_pe), cache, metadata)

    want = naive_attention(torch.cat([q_nope, q_pe], -1), cache, block_table, seq_lens, scale)
    err = (o.float() - want).abs().max().item()
    print(f"{device}: o {tuple(o.shape)}, lse {tuple(lse.shape)}, max |o - naive| = {err:.4f}")

    if device == "cuda":
        # The same call captured in a CUDA graph; replays follow new seq_lens in place.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            o_graph, _ = impl.forward_mqa((q_nope, q_pe), cache, metadata)
        seq_lens.copy_(torch.tensor([7, 0, 200, 64]))  # request 1 is now padding
        graph.replay()
        want = naive_attention(torch.cat([q_nope, q_pe], -1), cache, block_table, seq_lens, scale)
        err = (o_graph[[0, 2, 3]].float() - want[[0, 2, 3]]).abs().max().item()
        print(
            f"graph replay: max |o - naive| = {err:.4f}, padding row zero: "
            f"{bool((o_graph[1] == 0).all())}"
        )


if __name__ == "__main__":
    main()
