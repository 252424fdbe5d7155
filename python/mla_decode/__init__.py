"""mla_decode: MLA (DeepSeek Multi-head Latent Attention) decode against a paged latent KV cache.

Framework-neutral API. Arrays are anything that exports DLPack or the buffer protocol: numpy
(bfloat16 through ``ml_dtypes.bfloat16``), torch, cupy; jax arrays as inputs. Outputs that are
not given are allocated with the framework of the first input (numpy, torch or cupy; pass
``out=``, ``lse=`` and ``workspace=`` for others). PyTorch users want ``mla_decode.torch``:
custom ops that work under torch.compile and CUDA-graph capture.

What is computed (natural-log LSE), for request b, query token s, head h, L = seq_lens[b]::

    visible = L - (s_q - 1 - s) if causal else L          # keys [0, visible)
    logits[j] = softmax_scale * dot(q[b, s, h, :576], K[b, j, :576])
    out[b, s, h] = softmax(logits) @ K[b, :visible, :512];   lse[b, s, h] = logsumexp(logits)

where K[b, j] is row j % page_size of page block_table[b, j // page_size]. Rows with nothing
visible (seq_lens[b] == 0, e.g. CUDA-graph padding) get out = 0 and lse = -inf (FlashMLA writes
+inf there). Every element of out and lse is written, so they may be uninitialised.

GPU calls run on ``stream`` (an int cudaStream_t); when it is None they run on the current
stream of the array's framework (torch, cupy), else on the legacy default stream.
"""

from . import _C
from .errors import (
    CudaError,
    DataError,
    InternalError,
    InvalidArgumentError,
    MlaError,
    UnsupportedError,
)

HEAD_DIM_QK = _C.HEAD_DIM_QK
HEAD_DIM_V = _C.HEAD_DIM_V
HEAD_DIM_ROPE = _C.HEAD_DIM_ROPE
MAX_HEADS_Q = _C.MAX_HEADS_Q
MAX_SEQ_Q = _C.MAX_SEQ_Q
MAX_PAGE_SIZE = _C.MAX_PAGE_SIZE
# Required alignment (bytes) of a workspace's first byte; alloc_workspace() provides it.
WORKSPACE_ALIGNMENT = _C.WORKSPACE_ALIGNMENT
# DLPack device codes.
_DL_CPU = 1
_DL_CUDA = 2


def cuda_available_in_build():
    """Whether this build has the CUDA backend compiled in."""
    return _C.cuda_available_in_build()


def cuda_device_count():
    """Number of CUDA devices usable now (0 without a driver, a device or the CUDA backend)."""
    return _C.cuda_device_count()


def _require(fn, **arrays):
    """Raise InvalidArgumentError naming the first required array argument given as None (the
    extension would otherwise raise a TypeError listing its whole signature)."""
    for name, value in arrays.items():
        if value is None:
            raise InvalidArgumentError(f"{fn}: argument '{name}': is required but None was given")


def _framework(x):
    return type(x).__module__.split(".", 1)[0]


def _device_of(x):
    """(is_cuda, index) of an array, from its DLPack device."""
    get = getattr(x, "__dlpack_device__", None)
    if get is None:
        return False, 0  # buffer-protocol objects live on the host
    kind, index = get()
    return int(kind) == _DL_CUDA, int(index)


def _parse_device(device):
    """Accepts "cpu", "cuda", "cuda:N", an int N (CUDA), or an object with .type and .index."""
    if isinstance(device, int):
        return True, device
    if isinstance(device, str):
        kind, _, index = device.partition(":")
        if kind in ("cpu", "cuda"):
            return kind == "cuda", int(index) if index else 0
    elif getattr(device, "type", None) in ("cpu", "cuda") and hasattr(device, "index"):
        return device.type == "cuda", device.index or 0
    raise InvalidArgumentError(
        f"mla_decode: argument 'device': expected 'cpu', 'cuda', 'cuda:N' or an int, got {device!r}"
    )


