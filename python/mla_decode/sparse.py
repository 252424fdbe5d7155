"""Sparse MLA decode (DeepSeek sparse attention): each query token attends to the cache slots an
indexer chose for it. Framework-neutral, like mla_decode.decode. The cache takes decode()'s
formats (kv_format "same_as_q", "fp8_e4m3" with kv_scale, "fp8_ds_mla"): all of them on the CPU;
CUDA serves bf16/fp16 caches (the portable sm_80+ kernel) and raises UnsupportedError for fp8.

For request b, query token s, head h, with the entries k < n_b = topk_lengths[b] (all topk when
topk_lengths is None) whose slot = indices[b, s, k] is not -1 (natural-log LSE)::

    logit[k] = softmax_scale * dot(q[b, s, h, :576], V[slot, :576])
    Z        = sum_k exp(logit[k]) + (exp(attn_sink[h]) if attn_sink is given else 0)
    out[b, s, h] = sum_k exp(logit[k]) * V[slot, :512] / Z;   lse[b, s, h] = ln(Z)

V[slot] is row slot % page_size of page slot // page_size. The returned lse INCLUDES the sink
(it is the normaliser of out), so results with a sink must not be merged with merge_states().
Duplicated slots count once per occurrence. Rows with no entry: out = 0 and lse = -inf, or
lse = attn_sink[h] with a sink. A slot outside [-1, num_pages * page_size) among the entries
that count, or a topk_lengths[b] outside [0, topk], raises DataError before anything is written.
"""

from . import _C
from .errors import MlaError

MAX_TOPK = _C.MAX_TOPK


def sparse_workspace_size(batch, s_q, h_q, topk, *, device="cpu", num_threads=0):
    """Bytes of workspace sparse_decode() needs for these shapes (CPU; depends on num_threads)."""
    from . import _parse_device

    is_cuda, index = _parse_device(device)
    return _C.sparse_workspace_size(
        batch, s_q, h_q, topk, cuda=is_cuda, device_index=index, num_threads=num_threads
    )


def alloc_sparse_workspace(like, batch, s_q, h_q, topk, *, num_threads=0):
    """A WORKSPACE_ALIGNMENT-byte-aligned uint8 workspace on like's device for sparse_decode()."""
    from . import WORKSPACE_ALIGNMENT, _device_string, _empty

    nbytes = sparse_workspace_size(
        batch, s_q, h_q, topk, device=_device_string(like), num_threads=num_threads
    )
    raw = _empty(like, (nbytes + WORKSPACE_ALIGNMENT,), "uint8")
    offset = -_C.data_ptr(raw) % WORKSPACE_ALIGNMENT
    return raw[offset : offset + nbytes]


def sparse_decode(
    q,
    kv_cache,
    indices,
    softmax_scale,
    *,
    q_pe=None,
    topk_lengths=None,
    attn_sink=None,
    kv_format="same_as_q",
    kv_scale=None,
    out=None,
    lse=None,
    return_lse=False,
    workspace=None,
    num_threads=0,
    reference=False,
    stream=None,
):
    """Sparse MLA decode. Returns out, or (out, lse) when return_lse is true or lse is given.

    q: [batch, s_q, h_q, 576] bf16/fp16 (or q_nope [.., 512] with q_pe [.., 64]);
    kv_cache: [num_pages, page_size, 576], same dtype; indices: [batch, s_q, topk] int32
    (-1 = no token); topk_lengths: [batch] int32 or None; attn_sink: [h_q] float32 or None.
    kv_format, kv_scale: as in decode() (fp8_e4m3: a [num_pages, page_size, 576] uint8 or
    float8_e4m3fn cache and its scale, a float or a one-element float32 array; fp8_ds_mla: a
    [num_pages, page_size, 656] cache whose tokens carry their own scales).
    out: [batch, s_q, h_q, 512]; lse: [batch, s_q, h_q] float32, any strides.
    """
    from . import _bytes, _empty, _outputs, _query_shape, _require, _scale, _stream

    _require("mla::sparse_decode", q=q, kv_cache=kv_cache, indices=indices)
    batch, s_q, h_q = _query_shape("mla::sparse_decode", q)
    lse_given = lse is not None
    out, lse = _outputs(q, (batch, s_q, h_q), out, lse, return_lse)
    if workspace is None:
        try:
            topk = tuple(getattr(indices, "shape", (0, 0, 0)))[-1]
            workspace = alloc_sparse_workspace(q, batch, s_q, h_q, topk, num_threads=num_threads)
        except (MlaError, IndexError, TypeError):
            # Unservable shapes or devices: let the call's own checks report them.
            workspace = _empty(q, (0,), "uint8")
    _C.sparse_decode(
        q,
        _bytes(kv_cache),
        indices,
        softmax_scale,
        out,
        workspace,
        q_pe=q_pe,
        topk_lengths=topk_lengths,
        attn_sink=attn_sink,
        lse=lse,
        kv_format=kv_format,
        kv_scale=_scale(kv_scale),
        num_threads=num_threads,
        reference=reference,
        stream=_stream(q, stream),
    )
    return (out, lse) if return_lse or lse_given else out
