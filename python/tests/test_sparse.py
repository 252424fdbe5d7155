"""mla_decode.sparse_decode (numpy; torch op when torch is installed) against a float64 spec of
its own: -1 entries, duplicates, topk_lengths with garbage beyond it, attn_sink (lse includes
it), empty rows, every unchosen token NaN; fp8 caches (every unchosen token's bytes e4m3 NaN
codes, fp8_ds_mla's scales NaN) against the spec on the dequantised cache; data errors and bad
arguments leave out/lse untouched; without a CUDA device, CUDA sizes are unsupported."""

import ml_dtypes
import numpy as np
import pytest

import mla_decode
from cases import (
    F8,
    FP8_FORMATS,
    LSE_TOL,
    OUT_TOL,
    REFERENCE_OUT_TOL,
    assert_close,
    dequantize,
    nan_cache,
    np_dtype,
    rounded,
)


def spec(q, kv, indices, lengths, sink, scale):
    """float64 sparse decode, SparseDecodeParams' formula."""
    batch, s_q, h_q, _ = q.shape
    page_size = kv.shape[1]
    flat = kv.reshape(-1, kv.shape[-1]).astype(np.float64)
    out = np.zeros((batch, s_q, h_q, 512))
    lse = np.full((batch, s_q, h_q), -np.inf)
    for b in range(batch):
        for s in range(s_q):
            row = indices[b, s, : lengths[b]]
            keys = flat[row[row != -1]]
            for h in range(h_q):
                logits = scale * (keys @ q[b, s, h].astype(np.float64))
                terms = list(logits) + ([float(sink[h])] if sink is not None else [])
                m = max(terms) if terms else -np.inf
                if m == -np.inf:
                    continue
                w = np.exp(logits - m)
                z = w.sum() + (np.exp(sink[h] - m) if sink is not None else 0.0)
                out[b, s, h] = (w @ keys[:, :512]) / z if len(keys) else 0.0
                lse[b, s, h] = m + np.log(z)
    del page_size
    return out, lse


