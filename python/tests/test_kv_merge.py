"""write_kv_cache and merge_states on the CPU with numpy arrays, against spec.py."""

import mla_decode
import numpy as np
import pytest
import spec
from cases import DTYPES, assert_close, np_dtype, rounded


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("page_size", [1, 16])
def test_write_kv_cache_scatters_and_skips_padding(dtype, page_size):
    rng = np.random.default_rng(10)
    num_pages, tokens = 12, 9
    cache = rounded(rng.standard_normal((num_pages, page_size, 576), dtype=np.float32), dtype)
    kv_c = rounded(rng.standard_normal((tokens, 512), dtype=np.float32), dtype)
    k_pe = rounded(rng.standard_normal((tokens, 64), dtype=np.float32), dtype)
    slots = rng.choice(num_pages * page_size, size=tokens, replace=False).astype(np.int64)
    slots[[2, 5]] = -1
    want = spec.write_kv_cache(kv_c, k_pe, slots, cache)

    kv_cache = cache.astype(np_dtype(dtype))
    mla_decode.write_kv_cache(
        kv_c.astype(np_dtype(dtype)), k_pe.astype(np_dtype(dtype)), slots, kv_cache
    )
    np.testing.assert_array_equal(kv_cache.astype(np.float64), want)


def test_write_kv_cache_rejects_bad_slot_and_writes_nothing():
    kv_cache = np.zeros((2, 4, 576), dtype=np.float16)
    kv_c = np.ones((3, 512), dtype=np.float16)
    k_pe = np.ones((3, 64), dtype=np.float16)
    slots = np.array([0, 1, 8], dtype=np.int64)  # 8 == num_pages * page_size
    with pytest.raises(mla_decode.DataError, match=r"slot_mapping\[2\] = 8"):
        mla_decode.write_kv_cache(kv_c, k_pe, slots, kv_cache)
    assert (kv_cache == 0).all()


def merge_inputs(rng, dtype, tokens=5, heads=3, dim=512):
    out_a = rounded(rng.standard_normal((tokens, heads, dim), dtype=np.float32), dtype)
    out_b = rounded(rng.standard_normal((tokens, heads, dim), dtype=np.float32), dtype)
    lse_a = rng.normal(0, 3, (tokens, heads)).astype(np.float32)
    lse_b = rng.normal(0, 3, (tokens, heads)).astype(np.float32)
    # Empty parts: only a, only b, both.
    lse_a[0, 0] = -np.inf
    lse_b[1, 1] = -np.inf
    lse_a[2, 2] = lse_b[2, 2] = -np.inf
    out_a[0, 0] = out_b[1, 1] = out_a[2, 2] = out_b[2, 2] = 0
    return out_a, lse_a, out_b, lse_b


@pytest.mark.parametrize("dtype", DTYPES + ("float32",))
def test_merge_states_matches_spec_with_minus_inf(dtype):
    out_a, lse_a, out_b, lse_b = merge_inputs(np.random.default_rng(11), dtype)
    want_out, want_lse = spec.merge_states(out_a, lse_a, out_b, lse_b)
    t = np_dtype(dtype)
    out = np.full(out_a.shape, np.nan, dtype=t)
    lse = np.full(lse_a.shape, np.nan, dtype=np.float32)
    result = mla_decode.merge_states(
        out_a.astype(t), lse_a, out_b.astype(t), lse_b, out=out, lse=lse
    )
    assert result[0] is out and result[1] is lse
    tol = {"bfloat16": (1e-2, 2.0**-7), "float16": (1e-3, 2.0**-10), "float32": (1e-5, 1e-5)}
    assert_close(out, want_out, *tol[dtype], "out")
    assert_close(lse, want_lse, 1e-5, 1e-6, "lse")
    assert (out[2, 2].astype(np.float32) == 0).all() and np.isneginf(lse[2, 2])
    assert not np.isnan(out.astype(np.float32)).any()


def test_merge_states_allocates_and_takes_strided_lse():
    out_a, lse_a, out_b, lse_b = merge_inputs(np.random.default_rng(12), "float32", dim=64)
    # vLLM keeps LSEs as [num_heads, num_tokens]: pass transposed views.
    out, lse = mla_decode.merge_states(
        out_a, np.ascontiguousarray(lse_a.T).T, out_b, np.ascontiguousarray(lse_b.T).T
    )
    want_out, want_lse = spec.merge_states(out_a, lse_a, out_b, lse_b)
    assert out.dtype == np.float32 and lse.shape == lse_a.shape
    assert_close(out, want_out, 1e-5, 1e-5, "out")
    assert_close(lse, want_lse, 1e-5, 1e-6, "lse")