def _empty(like, shape, dtype=None):
    """An uninitialised array on like's device and framework; dtype None means like's dtype."""
    framework = _framework(like)
    if framework == "numpy":
        import numpy as np

        return np.empty(shape, dtype=like.dtype if dtype is None else dtype)
    if framework == "torch":
        import torch

        dt = like.dtype if dtype is None else getattr(torch, dtype)
        return torch.empty(shape, dtype=dt, device=like.device)
    if framework == "cupy":
        import cupy

        with like.device:
            return cupy.empty(shape, dtype=like.dtype if dtype is None else dtype)
    raise TypeError(
        f"mla_decode: cannot allocate outputs like a {type(like).__module__}."
        f"{type(like).__name__}; pass out= (and lse=, workspace=) as writable arrays"
    )


def _outputs(q, shape, out, lse, return_lse):
    """out and lse of a call on q with shape (batch, s_q, h_q): those given, else new ones (lse
    only with return_lse)."""
    if out is None:
        out = _empty(q, shape + (HEAD_DIM_V,))
    if lse is None and return_lse:
        lse = _empty(q, shape, "float32")
    return out, lse


def _stream(like, stream):
    if stream is not None:
        return int(stream)
    is_cuda, _ = _device_of(like)
    if not is_cuda:
        return 0
    framework = _framework(like)
    if framework == "torch":
        import torch

        return torch.cuda.current_stream(like.device).cuda_stream
    if framework == "cupy":
        import cupy

        return cupy.cuda.get_current_stream().ptr
    return 0


def workspace_size(batch, s_q, h_q, *, device="cpu", num_threads=0):
    """Bytes of workspace decode() needs for these shapes on `device`.

    Depends on shapes, the device's SM count and (CPU) num_threads only, never on seq_lens, so
    an engine allocates it once. num_threads must match the decode calls (0 = all cores).
    """
    is_cuda, index = _parse_device(device)
    return _C.workspace_size(
        batch, s_q, h_q, cuda=is_cuda, device_index=index, num_threads=num_threads
    )


def alloc_workspace(like, batch, s_q, h_q, *, num_threads=0):
    """A WORKSPACE_ALIGNMENT-byte-aligned uint8 workspace on like's device, allocated with like's
    framework."""
    nbytes = workspace_size(batch, s_q, h_q, device=_device_string(like), num_threads=num_threads)
    raw = _empty(like, (nbytes + WORKSPACE_ALIGNMENT,), "uint8")
    offset = -_C.data_ptr(raw) % WORKSPACE_ALIGNMENT
    return raw[offset : offset + nbytes]


def _device_string(like):
    is_cuda, index = _device_of(like)
    return f"cuda:{index}" if is_cuda else "cpu"


def _bytes(kv_cache):
    """fp8 caches as the library takes them: a torch float8_e4m3fn tensor viewed as uint8 (numpy
    float8 arrays are viewed in the extension); everything else unchanged."""
    if _framework(kv_cache) == "torch" and str(getattr(kv_cache, "dtype", "")).endswith(
        "float8_e4m3fn"
    ):
        import torch

        return kv_cache.view(torch.uint8)
    return kv_cache


def _scale(kv_scale):
    """A 0-dimensional scale tensor (torch's k_scale) as the one-element array the library
    takes; floats and other arrays unchanged."""
    shape = getattr(kv_scale, "shape", None)
    if shape is not None and len(shape) == 0:
        return kv_scale.reshape(1)
    return kv_scale


def _query_shape(fn, q):
    shape = tuple(getattr(q, "shape", ()))
    if len(shape) != 4:
        raise InvalidArgumentError(
            f"{fn}: argument 'q': expected shape [batch, s_q, h_q, 576] (or [.., 512] with "
            f"q_pe), got {list(shape) if shape else type(q).__name__}"
        )
    return shape[:3]