def make_case(rng, dtype, batch=3, s_q=2, h_q=16, topk=40, page_size=16, num_pages=12):
    slots = num_pages * page_size
    kv = np.full((num_pages, page_size, 576), np.nan, dtype=np.float32)
    flat = kv.reshape(slots, 576)
    indices = rng.integers(0, slots, size=(batch, s_q, topk)).astype(np.int32)
    indices[rng.random(indices.shape) < 0.3] = -1
    if topk > 1:
        indices[:, :, 1] = indices[:, :, 0]  # duplicates
    indices[0, s_q - 1, :] = -1  # an empty row
    lengths = np.array([topk, 0, topk // 2][:batch] + [topk] * max(0, batch - 3), dtype=np.int32)
    for b in range(batch):
        chosen = indices[b, :, : lengths[b]]
        for slot in np.unique(chosen[chosen >= 0]):
            flat[slot] = rounded(rng.standard_normal(576, dtype=np.float32), dtype)
        indices[b, :, lengths[b] :] = 2147480000  # garbage that must never be read
    q = rounded(rng.standard_normal((batch, s_q, h_q, 576), dtype=np.float32), dtype)
    sink = rng.uniform(-1, 3, size=h_q).astype(np.float32)
    return q, kv, indices, lengths, sink


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("with_sink", [False, True])
@pytest.mark.parametrize("reference", [False, True])
def test_matches_spec(dtype, with_sink, reference):
    rng = np.random.default_rng(5)
    q, kv, indices, lengths, sink = make_case(rng, dtype)
    scale = 1.0 / np.sqrt(192.0)
    nd = np_dtype(dtype)
    out = np.full((3, 2, 16, 512), np.nan, dtype=nd)
    lse = np.full((3, 2, 16), np.nan, dtype=np.float32)
    mla_decode.sparse_decode(
        q.astype(nd),
        kv.astype(nd),
        indices,
        scale,
        topk_lengths=lengths,
        attn_sink=sink if with_sink else None,
        out=out,
        lse=lse,
        num_threads=3,
        reference=reference,
    )
    want_out, want_lse = spec(q, kv, indices, lengths, sink if with_sink else None, scale)
    tol = REFERENCE_OUT_TOL[dtype] if reference else OUT_TOL[dtype]
    assert_close(out, want_out, *tol, "out")
    assert_close(lse, want_lse, *LSE_TOL, "lse")
    # Empty rows: out = 0, lse = -inf or the sink alone.
    assert np.all(out.astype(np.float32)[0, 1] == 0)
    assert np.all(lse[1] == (sink if with_sink else -np.inf))


def test_returns_lse_and_allocates():
    rng = np.random.default_rng(6)
    q, kv, indices, lengths, _ = make_case(rng, "bfloat16", batch=2, s_q=1, h_q=8, topk=1)
    nd = np_dtype("bfloat16")
    out, lse = mla_decode.sparse_decode(
        q.astype(nd), kv.astype(nd), indices, 0.1, topk_lengths=lengths, return_lse=True
    )
    assert out.shape == (2, 1, 8, 512) and lse.shape == (2, 1, 8)
    want_out, want_lse = spec(q, kv, indices, lengths, None, 0.1)
    assert_close(out, want_out, *OUT_TOL["bfloat16"], "out")
    assert_close(lse, want_lse, *LSE_TOL, "lse")


def test_data_error_writes_nothing():
    rng = np.random.default_rng(7)
    q, kv, indices, lengths, _ = make_case(rng, "bfloat16")
    nd = np_dtype("bfloat16")
    indices[2, 0, 3] = kv.shape[0] * kv.shape[1]  # one past the cache, within topk_lengths[2]
    out = np.full((3, 2, 16, 512), np.nan, dtype=nd)
    lse = np.full((3, 2, 16), np.nan, dtype=np.float32)
    with pytest.raises(mla_decode.DataError, match=r"argument 'indices': indices\[2\]\[0\]\[3\]"):
        mla_decode.sparse_decode(
            q.astype(nd), kv.astype(nd), indices, 0.1, topk_lengths=lengths, out=out, lse=lse
        )
    assert np.isnan(out.astype(np.float32)).all() and np.isnan(lse).all()


def test_invalid_arguments_named():
    rng = np.random.default_rng(8)
    q, kv, indices, _, _ = make_case(rng, "bfloat16")
    nd = np_dtype("bfloat16")
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'indices'"):
        mla_decode.sparse_decode(q.astype(nd), kv.astype(nd), indices.astype(np.int64), 0.1)
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'attn_sink'"):
        mla_decode.sparse_decode(
            q.astype(nd), kv.astype(nd), indices, 0.1, attn_sink=np.zeros(3, np.float32)
        )
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'indices'"):
        mla_decode.sparse_decode(q.astype(nd), kv.astype(nd), None, 0.1)
    if mla_decode.cuda_device_count() == 0:
        with pytest.raises(mla_decode.UnsupportedError):
            mla_decode.sparse_workspace_size(1, 1, 16, 64, device="cuda")
    assert mla_decode.sparse_workspace_size(1, 1, 16, 64) > 0


def test_torch_op():
    torch = pytest.importorskip("torch")
    import mla_decode.torch as mt

    rng = np.random.default_rng(9)
    q, kv, indices, lengths, sink = make_case(rng, "bfloat16")
    tq = torch.from_numpy(q).to(torch.bfloat16)
    tkv = torch.from_numpy(kv).to(torch.bfloat16)
    out, lse = mt.sparse_decode(
        tq,
        tkv,
        torch.from_numpy(indices),
        0.1,
        topk_lengths=torch.from_numpy(lengths),
        attn_sink=torch.from_numpy(sink),
        return_lse=True,
    )
    want_out, want_lse = spec(q, kv, indices, lengths, sink, 0.1)
    assert_close(out.float().numpy(), want_out, *OUT_TOL["bfloat16"], "out")
    assert_close(lse.numpy(), want_lse, *LSE_TOL, "lse")
    torch.library.opcheck(
        torch.ops.mla_decode.sparse_decode.default,
        (
            tq,
            None,
            tkv,
            torch.from_numpy(indices),
            torch.from_numpy(lengths),
            torch.from_numpy(sink),
            0.1,
            torch.empty(3, 2, 16, 512, dtype=torch.bfloat16),
            torch.empty(3, 2, 16),
            None,
        ),
    )


def fp8_cache(kv, fmt, kv_scale):
    """The chosen (finite) tokens of the float32 cache kv written by write_kv_cache into a cache
    of `fmt` whose every other byte is an e4m3 NaN code (nan_cache), with a NaN padding token
    (slot -1) after each real one."""
    num_pages, page_size, _ = kv.shape
    flat = kv.reshape(-1, 576)
    live = np.flatnonzero(np.isfinite(flat).all(axis=1))
    slots = np.stack([live, np.full_like(live, -1)], axis=1).reshape(-1).astype(np.int64)
    rows = np.where(slots[:, None] >= 0, flat[np.maximum(slots, 0)], np.float32(np.nan))
    cache = nan_cache(num_pages, page_size, fmt)
    mla_decode.write_kv_cache(
        rows[:, :512].astype(ml_dtypes.bfloat16),
        rows[:, 512:].astype(ml_dtypes.bfloat16),
        slots,
        cache,
        kv_format=fmt,
        kv_scale=kv_scale,
    )
    return cache


def fp8_case(rng, fmt, **shape):
    """make_case's problem on an fp8 cache: (q, cache, kv_scale, dequantised cache, indices,
    lengths, sink). fp8_e4m3 uses the scale 1/64 (make_case's values stay below 448 / 64)."""
    q, kv, indices, lengths, sink = make_case(rng, "bfloat16", **shape)
    kv_scale = 1.0 / 64 if fmt == "fp8_e4m3" else None
    cache = fp8_cache(kv, fmt, kv_scale)
    deq = dequantize(cache, fmt, kv_scale)
    chosen = np.isfinite(kv).all(axis=-1)
    err = np.abs(deq[chosen] - kv[chosen])
    assert np.all(err <= 2.0**-4 * np.abs(kv[chosen]) + 2e-3), "write_kv_cache lost the values"
    return q, cache, kv_scale, deq, indices, lengths, sink


@pytest.mark.parametrize("fmt", FP8_FORMATS)
@pytest.mark.parametrize("with_sink", [False, True])
@pytest.mark.parametrize("reference", [False, True])
def test_fp8_cache_matches_spec_on_dequantised_cache(fmt, with_sink, reference):
    rng = np.random.default_rng(13)
    q, cache, kv_scale, deq, indices, lengths, sink = fp8_case(rng, fmt)
    sink = sink if with_sink else None
    scale = 1.0 / np.sqrt(192.0)
    nd = np_dtype("bfloat16")
    out = np.full((3, 2, 16, 512), np.nan, dtype=nd)
    lse = np.full((3, 2, 16), np.nan, dtype=np.float32)
    mla_decode.sparse_decode(
        q.astype(nd),
        cache,
        indices,
        scale,
        topk_lengths=lengths,
        attn_sink=sink,
        kv_format=fmt,
        kv_scale=kv_scale,
        out=out,
        lse=lse,
        num_threads=3,
        reference=reference,
    )
    want_out, want_lse = spec(q, deq, indices, lengths, sink, scale)
    tol = REFERENCE_OUT_TOL if reference else OUT_TOL
    assert_close(out, want_out, *tol["bfloat16"], "out")
    assert_close(lse, want_lse, *LSE_TOL, "lse")


def test_fp8_float8_array_and_scale_arrays():
    """A float8_e4m3fn array, and the scale as a one-element or 0-dim float32 array, give the
    bytes of the uint8 cache with a float scale."""
    rng = np.random.default_rng(14)
    q, cache, kv_scale, _, indices, lengths, _ = fp8_case(rng, "fp8_e4m3", h_q=8, topk=24)
    q = q.astype(np_dtype("bfloat16"))

    def run(kv_cache, scale):
        out, lse = mla_decode.sparse_decode(
            q,
            kv_cache,
            indices,
            0.1,
            topk_lengths=lengths,
            kv_format="fp8_e4m3",
            kv_scale=scale,
            return_lse=True,
        )
        return out.view(np.uint16), lse.view(np.uint32)

    want = run(cache, kv_scale)
    for kv_cache, scale in (
        (cache.view(F8), kv_scale),
        (cache, np.array([kv_scale], np.float32)),
        (cache, np.array(kv_scale, np.float32)),
    ):
        got = run(kv_cache, scale)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_fp8_invalid_arguments_named():
    rng = np.random.default_rng(15)
    q, e4m3, _, _, indices, lengths, _ = fp8_case(rng, "fp8_e4m3")
    ds_mla = nan_cache(*e4m3.shape[:2], "fp8_ds_mla")
    nd = np_dtype("bfloat16")
    out = np.full((3, 2, 16, 512), np.nan, dtype=nd)
    lse = np.full((3, 2, 16), np.nan, dtype=np.float32)
    invalid, data = mla_decode.InvalidArgumentError, mla_decode.DataError
    bad_calls = [
        (e4m3, dict(kv_format="fp8"), invalid, "argument 'kv_format'"),
        (e4m3, dict(kv_format="fp8_e4m3", kv_scale=float("nan")), invalid, "argument 'kv_scale'"),
        (e4m3, dict(kv_format="fp8_e4m3", kv_scale=0.0), invalid, "argument 'kv_scale'"),
        (
            e4m3,
            dict(kv_format="fp8_e4m3", kv_scale=np.array([-1.0], np.float32)),
            data,
            "argument 'kv_scale_tensor'",
        ),
        (
            e4m3,
            dict(kv_format="fp8_e4m3", kv_scale=np.array([1.0, 1.0], np.float32)),
            invalid,
            "argument 'kv_scale_tensor'",
        ),
        (e4m3, dict(kv_format="fp8_ds_mla"), invalid, "argument 'kv_cache'.*656"),
        (ds_mla, dict(kv_format="fp8_e4m3", kv_scale=0.5), invalid, "argument 'kv_cache'.*576"),
        (e4m3, dict(), invalid, "argument 'kv_cache'.*uint8"),  # no fp8 format
        (ds_mla, dict(kv_format="fp8_ds_mla", kv_scale=0.5), invalid, "argument 'kv_scale'"),
        (
            ds_mla,
            dict(kv_format="fp8_ds_mla", kv_scale=np.array([0.5], np.float32)),
            invalid,
            "argument 'kv_scale_tensor'",
        ),
    ]
    for cache, kwargs, error, match in bad_calls:
        with pytest.raises(error, match=match):
            mla_decode.sparse_decode(
                q.astype(nd),
                cache,
                indices,
                0.1,
                topk_lengths=lengths,
                out=out,
                lse=lse,
                **kwargs,
            )
    assert np.isnan(out.astype(np.float32)).all() and np.isnan(lse).all()


@pytest.mark.parametrize("fmt", FP8_FORMATS)
def test_torch_op_fp8(fmt):
    """The torch op on a float8_e4m3fn cache with a 0-dim scale tensor (vLLM's k_scale), and on a
    uint8 fp8_ds_mla cache."""
    torch = pytest.importorskip("torch")
    import mla_decode.torch as mt

    rng = np.random.default_rng(16)
    q, cache, kv_scale, deq, indices, lengths, sink = fp8_case(rng, fmt)
    tq = torch.from_numpy(q).to(torch.bfloat16)
    tcache = torch.from_numpy(cache)
    scale_tensor = None
    if fmt == "fp8_e4m3":
        tcache = tcache.view(torch.float8_e4m3fn)
        scale_tensor = torch.tensor(kv_scale, dtype=torch.float32)
    args = (torch.from_numpy(indices), 0.1)
    out, lse = mt.sparse_decode(
        tq,
        tcache,
        *args,
        topk_lengths=torch.from_numpy(lengths),
        attn_sink=torch.from_numpy(sink),
        kv_format=fmt,
        kv_scale=scale_tensor,
        return_lse=True,
    )
    want_out, want_lse = spec(q, deq, indices, lengths, sink, 0.1)
    assert_close(out.float().numpy(), want_out, *OUT_TOL["bfloat16"], "out")
    assert_close(lse.numpy(), want_lse, *LSE_TOL, "lse")
    # opcheck on the uint8 view: its schema test compares inputs with ops float8 lacks.
    torch.library.opcheck(
        torch.ops.mla_decode.sparse_decode.default,
        (
            tq,
            None,
            tcache.view(torch.uint8),
            torch.from_numpy(indices),
            torch.from_numpy(lengths),
            torch.from_numpy(sink),
            0.1,
            torch.empty(3, 2, 16, 512, dtype=torch.bfloat16),
            torch.empty(3, 2, 16),
            None,
            fmt,
            1.0,
            None if scale_tensor is None else scale_tensor.reshape(1),
        ),
    )
