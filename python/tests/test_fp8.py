"""fp8 KV caches (issue 10) through the numpy API on the CPU: write_kv_cache quantises into both
formats (padding slots skipped, dead pages and page tails left holding the e4m3 NaN codes and NaN
scales), decode on the fp8 cache (fast path and reference, outputs poisoned) matches the float64
spec on the dequantised cache, and the new arguments are validated."""

import ml_dtypes
import mla_decode
import numpy as np
import pytest
import spec
from cases import (
    F8,
    FP8_FORMATS,
    LSE_TOL,
    OUT_TOL,
    REFERENCE_OUT_TOL,
    assert_close,
    dequantize,
    make_decode_case,
    nan_cache,
)


def live_tokens(case):
    """(slot, b, j) of every live token."""
    page_size = case.kv_cache.shape[1]
    for b, n in enumerate(case.seq_lens):
        for j in range(int(n)):
            yield int(case.block_table[b, j // page_size]) * page_size + j % page_size, b, j


@pytest.mark.parametrize("fmt", FP8_FORMATS)
@pytest.mark.parametrize("reference", [False, True])
def test_write_then_decode_matches_spec_on_dequantised_cache(fmt, reference):
    rng = np.random.default_rng(10)
    case = make_decode_case(
        rng, "bfloat16", [37, 0, 50, 16], s_q=2, h_q=8, page_size=16, causal=True
    )
    num_pages, page_size, _ = case.kv_cache.shape
    slots, rows = [], []
    flat = case.kv_cache.reshape(-1, 576)
    for slot, _, _ in live_tokens(case):
        slots += [slot, -1]  # a padding token after every real one
        rows += [flat[slot], np.full(576, np.nan, np.float32)]
    rows = np.stack(rows)
    kv_c = rows[:, :512].astype(ml_dtypes.bfloat16)
    k_pe = rows[:, 512:].astype(ml_dtypes.bfloat16)
    cache = nan_cache(num_pages, page_size, fmt)
    before = cache.copy()
    kv_scale = 1.0 / 64 if fmt == "fp8_e4m3" else None
    mla_decode.write_kv_cache(
        kv_c, k_pe, np.array(slots, np.int64), cache, kv_format=fmt, kv_scale=kv_scale
    )
    written = np.zeros(num_pages * page_size, bool)
    written[[s for s in slots if s >= 0]] = True
    written = written.reshape(num_pages, page_size)
    assert np.array_equal(cache[~written], before[~written]), "a row no token maps to changed"
    latent_codes = cache[written][:, : 512 if fmt == "fp8_ds_mla" else 576]
    assert not np.any((latent_codes & 0x7F) == 0x7F), "finite input gave a NaN code"

    deq = dequantize(cache, fmt, kv_scale)
    err = np.abs(deq[written] - case.kv_cache[written])
    assert np.all(err <= 2.0**-4 * np.abs(case.kv_cache[written]) + 2e-3)

    q = case.q.astype(ml_dtypes.bfloat16)
    out = np.full(case.q.shape[:3] + (512,), np.nan, ml_dtypes.bfloat16)
    lse = np.full(case.q.shape[:3], np.nan, np.float32)
    mla_decode.decode(
        q,
        cache,
        case.block_table,
        case.seq_lens,
        case.softmax_scale,
        causal=True,
        kv_format=fmt,
        kv_scale=kv_scale,
        out=out,
        lse=lse,
        reference=reference,
    )
    want_out, want_lse = spec.decode(
        case.q, deq, case.block_table, case.seq_lens, case.softmax_scale, True
    )
    tol = REFERENCE_OUT_TOL if reference else OUT_TOL
    assert_close(out, want_out, *tol["bfloat16"], "out")
    assert_close(lse, want_lse, *LSE_TOL, "lse")


def test_float8_arrays_and_scale_tensor():
    rng = np.random.default_rng(11)
    case = make_decode_case(rng, "bfloat16", [20, 3], h_q=4, page_size=8)
    cache = nan_cache(*case.kv_cache.shape[:2], "fp8_e4m3")
    for slot, _, _ in live_tokens(case):
        p, r = divmod(slot, 8)
        cache[p, r] = (case.kv_cache[p, r] / np.float32(0.25)).astype(F8).view(np.uint8)
    q = case.q.astype(ml_dtypes.bfloat16)
    args = (case.block_table, case.seq_lens, case.softmax_scale)
    as_uint8 = mla_decode.decode(q, cache, *args, kv_format="fp8_e4m3", kv_scale=0.25)
    as_f8 = mla_decode.decode(q, cache.view(F8), *args, kv_format="fp8_e4m3", kv_scale=0.25)
    tensor = mla_decode.decode(
        q, cache, *args, kv_format="fp8_e4m3", kv_scale=np.array([0.25], np.float32)
    )
    scalar = mla_decode.decode(
        q, cache, *args, kv_format="fp8_e4m3", kv_scale=np.array(0.25, np.float32)
    )
    for other in (as_f8, tensor, scalar):
        assert np.array_equal(as_uint8.view(np.uint16), other.view(np.uint16))


def test_errors_name_the_argument():
    rng = np.random.default_rng(12)
    case = make_decode_case(rng, "bfloat16", [5], h_q=4, page_size=8)
    q = case.q.astype(ml_dtypes.bfloat16)
    cache = nan_cache(*case.kv_cache.shape[:2], "fp8_e4m3")
    cache[...] = 0x38  # 1.0
    args = (q, cache, case.block_table, case.seq_lens, case.softmax_scale)
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'kv_format'"):
        mla_decode.decode(*args, kv_format="fp8")
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'kv_scale'"):
        mla_decode.decode(*args, kv_format="fp8_e4m3", kv_scale=float("nan"))
    with pytest.raises(mla_decode.DataError, match="argument 'kv_scale_tensor'"):
        mla_decode.decode(*args, kv_format="fp8_e4m3", kv_scale=np.array([-1.0], np.float32))
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'kv_cache'.*656"):
        mla_decode.decode(*args, kv_format="fp8_ds_mla")
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'kv_cache'"):
        mla_decode.decode(*args)  # uint8 cache without an fp8 format
    kv_c = np.zeros((1, 512), ml_dtypes.bfloat16)
    k_pe = np.zeros((1, 64), ml_dtypes.bfloat16)
    with pytest.raises(mla_decode.InvalidArgumentError, match="argument 'ds_mla_pow2_scale'"):
        mla_decode.write_kv_cache(
            kv_c, k_pe, np.zeros(1, np.int64), cache, kv_format="fp8_e4m3", ds_mla_pow2_scale=True
        )
