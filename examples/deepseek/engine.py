"""A minimal serving engine for DeepSeek-V3 on mla-decode: paged latent KV cache, absorbed MLA.

What an engine keeps, and what it calls (see the README's "Using mla-decode in an engine"):

- the paged latent cache: one ``[num_pages, page_size, 576]`` tensor per layer (512 latent values
  ``kv_a_layernorm(c_kv)`` then 64 RoPE'd key values), pages handed out from a pool in random
  order, so a request's pages are scattered;
- per request slot: its pages (a row of ``block_table``, dead entries hold a garbage page id that
  is never read) and its length (``seq_lens``, this step's tokens included);
- a workspace sized once for ``(max_batch, s_q, h_q / tp_world)``.

Every step: ``plan()`` once (the split-KV schedule, computed from ``seq_lens``), then per layer
``write_kv_cache()`` of the step's new latents by ``slot_mapping`` and ``decode_planned()``. The
attention module is the model's own (projections, norms, RoPE, softmax scale with YaRN's mscale);
only its forward is replaced by the absorbed form:

    q_lat = q_nope @ W_UK            # [batch, s_q, h, 512]: W_UK folded into the query
    o_lat = mla_decode(q_lat, q_pe, cache)   # softmax(scale * q . K) @ K[:, :512]
    o     = o_proj(o_lat @ W_UV^T)   # W_UV applied to the latent output

Tensor parallelism: rank r of W ranks owns heads [r*h/W, (r+1)*h/W): the query projection and
kv_b_proj (W_UK, W_UV) are split by heads (column-parallel), the latent cache is replicated (every
head reads all of it), mla-decode runs on h/W heads, and o_proj is row-parallel: each rank's
partial product is summed with an all-reduce. Everything else (embeddings, MLP/MoE, norms,
lm_head) is replicated.

Padding slots (``seq_len`` 0, slot -1) are part of every step, as under CUDA graphs: mla-decode
writes their attention output as 0, so they need no special case.
"""

import dataclasses
from typing import List, Optional

import mla_decode.torch as mla
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf

GARBAGE_PAGE = 2147480000  # dead block-table entries: mla-decode never reads them
MAX_CHUNK = 16  # mla-decode's largest s_q; the example's prefill runs through decode in chunks


@dataclasses.dataclass
class StepContext:
    """What the attention layers of one forward need besides the hidden states."""

    block_table: torch.Tensor  # [batch, max_pages] int32
    seq_lens: torch.Tensor  # [batch] int32, this forward's tokens included
    slot_mapping: torch.Tensor  # [batch * s_q] int64, -1 = padding (not written)
    workspace: Optional[torch.Tensor]  # planned workspace, or None: decode() plans itself


class MlaDecodeAttention(nn.Module):
    """Replaces a DeepseekV3Attention's forward with absorbed MLA over the engine's paged cache,
    using that module's weights (the heads of this tensor-parallel rank)."""

    def __init__(self, attn: hf.DeepseekV3Attention, engine: "Engine", layer: int):
        super().__init__()
        self.attn = attn
        self.engine = engine
        self.layer = layer
        self.rope = (
            hf.apply_rotary_pos_emb_interleave
            if attn.config.rope_interleave
            else hf.apply_rotary_pos_emb
        )
        h, rank, world = attn.num_heads, engine.tp_rank, engine.tp_world
        assert h % world == 0, f"{world} ranks do not divide {h} heads"
        self.h_local = h // world
        heads = slice(rank * self.h_local, (rank + 1) * self.h_local)
        nope, rope, v = attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim
        q_proj = attn.q_proj if attn.q_lora_rank is None else attn.q_b_proj
        local = (lambda t: t) if world == 1 else (lambda t: t.contiguous())
        # Column-parallel query projection: this rank's heads.
        self.q_weight = local(q_proj.weight.view(h, nope + rope, -1)[heads].flatten(0, 1))
        # kv_b_proj maps the latent to per-head [k_nope (128), v (128)]: W_UK and W_UV.
        kv_b = attn.kv_b_proj.weight.view(h, nope + v, attn.kv_lora_rank)[heads]
        self.w_uk = local(kv_b[:, :nope])  # [h_local, 128, 512]
        self.w_uv = local(kv_b[:, nope:])  # [h_local, 128, 512]
        # Row-parallel o_proj: the input columns of this rank's heads.
        hidden = attn.o_proj.weight.shape[0]
        self.o_weight = local(attn.o_proj.weight.view(hidden, h, v)[:, heads].flatten(1, 2))

    def forward(self, hidden_states, position_embeddings, attention_mask=None, **kwargs):
        a, ctx = self.attn, self.engine.ctx
        batch, s_q, _ = hidden_states.shape
        nope, rope, lora = a.qk_nope_head_dim, a.qk_rope_head_dim, a.kv_lora_rank

        q_in = (
            hidden_states if a.q_lora_rank is None else a.q_a_layernorm(a.q_a_proj(hidden_states))
        )
        q = F.linear(q_in, self.q_weight).view(batch, s_q, self.h_local, nope + rope)
        q_nope, q_rot = q.split([nope, rope], dim=-1)
        kv_c, k_rot = a.kv_a_proj_with_mqa(hidden_states).split([lora, rope], dim=-1)
        kv_c = a.kv_a_layernorm(kv_c)
        cos, sin = position_embeddings
        q_pe, k_pe = self.rope(q_rot.transpose(1, 2), k_rot.view(batch, 1, s_q, rope), cos, sin)

        cache = self.engine.kv_cache[self.layer]
        mla.write_kv_cache(
            kv_c.reshape(batch * s_q, lora),
            k_pe.reshape(batch * s_q, rope),
            ctx.slot_mapping,
            cache,
        )
        q_lat = torch.einsum("bshd,hdc->bshc", q_nope, self.w_uk)  # W_UK absorbed into q
        args = (q_lat, cache, ctx.block_table, ctx.seq_lens, a.scaling)
        kw = dict(q_pe=q_pe.transpose(1, 2), causal=s_q > 1)
        if ctx.workspace is None:
            o_lat = mla.decode(*args, **kw)
        else:
            o_lat = mla.decode_planned(*args, workspace=ctx.workspace, **kw)
        o = torch.einsum("bshc,hvc->bshv", o_lat, self.w_uv).flatten(2)  # W_UV on the output
        o = F.linear(o, self.o_weight)
        if self.engine.tp_world > 1:
            self.engine.all_reduce(o)
        if a.o_proj.bias is not None:
            o = o + a.o_proj.bias
        return o, None


