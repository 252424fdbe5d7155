"""PyTorch custom ops over mla_decode, usable under torch.compile and CUDA-graph capture.

Ops (``torch.ops.mla_decode.*``), each registered with ``torch.library.custom_op`` and a fake
(meta) implementation; they run on the current CUDA stream::

    decode(q, q_pe?, kv_cache, block_table, seq_lens, softmax_scale, causal,
           out!, lse!?, workspace!?, kv_format="same_as_q", kv_scale=1.0, kv_scale_tensor?) -> ()
    plan(..same..) -> ()                 # writes only the workspace
    decode_planned(..same..) -> ()
    write_kv_cache(kv_c, k_pe, slot_mapping, kv_cache!, kv_format="same_as_q", kv_scale=1.0,
                   kv_scale_tensor?, ds_mla_pow2_scale=False) -> ()

fp8 caches (kv_format "fp8_e4m3" or "fp8_ds_mla", docs/kv_formats.md) may be uint8 or
float8_e4m3fn tensors; fp8_e4m3's scale is a float or a one-element (or 0-dim) float32 tensor,
as vLLM's k_scale (on CUDA a tensor on the call's device).
    merge_states(out_a, lse_a, out_b, lse_b, out!, lse!?) -> ()
    sparse_decode(q, q_pe?, kv_cache, indices, topk_lengths?, attn_sink?, softmax_scale,
                  out!, lse!?, workspace!?, kv_format="same_as_q", kv_scale=1.0,
                  kv_scale_tensor?) -> ()

The Python functions below allocate outputs with ``torch.empty`` and call the ops.

Workspace. When ``workspace`` is None, decode uses a buffer cached per device (the CPU
allocates one per call). The cache only grows, and a buffer that a captured CUDA graph may still
point at is never freed. Growing it needs an allocation, which CUDA-graph capture forbids: make
the first call for the largest shape (batch, s_q, h_q) before capturing, as engines do with a
warm-up run, or call ``reserve_workspace``. The cached buffer serialises calls on one stream;
calls that may run at the same time on different streams need their own ``workspace``
(see ``alloc_workspace``).
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import WORKSPACE_ALIGNMENT, _C, _bytes, _query_shape, _require
from .errors import InvalidArgumentError, MlaError

HEAD_DIM_QK = _C.HEAD_DIM_QK
HEAD_DIM_V = _C.HEAD_DIM_V

_cached_workspaces = {}  # torch.device -> uint8 Tensor
_retired_workspaces: List[Tensor] = []  # kept alive: captured graphs may still use them


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def workspace_size(batch: int, s_q: int, h_q: int, device="cuda") -> int:
    """Bytes of workspace a decode of these shapes needs on `device` (all CPU threads)."""
    device = _device(device)
    return _C.workspace_size(
        batch,
        s_q,
        h_q,
        cuda=device.type == "cuda",
        device_index=device.index or 0,
        num_threads=0,
    )


def _aligned_bytes(nbytes: int, device: torch.device) -> Tensor:
    raw = torch.empty(nbytes + WORKSPACE_ALIGNMENT, dtype=torch.uint8, device=device)
    offset = -raw.data_ptr() % WORKSPACE_ALIGNMENT
    return raw[offset : offset + nbytes]


def alloc_workspace(batch: int, s_q: int, h_q: int, device="cuda") -> Tensor:
    """A fresh workspace (uint8, WORKSPACE_ALIGNMENT-byte aligned) for decodes of up to these
    shapes."""
    device = _device(device)
    return _aligned_bytes(workspace_size(batch, s_q, h_q, device), device)


def reserve_workspace(batch: int, s_q: int, h_q: int, device="cuda") -> None:
    """Grow the cached workspace of `device` to fit these shapes now (call before capture)."""
    _cached_workspace(_device(device), batch, s_q, h_q)


def _cached_workspace(device: torch.device, batch: int, s_q: int, h_q: int) -> Tensor:
    nbytes = workspace_size(batch, s_q, h_q, device)
    if device.type != "cuda":
        return _aligned_bytes(nbytes, device)
    cached = _cached_workspaces.get(device)
    if cached is None or cached.numel() < nbytes:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"mla_decode.torch: the cached workspace of {device} needs {nbytes} bytes for "
                f"batch={batch}, s_q={s_q}, h_q={h_q}, which cannot be allocated during CUDA-graph "
                "capture; run one call of the largest shape before capturing, or call "
                "mla_decode.torch.reserve_workspace(), or pass workspace="
            )
        if cached is not None:
            _retired_workspaces.append(cached)
        cached = _aligned_bytes(nbytes, device)
        _cached_workspaces[device] = cached
    return cached[:nbytes]


def _detached(t: Optional[Tensor]) -> Optional[Tensor]:
    # DLPack refuses tensors that require grad; the ops have no autograd formula anyway.
    return None if t is None else t.detach()


def _run_decode(
    fn,
    q: Tensor,
    q_pe: Optional[Tensor],
    kv_cache: Tensor,
    block_table: Tensor,
    seq_lens: Tensor,
    softmax_scale: float,
    causal: bool,
    out: Tensor,
    lse: Optional[Tensor],
    workspace: Optional[Tensor],
    kv_format: str,
    kv_scale: float,
    kv_scale_tensor: Optional[Tensor],
) -> None:
    if workspace is None:
        try:
            workspace = _cached_workspace(q.device, *_query_shape("mla::decode", q))
        except MlaError:
            # Unservable shapes: let the call's own checks report them against q.
            workspace = torch.empty(0, dtype=torch.uint8, device=q.device)
    fn(
        q.detach(),
        _bytes(kv_cache.detach()),
        block_table,
        seq_lens,
        softmax_scale,
        out.detach(),
        workspace,
        q_pe=_detached(q_pe),
        lse=_detached(lse),
        causal=causal,
        kv_format=kv_format,
        kv_scale=_op_scale("mla::decode", kv_scale, kv_scale_tensor),
        stream=_stream(q),
    )


@torch.library.custom_op("mla_decode::decode", mutates_args=("out", "lse", "workspace"))
def _decode_op(
    q: Tensor,
    q_pe: Optional[Tensor],
    kv_cache: Tensor,
    block_table: Tensor,
    seq_lens: Tensor,
    softmax_scale: float,
    causal: bool,
    out: Tensor,
    lse: Optional[Tensor],
    workspace: Optional[Tensor],
    kv_format: str = "same_as_q",
    kv_scale: float = 1.0,
    kv_scale_tensor: Optional[Tensor] = None,
) -> None:
    _run_decode(
        _C.decode,
        q,
        q_pe,
        kv_cache,
        block_table,
        seq_lens,
        softmax_scale,
        causal,
        out,
        lse,
        workspace,
        kv_format,
        kv_scale,
        kv_scale_tensor,
    )


@torch.library.custom_op("mla_decode::plan", mutates_args=("workspace",))
def _plan_op(
    q: Tensor,
    q_pe: Optional[Tensor],
    kv_cache: Tensor,
    block_table: Tensor,
    seq_lens: Tensor,
    softmax_scale: float,
    causal: bool,
    out: Tensor,
    lse: Optional[Tensor],
    workspace: Tensor,
    kv_format: str = "same_as_q",
    kv_scale: float = 1.0,
    kv_scale_tensor: Optional[Tensor] = None,
) -> None:
    _run_decode(
        _C.plan,
        q,
        q_pe,
        kv_cache,
        block_table,
        seq_lens,
        softmax_scale,
        causal,
        out,
        lse,
        workspace,
        kv_format,
        kv_scale,
        kv_scale_tensor,
    )


@torch.library.custom_op("mla_decode::decode_planned", mutates_args=("out", "lse", "workspace"))
def _decode_planned_op(
    q: Tensor,
    q_pe: Optional[Tensor],
    kv_cache: Tensor,
    block_table: Tensor,
    seq_lens: Tensor,
    softmax_scale: float,
    causal: bool,
    out: Tensor,
    lse: Optional[Tensor],
    workspace: Tensor,
    kv_format: str = "same_as_q",
    kv_scale: float = 1.0,
    kv_scale_tensor: Optional[Tensor] = None,
) -> None:
    _run_decode(
        _C.decode_planned,
        q,
        q_pe,
        kv_cache,
        block_table,
        seq_lens,
        softmax_scale,
        causal,
        out,
        lse,
        workspace,
        kv_format,
        kv_scale,
        kv_scale_tensor,
    )


@torch.library.custom_op("mla_decode::write_kv_cache", mutates_args=("kv_cache",))
def _write_kv_cache_op(
    kv_c: Tensor,
    k_pe: Tensor,
    slot_mapping: Tensor,
    kv_cache: Tensor,
    kv_format: str = "same_as_q",
    kv_scale: float = 1.0,
    kv_scale_tensor: Optional[Tensor] = None,
    ds_mla_pow2_scale: bool = False,
) -> None:
    _C.write_kv_cache(
        kv_c.detach(),
        k_pe.detach(),
        slot_mapping,
        _bytes(kv_cache.detach()),
        kv_format=kv_format,
        kv_scale=_op_scale("mla::write_kv_cache", kv_scale, kv_scale_tensor),
        ds_mla_pow2_scale=ds_mla_pow2_scale,
        stream=_stream(kv_cache),
    )


@torch.library.custom_op("mla_decode::merge_states", mutates_args=("out", "lse"))
def _merge_states_op(
    out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor, out: Tensor, lse: Optional[Tensor]
) -> None:
    _C.merge_states(
        out_a.detach(),
        lse_a.detach(),
        out_b.detach(),
        lse_b.detach(),
        out.detach(),
        lse=_detached(lse),
        stream=_stream(out_a),
    )


# The ops only write their mutable arguments, so their fake implementations have nothing to do.
for _op in (_decode_op, _plan_op, _decode_planned_op, _write_kv_cache_op, _merge_states_op):
    _op.register_fake(lambda *args: None)


def _op_scale(fn: str, kv_scale: float, kv_scale_tensor: Optional[Tensor]):
    """The kv_scale argument of the extension: the float, or the tensor as one element."""
    if kv_scale_tensor is None:
        return kv_scale
    if kv_scale != 1.0:
        raise InvalidArgumentError(
            f"{fn}: argument 'kv_scale': must stay 1 when kv_scale_tensor gives the scale, "
            f"got {kv_scale}"
        )
    return kv_scale_tensor.detach().reshape(1)


def _split_scale(kv_scale) -> Tuple[float, Optional[Tensor]]:
    """kv_scale as the ops take it: (float, None) for a number or None, (1.0, tensor) for a
    tensor."""
    if kv_scale is None:
        return 1.0, None
    if isinstance(kv_scale, Tensor):
        return 1.0, kv_scale
    return float(kv_scale), None


def _outputs(
    q: Tensor, out: Optional[Tensor], lse: Optional[Tensor], return_lse: bool, fn: str = "mla::decode"
):
    """out and lse of a call on q: those given, else new ones (lse only with return_lse)."""
    batch, s_q, h_q = _query_shape(fn, q)
    if out is None:
        out = q.new_empty((batch, s_q, h_q, HEAD_DIM_V))
    if lse is None and return_lse:
        lse = torch.empty((batch, s_q, h_q), dtype=torch.float32, device=q.device)
    return out, lse


def decode(
    q: Tensor,
    kv_cache: Tensor,
    block_table: Tensor,
    seq_lens: Tensor,
    softmax_scale: float,
    *,
    q_pe: Optional[Tensor] = None,
    causal: bool = False,
    kv_format: str = "same_as_q",
    kv_scale=None,
    out: Optional[Tensor] = None,
    lse: Optional[Tensor] = None,
    return_lse: bool = False,
    workspace: Optional[Tensor] = None,
):
    """MLA decode (see mla_decode.decode for shapes and semantics). Returns out, or (out, lse)
    when return_lse is true or lse is given. Empty rows give out = 0 and lse = -inf."""
    _require("mla::decode", q=q, kv_cache=kv_cache, block_table=block_table, seq_lens=seq_lens)
    lse_given = lse is not None
    out, lse = _outputs(q, out, lse, return_lse)
    torch.ops.mla_decode.decode(
        q,
        q_pe,
        kv_cache,
        block_table,
        seq_lens,
        float(softmax_scale),
        bool(causal),
        out,
        lse,
        workspace,
        kv_format,
        *_split_scale(kv_scale),
    )
    return (out, lse) if return_lse or lse_given else out


def plan(
    q: Tensor,
    kv_cache: Tensor,
    block_table: Tensor,
    seq_lens: Tensor,
    softmax_scale: float,
    *,
    out: Tensor,
    workspace: Tensor,
    q_pe: Optional[Tensor] = None,
    lse: Optional[Tensor] = None,
    causal: bool = False,
    kv_format: str = "same_as_q",
    kv_scale=None,
) -> None:
    """Compute one step's split-KV schedule into `workspace`, for decode_planned() calls of every
    layer of the step (same seq_lens and shapes). out and lse are validated, not written."""
    _require(
        "mla::plan",
        q=q,
        kv_cache=kv_cache,
        block_table=block_table,
        seq_lens=seq_lens,
        out=out,
        workspace=workspace,
    )
    torch.ops.mla_decode.plan(
        q,
        q_pe,
        kv_cache,
        block_table,
        seq_lens,
        float(softmax_scale),
        bool(causal),
        out,
        lse,
        workspace,
        kv_format,
        *_split_scale(kv_scale),
    )


def decode_planned(
    q: Tensor,
    kv_cache: Tensor,
    block_table: Tensor,
    seq_lens: Tensor,
    softmax_scale: float,
    *,
    workspace: Tensor,
    q_pe: Optional[Tensor] = None,
    causal: bool = False,
    kv_format: str = "same_as_q",
    kv_scale=None,
    out: Optional[Tensor] = None,
    lse: Optional[Tensor] = None,
    return_lse: bool = False,
):
    """decode() with the schedule that the last plan() on `workspace` computed."""
    _require(
        "mla::decode_planned",
        q=q,
        kv_cache=kv_cache,
        block_table=block_table,
        seq_lens=seq_lens,
        workspace=workspace,
    )
    lse_given = lse is not None
    out, lse = _outputs(q, out, lse, return_lse)
    torch.ops.mla_decode.decode_planned(
        q,
        q_pe,
        kv_cache,
        block_table,
        seq_lens,
        float(softmax_scale),
        bool(causal),
        out,
        lse,
        workspace,
        kv_format,
        *_split_scale(kv_scale),
    )
    return (out, lse) if return_lse or lse_given else out


def write_kv_cache(
    kv_c: Tensor,
    k_pe: Tensor,
    slot_mapping: Tensor,
    kv_cache: Tensor,
    *,
    kv_format: str = "same_as_q",
    kv_scale=None,
    ds_mla_pow2_scale: bool = False,
) -> None:
    """vLLM's concat_and_cache_mla: kv_cache[slot] = concat(kv_c[t], k_pe[t]); slot -1 skipped.
    fp8 caches are quantised (see mla_decode.write_kv_cache)."""
    _require(
        "mla::write_kv_cache", kv_c=kv_c, k_pe=k_pe, slot_mapping=slot_mapping, kv_cache=kv_cache
    )
    torch.ops.mla_decode.write_kv_cache(
        kv_c, k_pe, slot_mapping, kv_cache, kv_format, *_split_scale(kv_scale), ds_mla_pow2_scale
    )


def merge_states(
    out_a: Tensor,
    lse_a: Tensor,
    out_b: Tensor,
    lse_b: Tensor,
    *,
    out: Optional[Tensor] = None,
    lse: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Merge two partial results by their natural-log LSEs (-inf = empty part). out_*: [T, H, D],
    lse_*: [T, H] float32, any strides. Returns (out, lse)."""
    _require("mla::merge_states", out_a=out_a, lse_a=lse_a, out_b=out_b, lse_b=lse_b)
    if out is None:
        out = torch.empty_like(out_a, memory_format=torch.contiguous_format)
    if lse is None:
        lse = torch.empty(out_a.shape[:2], dtype=torch.float32, device=out_a.device)
    torch.ops.mla_decode.merge_states(out_a, lse_a, out_b, lse_b, out, lse)
    return out, lse


