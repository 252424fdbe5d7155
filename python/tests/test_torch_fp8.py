"""fp8 KV caches through mla_decode.torch on CPU and CUDA tensors: a torch.float8_e4m3fn cache
written by write_kv_cache with vLLM's 0-dim k_scale tensor, then decoded, against the float64 spec
on the dequantised cache; an fp8_ds_mla uint8 cache likewise. On CUDA the written cache must also
equal the CPU's byte for byte. Skipped where torch is not installed; the CUDA cases (marked gpu)
where torch or mla_decode sees no GPU."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mla_decode  # noqa: E402
import mla_decode.torch as mt  # noqa: E402
import spec  # noqa: E402
from cases import LSE_TOL, OUT_TOL, assert_close, dequantize, make_decode_case  # noqa: E402

if not torch.cuda.is_available():
    NO_CUDA = "torch sees no CUDA device"
elif not mla_decode.cuda_available_in_build():
    NO_CUDA = "mla_decode was built without CUDA (MLA_CUDA=OFF or no nvcc)"
elif mla_decode.cuda_device_count() == 0:
    NO_CUDA = "mla_decode sees no CUDA device"
else:
    NO_CUDA = ""
cuda_only = [pytest.mark.gpu, pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA)]
DEVICES = ["cpu", pytest.param("cuda", marks=cuda_only)]


def write(fmt, kv_c, k_pe, slots, shape, device):
    """write_kv_cache into a fresh cache on `device`; returns the cache and the scale passed."""
    num_pages, page_size = shape
    if fmt == "fp8_e4m3":
        cache = torch.empty((num_pages, page_size, 576), dtype=torch.float8_e4m3fn, device=device)
        # 0-dim, as vLLM's k_scale
        kv_scale = torch.tensor(0.25, dtype=torch.float32, device=device)
    else:
        cache = torch.empty((num_pages, page_size, 656), dtype=torch.uint8, device=device)
        kv_scale = None
    mt.write_kv_cache(
        kv_c.to(device), k_pe.to(device), slots.to(device), cache, kv_format=fmt, kv_scale=kv_scale
    )
    return cache, kv_scale


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_ds_mla"])
def test_write_then_decode(fmt, device):
    rng = np.random.default_rng(21)
    case = make_decode_case(rng, "bfloat16", [20, 3, 0], h_q=4, page_size=8)
    num_pages, page_size, _ = case.kv_cache.shape
    rows = torch.from_numpy(np.nan_to_num(case.kv_cache).reshape(-1, 576))
    kv_c = rows[:, :512].to(torch.bfloat16)
    k_pe = rows[:, 512:].to(torch.bfloat16)
    slots = torch.arange(num_pages * page_size, dtype=torch.int64)
    cache, kv_scale = write(fmt, kv_c, k_pe, slots, (num_pages, page_size), device)
    cache_bytes = cache.view(torch.uint8).cpu().numpy()
    if device != "cpu":
        cpu_cache, _ = write(fmt, kv_c, k_pe, slots, (num_pages, page_size), "cpu")
        np.testing.assert_array_equal(cache_bytes, cpu_cache.view(torch.uint8).numpy())
    q = torch.from_numpy(case.q).to(torch.bfloat16).to(device)
    out, lse = mt.decode(
        q,
        cache,
        torch.from_numpy(case.block_table).to(device),
        torch.from_numpy(case.seq_lens).to(device),
        case.softmax_scale,
        kv_format=fmt,
        kv_scale=kv_scale,
        return_lse=True,
    )
    deq = dequantize(cache_bytes, fmt, 0.25)
    want_out, want_lse = spec.decode(
        case.q, deq, case.block_table, case.seq_lens, case.softmax_scale, False
    )
    assert_close(out.float().cpu().numpy(), want_out, *OUT_TOL["bfloat16"], "out")
    assert_close(lse.cpu().numpy(), want_lse, *LSE_TOL, "lse")
