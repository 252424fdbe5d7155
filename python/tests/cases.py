"""Random paged-cache inputs with everything the call must not read poisoned, and comparisons.

Values are generated in float32, already rounded to the element type, so the same case can be
materialised as numpy (ml_dtypes.bfloat16 / float16) or torch arrays and fed to spec.py exactly.
"""

import dataclasses

import ml_dtypes
import numpy as np

HEAD_DIM_QK = 576
HEAD_DIM_V = 512
# What engines leave in unused block-table slots: a page id far beyond any cache.
DEAD_PAGE_ID = 2147480000
DTYPES = ("bfloat16", "float16")


def np_dtype(name):
    return {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}[name]


def rounded(x, dtype):
    """float32 values exactly representable in `dtype`."""
    return x.astype(np_dtype(dtype)).astype(np.float32)


@dataclasses.dataclass
class DecodeCase:
    dtype: str
    q: np.ndarray  # [B, S, H, 576] float32
    kv_cache: np.ndarray  # [P, page_size, 576] float32; dead pages and page tails are NaN
    block_table: np.ndarray  # [B, max_pages] int32; dead entries are DEAD_PAGE_ID
    seq_lens: np.ndarray  # [B] int32
    softmax_scale: float
    causal: bool

    def arrays(self):
        """q and kv_cache in the case's numpy dtype."""
        return self.q.astype(np_dtype(self.dtype)), self.kv_cache.astype(np_dtype(self.dtype))


def make_decode_case(rng, dtype, seq_lens, s_q=1, h_q=16, page_size=16, causal=False):
    seq_lens = np.asarray(seq_lens, dtype=np.int32)
    batch = len(seq_lens)
    live = [-(-int(n) // page_size) for n in seq_lens]
    max_pages = max(live + [0]) + 1  # at least one dead slot per row
    num_live = sum(live)
    num_pages = num_live + 2  # two pages nobody references
    kv = rng.standard_normal((num_pages, page_size, HEAD_DIM_QK), dtype=np.float32)
    kv = rounded(kv, dtype)
    pages = rng.permutation(num_pages).astype(np.int32)
    block_table = np.full((batch, max_pages), DEAD_PAGE_ID, dtype=np.int32)
    used = 0
    for b, n_pages in enumerate(live):
        block_table[b, :n_pages] = pages[used : used + n_pages]
        used += n_pages
        tail = int(seq_lens[b]) % page_size
        if n_pages and tail:
            kv[block_table[b, n_pages - 1], tail:] = np.nan
    kv[pages[num_live:]] = np.nan
    q = rounded(rng.standard_normal((batch, s_q, h_q, HEAD_DIM_QK), dtype=np.float32), dtype)
    return DecodeCase(dtype, q, kv, block_table, seq_lens, 1.0 / np.sqrt(192.0), causal)


# fp8 caches (docs/kv_formats.md): bytes per token of each format, and helpers written from the
# formats' definitions.
F8 = ml_dtypes.float8_e4m3fn
FP8_FORMATS = ("fp8_e4m3", "fp8_ds_mla")
FP8_WIDTH = {"fp8_e4m3": 576, "fp8_ds_mla": 656}


def nan_cache(num_pages, page_size, fmt):
    """An fp8 cache whose every byte is an e4m3 NaN code (0x7F / 0xFF alternating); fp8_ds_mla
    rows also get NaN float32 scales."""
    cache = np.empty((num_pages, page_size, FP8_WIDTH[fmt]), dtype=np.uint8)
    cache[..., 0::2] = 0x7F
    cache[..., 1::2] = 0xFF
    if fmt == "fp8_ds_mla":
        cache[..., 512:528] = 0xFF  # 0xFFFFFFFF: NaN
    return cache


def dequantize(cache, fmt, kv_scale):
    """[P, page, width] uint8 -> [P, page, 576] float32 values the cache stands for."""
    if fmt == "fp8_e4m3":
        return cache.view(F8).astype(np.float32) * np.float32(kv_scale)
    latent = np.ascontiguousarray(cache[..., :512]).view(F8).astype(np.float32)
    scales = np.ascontiguousarray(cache[..., 512:528]).view(np.float32)
    rope = np.ascontiguousarray(cache[..., 528:656]).view(ml_dtypes.bfloat16).astype(np.float32)
    return np.concatenate([latent * np.repeat(scales, 128, axis=-1), rope], axis=-1)


# Tolerances against the float64 spec: the output is rounded to bf16/fp16 (unit roundoff 2^-8,
# 2^-11); the fast paths also accumulate in fp32 and may round probabilities to the input type.
OUT_TOL = {"bfloat16": (2e-2, 2e-2), "float16": (4e-3, 4e-3)}
REFERENCE_OUT_TOL = {"bfloat16": (1e-6, 2.0**-8), "float16": (1e-6, 2.0**-11)}
LSE_TOL = (2e-3, 1e-4)


def to_f64(x):
    return np.asarray(x).astype(np.float64)


def assert_close(actual, expected, atol, rtol, what):
    """Every element within atol + rtol * |expected|, NaN and +-inf in the same places, and the
    cosine difference of the finite parts below 1e-4."""
    a, e = to_f64(actual), to_f64(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    assert np.array_equal(np.isnan(a), np.isnan(e)), (
        f"{what}: NaN at {np.argwhere(np.isnan(a) != np.isnan(e))[:5].tolist()}"
    )
    for sign in (1, -1):
        mismatch = (a == sign * np.inf) != (e == sign * np.inf)
        assert not mismatch.any(), f"{what}: {sign:+}inf at {np.argwhere(mismatch)[:5].tolist()}"
    finite = np.isfinite(e)
    with np.errstate(invalid="ignore"):
        err = np.abs(a - e)
    bad = finite & ~(err <= atol + rtol * np.abs(e))
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {a.size} elements off, first at "
        f"{np.argwhere(bad)[0].tolist()}: {a[bad][0]} vs {e[bad][0]}; max err {err[finite].max()}"
    )
    af, ef = a[finite], e[finite]
    norm = np.linalg.norm(af) * np.linalg.norm(ef)
    if norm > 0:
        assert 1.0 - float(af @ ef) / norm < 1e-4, f"{what}: cosine difference too large"