def decode(
    q,
    kv_cache,
    block_table,
    seq_lens,
    softmax_scale,
    *,
    q_pe=None,
    causal=False,
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
    """MLA decode attention. Returns out, or (out, lse) when return_lse is true or lse is given.

    q: [batch, s_q, h_q, 576] bf16/fp16, or q_nope [.., 512] with q_pe [.., 64].
    kv_cache: [num_pages, page_size, 576], same dtype; block_table: [batch, pages] int32;
    seq_lens: [batch] int32 (cached tokens per request, the newest s_q being decoded).
    kv_format: "same_as_q" (kv_cache has q's dtype), "fp8_e4m3" (kv_cache [num_pages,
    page_size, 576] uint8 or float8_e4m3fn, dequantised as value * kv_scale) or "fp8_ds_mla"
    ([num_pages, page_size, 656] bytes per token: 512 e4m3 latent values, 4 float32 scales,
    64 bf16 RoPE values; see docs/kv_formats.md). kv_scale: fp8_e4m3's scale, a float or a
    one-element float32 array on the call's device (None: 1).
    out: [batch, s_q, h_q, 512]; lse: [batch, s_q, h_q] float32, any strides (so a permuted
    [batch, h_q, s_q] buffer works). workspace: from alloc_workspace(), reusable across calls
    with the same shapes; allocated per call when None. num_threads and reference apply to the
    CPU (reference=True runs the double-precision reference implementation).
    """
    _require("mla::decode", q=q, kv_cache=kv_cache, block_table=block_table, seq_lens=seq_lens)
    batch, s_q, h_q = _query_shape("mla::decode", q)
    lse_given = lse is not None
    out, lse = _outputs(q, (batch, s_q, h_q), out, lse, return_lse)
    if workspace is None:
        try:
            workspace = alloc_workspace(q, batch, s_q, h_q, num_threads=num_threads)
        except MlaError:
            # Unservable shapes: let decode's own checks report them against q.
            workspace = _empty(q, (0,), "uint8")
    _C.decode(
        q,
        _bytes(kv_cache),
        block_table,
        seq_lens,
        softmax_scale,
        out,
        workspace,
        q_pe=q_pe,
        lse=lse,
        causal=causal,
        kv_format=kv_format,
        kv_scale=_scale(kv_scale),
        num_threads=num_threads,
        reference=reference,
        stream=_stream(q, stream),
    )
    return (out, lse) if return_lse or lse_given else out


def plan(
    q,
    kv_cache,
    block_table,
    seq_lens,
    softmax_scale,
    *,
    out,
    workspace,
    q_pe=None,
    lse=None,
    causal=False,
    kv_format="same_as_q",
    kv_scale=None,
    num_threads=0,
    stream=None,
):
    """Compute one step's split-KV schedule from seq_lens into `workspace` (on the device, no
    host synchronisation); every layer of the step can then share it via decode_planned().
    Takes decode()'s arguments, all of which are validated; out and lse are not written."""
    _require(
        "mla::plan",
        q=q,
        kv_cache=kv_cache,
        block_table=block_table,
        seq_lens=seq_lens,
        out=out,
        workspace=workspace,
    )
    _C.plan(
        q,
        _bytes(kv_cache),
        block_table,
        seq_lens,
        softmax_scale,
        out,
        workspace,
        q_pe=q_pe,
        lse=lse,
        causal=causal,
        kv_format=kv_format,
        kv_scale=_scale(kv_scale),
        num_threads=num_threads,
        stream=_stream(q, stream),
    )


def decode_planned(
    q,
    kv_cache,
    block_table,
    seq_lens,
    softmax_scale,
    *,
    out,
    workspace,
    q_pe=None,
    lse=None,
    causal=False,
    kv_format="same_as_q",
    kv_scale=None,
    num_threads=0,
    stream=None,
):
    """decode() with the schedule that the last plan() on `workspace` computed; seq_lens and
    the shapes must be those plan() saw. Returns out, or (out, lse) when lse is given."""
    _require(
        "mla::decode_planned",
        q=q,
        kv_cache=kv_cache,
        block_table=block_table,
        seq_lens=seq_lens,
        out=out,
        workspace=workspace,
    )
    _C.decode_planned(
        q,
        _bytes(kv_cache),
        block_table,
        seq_lens,
        softmax_scale,
        out,
        workspace,
        q_pe=q_pe,
        lse=lse,
        causal=causal,
        kv_format=kv_format,
        kv_scale=_scale(kv_scale),
        num_threads=num_threads,
        stream=_stream(q, stream),
    )
    return out if lse is None else (out, lse)


def check_data_errors(workspace, *, stream=None):
    """Raise DataError naming the first bad request if the device found out-of-range seq_lens or
    block_table entries since the last plan on `workspace` (those rows were written as NaN).
    Synchronises the stream on CUDA. On the CPU, decode() rejects bad data up front."""
    _require("mla::check_data_errors", workspace=workspace)
    _C.check_data_errors(workspace, stream=_stream(workspace, stream))


def write_kv_cache(
    kv_c,
    k_pe,
    slot_mapping,
    kv_cache,
    *,
    kv_format="same_as_q",
    kv_scale=None,
    ds_mla_pow2_scale=False,
    stream=None,
):
    """kv_cache[slot // page_size, slot % page_size] = concat(kv_c[t], k_pe[t]) for each token t
    with slot = slot_mapping[t] != -1 (padding). kv_c: [T, 512], k_pe: [T, 64], slot_mapping:
    [T] int64, kv_cache: [num_pages, page_size, 576] of kv_c's dtype, written in place.

    fp8 caches (kv_format and kv_scale as in decode()) are quantised: round to nearest even,
    saturating at +-448 (finite input never gives NaN). fp8_e4m3 stores value / kv_scale;
    fp8_ds_mla computes one scale per 128 latent values, max(amax, 1e-4) / 448, rounded up to a
    power of two when ds_mla_pow2_scale, and stores the RoPE values as bf16."""
    _require(
        "mla::write_kv_cache", kv_c=kv_c, k_pe=k_pe, slot_mapping=slot_mapping, kv_cache=kv_cache
    )
    _C.write_kv_cache(
        kv_c,
        k_pe,
        slot_mapping,
        _bytes(kv_cache),
        kv_format=kv_format,
        kv_scale=_scale(kv_scale),
        ds_mla_pow2_scale=ds_mla_pow2_scale,
        stream=_stream(kv_cache, stream),
    )


def merge_states(out_a, lse_a, out_b, lse_b, *, out=None, lse=None, stream=None):
    """Merge two partial attention results over disjoint key sets by their natural-log LSEs.

    out_*: [T, H, D] bf16/fp16/fp32, lse_*: [T, H] float32 (any strides). -inf marks an empty
    part, which contributes nothing; both empty gives out = 0, lse = -inf. Returns (out, lse).
    """
    _require("mla::merge_states", out_a=out_a, lse_a=lse_a, out_b=out_b, lse_b=lse_b)
    shape = tuple(getattr(out_a, "shape", ()))
    if out is None:
        out = _empty(out_a, shape)
    if lse is None and len(shape) == 3:
        lse = _empty(out_a, shape[:2], "float32")
    _C.merge_states(out_a, lse_a, out_b, lse_b, out, lse=lse, stream=_stream(out_a, stream))
    return out, lse


from .sparse import (  # noqa: E402  (uses the helpers above)
    MAX_TOPK,
    alloc_sparse_workspace,
    sparse_decode,
    sparse_workspace_size,
)

__all__ = [
    "HEAD_DIM_QK",
    "HEAD_DIM_ROPE",
    "HEAD_DIM_V",
    "MAX_HEADS_Q",
    "MAX_PAGE_SIZE",
    "MAX_SEQ_Q",
    "MAX_TOPK",
    "WORKSPACE_ALIGNMENT",
    "CudaError",
    "DataError",
    "InternalError",
    "InvalidArgumentError",
    "MlaError",
    "UnsupportedError",
    "alloc_sparse_workspace",
    "alloc_workspace",
    "check_data_errors",
    "cuda_available_in_build",
    "cuda_device_count",
    "decode",
    "decode_planned",
    "merge_states",
    "plan",
    "sparse_decode",
    "sparse_workspace_size",
    "workspace_size",
    "write_kv_cache",
]