def get_mla_metadata(cache_seqlens: Tensor, num_q_tokens_per_head_k: int, num_heads_k: int):
    """FlashMLA's scheduler-metadata call, for drop-in use. mla_decode makes its split-KV
    schedule on the device inside each call, so this returns (None, None), which
    flash_mla_with_kvcache accepts as tile_scheduler_metadata and num_splits."""
    return None, None


def flash_mla_with_kvcache(
    q: Tensor,
    k_cache: Tensor,
    block_table: Tensor,
    cache_seqlens: Tensor,
    head_dim_v: int,
    tile_scheduler_metadata=None,
    num_splits=None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Drop-in for FlashMLA's function of the same name.

    q: [batch, s_q, h_q, 576]; k_cache: [num_blocks, page_size, 1, 576] (or without the head
    dimension of size 1); block_table: [batch, max_blocks] int32; cache_seqlens: [batch] int32.
    Returns out [batch, s_q, h_q, 512] and lse [batch, h_q, s_q] float32 (natural log).
    tile_scheduler_metadata and num_splits are accepted and ignored: the schedule is computed on
    the device. Unlike FlashMLA, rows with nothing visible get lse = -inf (FlashMLA: +inf).
    """
    _require(
        "flash_mla_with_kvcache",
        q=q,
        k_cache=k_cache,
        block_table=block_table,
        cache_seqlens=cache_seqlens,
    )
    if head_dim_v != HEAD_DIM_V:
        raise ValueError(
            f"flash_mla_with_kvcache: head_dim_v must be {HEAD_DIM_V}, got {head_dim_v}"
        )
    if k_cache.dim() == 4:
        if k_cache.shape[2] != 1:
            raise ValueError(
                "flash_mla_with_kvcache: k_cache must have one KV head "
                f"([num_blocks, page_size, 1, {HEAD_DIM_QK}]), got {list(k_cache.shape)}"
            )
        k_cache = k_cache.squeeze(2)
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    batch, s_q, h_q = _query_shape("flash_mla_with_kvcache", q)
    out = q.new_empty((batch, s_q, h_q, HEAD_DIM_V))
    lse = torch.empty((batch, h_q, s_q), dtype=torch.float32, device=q.device)
    torch.ops.mla_decode.decode(
        q,
        None,
        k_cache,
        block_table,
        cache_seqlens,
        float(softmax_scale),
        bool(causal),
        out,
        lse.transpose(1, 2),
        None,
    )
    return out, lse


from ._torch_sparse import sparse_decode, sparse_workspace_size  # noqa: E402

__all__ = [
    "alloc_workspace",
    "decode",
    "decode_planned",
    "flash_mla_with_kvcache",
    "get_mla_metadata",
    "merge_states",
    "plan",
    "reserve_workspace",
    "sparse_decode",
    "sparse_workspace_size",
    "workspace_size",
    "write_kv_cache",
]
