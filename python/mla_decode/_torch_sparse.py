"""The sparse decode torch op, ``torch.ops.mla_decode.sparse_decode``, and its wrapper (exported by
mla_decode.torch)::

    sparse_decode(q, q_pe?, kv_cache, indices, topk_lengths?, attn_sink?, softmax_scale,
                  out!, lse!?, workspace!?, kv_format="same_as_q", kv_scale=1.0,
                  kv_scale_tensor?) -> ()

Semantics as mla_decode.sparse.sparse_decode (the returned lse includes the sink); kv_format,
kv_scale and kv_scale_tensor as in the decode op (fp8 caches: uint8 or float8_e4m3fn tensors; CPU
only, CUDA raises UnsupportedError). CPU and CUDA tensors (CUDA: on the current stream). Without
``workspace`` one is allocated per call on q's device.
"""

from typing import Optional

import torch
from torch import Tensor

from . import _C, _bytes, _query_shape, _require
from .errors import MlaError
from .torch import _aligned_bytes, _detached, _op_scale, _outputs, _split_scale, _stream


def sparse_workspace_size(batch: int, s_q: int, h_q: int, topk: int, device="cpu") -> int:
    """Bytes of workspace a sparse decode of these shapes needs on `device` (all CPU threads)."""
    device = torch.device(device)
    return _C.sparse_workspace_size(
        batch,
        s_q,
        h_q,
        topk,
        cuda=device.type == "cuda",
        device_index=device.index or 0,
        num_threads=0,
    )


@torch.library.custom_op("mla_decode::sparse_decode", mutates_args=("out", "lse", "workspace"))
def _sparse_decode_op(
    q: Tensor,
    q_pe: Optional[Tensor],
    kv_cache: Tensor,
    indices: Tensor,
    topk_lengths: Optional[Tensor],
    attn_sink: Optional[Tensor],
    softmax_scale: float,
    out: Tensor,
    lse: Optional[Tensor],
    workspace: Optional[Tensor],
    kv_format: str = "same_as_q",
    kv_scale: float = 1.0,
    kv_scale_tensor: Optional[Tensor] = None,
) -> None:
    if workspace is None:
        try:
            batch, s_q, h_q = _query_shape("mla::sparse_decode", q)
            nbytes = sparse_workspace_size(batch, s_q, h_q, indices.shape[-1], q.device)
            workspace = _aligned_bytes(nbytes, q.device)
        except (MlaError, IndexError):
            # Unservable shapes or devices: let the call's own checks report them.
            workspace = torch.empty(0, dtype=torch.uint8, device=q.device)
    _C.sparse_decode(
        q.detach(),
        _bytes(kv_cache.detach()),
        indices,
        softmax_scale,
        out.detach(),
        workspace,
        q_pe=_detached(q_pe),
        topk_lengths=topk_lengths,
        attn_sink=_detached(attn_sink),
        lse=_detached(lse),
        kv_format=kv_format,
        kv_scale=_op_scale("mla::sparse_decode", kv_scale, kv_scale_tensor),
        stream=_stream(q),
    )


# The op only writes its mutable arguments, so its fake implementation has nothing to do.
_sparse_decode_op.register_fake(lambda *args: None)


def sparse_decode(
    q: Tensor,
    kv_cache: Tensor,
    indices: Tensor,
    softmax_scale: float,
    *,
    q_pe: Optional[Tensor] = None,
    topk_lengths: Optional[Tensor] = None,
    attn_sink: Optional[Tensor] = None,
    kv_format: str = "same_as_q",
    kv_scale=None,
    out: Optional[Tensor] = None,
    lse: Optional[Tensor] = None,
    return_lse: bool = False,
    workspace: Optional[Tensor] = None,
):
    """Sparse MLA decode (see mla_decode.sparse_decode). Returns out, or (out, lse) when
    return_lse is true or lse is given. lse includes the sink; empty rows give out = 0 and
    lse = -inf (attn_sink[h] with a sink). kv_format and kv_scale (a float, or a one-element
    or 0-dim float32 tensor such as vLLM's k_scale) as in mla_decode.torch.decode."""
    _require("mla::sparse_decode", q=q, kv_cache=kv_cache, indices=indices)
    lse_given = lse is not None
    out, lse = _outputs(q, out, lse, return_lse, "mla::sparse_decode")
    torch.ops.mla_decode.sparse_decode(
        q,
        q_pe,
        kv_cache,
        indices,
        topk_lengths,
        attn_sink,
        float(softmax_scale),
        out,
        lse,
        workspace,
        kv_format,
        *_split_scale(kv_scale),
    )
    return (out, lse) if return_lse or lse_given else out
