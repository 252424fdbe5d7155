"""fp8 KV caches through mla_decode.torch on the CPU: a torch.float8_e4m3fn cache written by
write_kv_cache with vLLM's 0-dim k_scale tensor, then decoded, against the float64 spec on the
dequantised cache; an fp8_ds_mla uint8 cache likewise. Skipped where torch is not installed."""

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mla_decode.torch as mt  # noqa: E402
import spec  # noqa: E402
from cases import LSE_TOL, OUT_TOL, assert_close, make_decode_case  # noqa: E402

F8 = ml_dtypes.float8_e4m3fn


def dequantize(cache_bytes, fmt, kv_scale):
    if fmt == "fp8_e4m3":
        return cache_bytes.view(F8).astype(np.float32) * np.float32(kv_scale)
    latent = np.ascontiguousarray(cache_bytes[..., :512]).view(F8).astype(np.float32)
    scales = np.ascontiguousarray(cache_bytes[..., 512:528]).view(np.float32)
    rope = np.ascontiguousarray(cache_bytes[..., 528:]).view(ml_dtypes.bfloat16).astype(np.float32)
    return np.concatenate([latent * np.repeat(scales, 128, axis=-1), rope], axis=-1)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_ds_mla"])
def test_write_then_decode(fmt):
    rng = np.random.default_rng(21)
    case = make_decode_case(rng, "bfloat16", [20, 3, 0], h_q=4, page_size=8)
    num_pages, page_size, _ = case.kv_cache.shape
    rows = torch.from_numpy(np.nan_to_num(case.kv_cache).reshape(-1, 576))
    kv_c = rows[:, :512].to(torch.bfloat16)
    k_pe = rows[:, 512:].to(torch.bfloat16)
    slots = torch.arange(num_pages * page_size, dtype=torch.int64)
    if fmt == "fp8_e4m3":
        cache = torch.empty((num_pages, page_size, 576), dtype=torch.float8_e4m3fn)
        kv_scale = torch.tensor(0.25, dtype=torch.float32)  # 0-dim, as vLLM's k_scale
    else:
        cache = torch.empty((num_pages, page_size, 656), dtype=torch.uint8)
        kv_scale = None
    mt.write_kv_cache(kv_c, k_pe, slots, cache, kv_format=fmt, kv_scale=kv_scale)
    q = torch.from_numpy(case.q).to(torch.bfloat16)
    out, lse = mt.decode(
        q,
        cache,
        torch.from_numpy(case.block_table),
        torch.from_numpy(case.seq_lens),
        case.softmax_scale,
        kv_format=fmt,
        kv_scale=kv_scale,
        return_lse=True,
    )
    deq = dequantize(cache.view(torch.uint8).numpy(), fmt, 0.25)
    want_out, want_lse = spec.decode(
        case.q, deq, case.block_table, case.seq_lens, case.softmax_scale, False
    )
    assert_close(out.float().numpy(), want_out, *OUT_TOL["bfloat16"], "out")
    assert_close(lse.numpy(), want_lse, *LSE_TOL, "lse")