class Engine:
    """Runs a DeepseekV3ForCausalLM (patched in place) over a paged latent cache.

    Slots 0..max_batch-1 hold requests; a step feeds s_q tokens to every slot, inactive slots as
    padding. ``prefill(slot, tokens)`` starts a request; ``step(tokens, active)`` decodes.
    """

    def __init__(
        self,
        model,
        *,
        max_batch: int,
        s_q: int,
        page_size: int,
        num_pages: int,
        max_pages_per_seq: int,
        seed: int = 0,
        tp_rank: int = 0,
        tp_world: int = 1,
        tp_group=None,
        cuda_graph: bool = False,
    ):
        cfg = model.config
        self.model, self.tp_rank, self.tp_world, self.tp_group = model, tp_rank, tp_world, tp_group
        self.max_batch, self.s_q, self.page_size = max_batch, s_q, page_size
        self.device = model.lm_head.weight.device
        dtype = model.lm_head.weight.dtype
        dev = dict(device=self.device)
        # The cache starts as NaN: page tails and unwritten rows must never influence a result.
        self.kv_cache = torch.full(
            (cfg.num_hidden_layers, num_pages, page_size, cfg.kv_lora_rank + cfg.qk_rope_head_dim),
            float("nan"),
            dtype=dtype,
            **dev,
        )
        generator = torch.Generator().manual_seed(seed)
        self.free_pages: List[int] = torch.randperm(num_pages, generator=generator).tolist()
        self.pages: List[List[int]] = [[] for _ in range(max_batch)]
        self.lens = [0] * max_batch
        self.max_pages = max_pages_per_seq

        # Step metadata: static device buffers, updated in place (CUDA graphs replay from them).
        self.block_table = torch.full(
            (max_batch, max_pages_per_seq), GARBAGE_PAGE, dtype=torch.int32, **dev
        )
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int32, **dev)
        self.slot_mapping = torch.full((max_batch * s_q,), -1, dtype=torch.int64, **dev)
        self.positions = torch.zeros(max_batch, s_q, dtype=torch.int64, **dev)
        self.input_ids = torch.zeros(max_batch, s_q, dtype=torch.int64, **dev)
        attn0 = model.model.layers[0].self_attn
        self.h_local = cfg.num_attention_heads // tp_world
        self.workspace = mla.alloc_workspace(max_batch, s_q, self.h_local, self.device)
        # plan() validates q and out against the step's shapes; it reads neither.
        self.plan_q = torch.empty(
            max_batch, s_q, self.h_local, cfg.kv_lora_rank, dtype=dtype, **dev
        )
        self.plan_q_pe = torch.empty(
            max_batch, s_q, self.h_local, cfg.qk_rope_head_dim, dtype=dtype, **dev
        )
        self.plan_out = torch.empty_like(self.plan_q)
        self.scale = attn0.scaling
        self.step_ctx = StepContext(
            self.block_table, self.seq_lens, self.slot_mapping, self.workspace
        )
        self.ctx = self.step_ctx

        for i, layer in enumerate(model.model.layers):
            layer.self_attn = MlaDecodeAttention(layer.self_attn, self, i)

        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.graph = None
        self.graph_logits = None

    # -- collectives ----------------------------------------------------------------------------
    def all_reduce(self, t: torch.Tensor) -> None:
        torch.distributed.all_reduce(t, group=self.tp_group)

    # -- the model's forward with our attention ---------------------------------------------------
    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The model's own layers, called directly (no HF mask or cache bookkeeping): embeddings,
        RoPE tables for the given positions, every decoder layer (its norms, MLP or MoE, and our
        attention), the final norm and lm_head. Returns float logits [batch, n, vocab]."""
        m = self.model.model
        h = m.embed_tokens(input_ids)
        position_embeddings = m.rotary_emb(h, position_ids=positions)
        for layer in m.layers:
            h = layer(
                h,
                attention_mask=None,
                position_ids=positions,
                position_embeddings=position_embeddings,
            )
        return self.model.lm_head(m.norm(h)).float()

    # -- request bookkeeping ----------------------------------------------------------------------
    def _grow(self, slot: int, new_len: int) -> None:
        """Give `slot` pages for new_len tokens, from the shuffled pool."""
        while len(self.pages[slot]) * self.page_size < new_len:
            if not self.free_pages:
                raise RuntimeError("out of KV-cache pages")
            if len(self.pages[slot]) == self.max_pages:
                raise RuntimeError(f"slot {slot}: more than {self.max_pages} pages")
            self.pages[slot].append(self.free_pages.pop())

    def _slots(self, slot: int, start: int, n: int) -> List[int]:
        pages, p = self.pages[slot], self.page_size
        return [pages[t // p] * p + t % p for t in range(start, start + n)]

    def _block_table_row(self, slot: int) -> List[int]:
        row = self.pages[slot]
        return row + [GARBAGE_PAGE] * (self.max_pages - len(row))

    def release(self, slot: int) -> None:
        self.free_pages.extend(self.pages[slot])
        self.pages[slot], self.lens[slot] = [], 0

    # -- prefill and decode -----------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, slot: int, tokens: List[int]) -> torch.Tensor:
        """Start a request in `slot` with its prompt; returns the logits of every prompt token
        [len(tokens), vocab]. The prompt goes through mla-decode in causal chunks of up to 16
        tokens (batch 1); an engine would run its prefill kernel on the un-absorbed form instead
        and only write the latents with write_kv_cache."""
        assert self.lens[slot] == 0, f"slot {slot} is busy"
        dev = dict(device=self.device)
        logits = []
        for start in range(0, len(tokens), MAX_CHUNK):
            chunk = tokens[start : start + MAX_CHUNK]
            n = len(chunk)
            self._grow(slot, start + n)
            self.lens[slot] = start + n
            self.ctx = StepContext(
                torch.tensor([self._block_table_row(slot)], dtype=torch.int32, **dev),
                torch.tensor([start + n], dtype=torch.int32, **dev),
                torch.tensor(self._slots(slot, start, n), dtype=torch.int64, **dev),
                None,
            )
            positions = torch.arange(start, start + n, **dev).unsqueeze(0)
            logits.append(self.forward(torch.tensor([chunk], **dev), positions)[0])
        self.ctx = self.step_ctx
        return torch.cat(logits)

    def _plan(self) -> None:
        mla.plan(
            self.plan_q,
            self.kv_cache[0],
            self.block_table,
            self.seq_lens,
            self.scale,
            q_pe=self.plan_q_pe,
            out=self.plan_out,
            causal=self.s_q > 1,
            workspace=self.workspace,
        )

    def _step_forward(self) -> torch.Tensor:
        self._plan()  # once per step, shared by every layer's decode_planned()
        return self.forward(self.input_ids, self.positions)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, active: List[bool]) -> torch.Tensor:
        """One decode step: tokens [max_batch, s_q] (rows of inactive slots are ignored).
        Returns logits [max_batch, s_q, vocab] (those of inactive slots are meaningless)."""
        s_q = self.s_q
        seq_lens, slots, positions, rows = [], [], [], []
        for b in range(self.max_batch):
            if active[b]:
                start = self.lens[b]
                self._grow(b, start + s_q)
                self.lens[b] = start + s_q
                seq_lens.append(start + s_q)
                slots += self._slots(b, start, s_q)
                positions.append(list(range(start, start + s_q)))
            else:
                seq_lens.append(0)
                slots += [-1] * s_q
                positions.append([0] * s_q)
            rows.append(self._block_table_row(b) if active[b] else [GARBAGE_PAGE] * self.max_pages)
        self.block_table.copy_(torch.tensor(rows, dtype=torch.int32))
        self.seq_lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
        self.slot_mapping.copy_(torch.tensor(slots, dtype=torch.int64))
        self.positions.copy_(torch.tensor(positions, dtype=torch.int64))
        self.input_ids.copy_(tokens)
        self.ctx = self.step_ctx
        if not self.cuda_graph:
            return self._step_forward()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.graph_logits.clone()

    def _capture(self) -> None:
        """Capture plan + forward in a CUDA graph after a warm-up on a side stream. The warm-up
        runs the current step for real; it writes the same latents to the same slots that the
        replay writes again, so running it twice changes nothing."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._step_forward()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.graph_logits = self._step_forward()
